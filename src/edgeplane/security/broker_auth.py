"""Broker identities: who may use which MQTT topic on a broker edgeplane starts itself.

The embedded Mosquitto reads a password file and an ACL file that this module writes, and
re-reads them on SIGHUP (``reload``). That was chosen over the dynamic-security plugin:
the whole state is two files rewritten atomically from ``identities.json``, there is no
second control channel to bootstrap or keep in sync, and Mosquitto re-checks every
connected client on reload, so a removed worker is disconnected at once (checked with
Mosquitto 2.0.11). See docs/broker-security.md for the topics and the join flow.

The same code serves both levels of the hierarchy: a manager's broker, whose members are
its workers, and a root's broker (``topics.root``), whose members are the clusters'
managers. Only the parent's username, the members' leaves and the noun differ.

``identities.json`` (mode 0600, in the broker's data dir) holds the parent's password,
each member's password hash and command key, and the join tokens (their sha256 only).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from pydantic import BaseModel, Field

from edgeplane.errors import Invalid, NotFound, Unauthorized
from edgeplane.model import audit
from edgeplane.model.audit import AuditRecord
from edgeplane.protocol import Topics
from edgeplane.protocol.joining import WORKER_ID_PATTERN
from edgeplane.protocol.sealing import derive
from edgeplane.protocol.signing import sign
from edgeplane.protocol.topics import SEGMENT_RULE, fl_ack_of

#: The parent's MQTT username on a manager's broker and on a root's: ``$`` is not allowed
#: in a member id, so no member can claim it (a member's username is its id, which the ACL
#: patterns substitute as ``%u``).
MANAGER_USER = "edgeplane$manager"
ROOT_USER = "edgeplane$root"
#: The artifact proxy's username on a manager's broker: it may only read the workers'
#: ``fetch`` and write their ``chunks`` (no worker may write those: a forged chunk would
#: be refused for its digest anyway, but not even sent).
PROXY_USER = "edgeplane$proxy"
#: The usernames of federated learning training tasks (one per task, ``fl/<task id>``):
#: each may publish its round's update on one topic and nothing else (docs/fl.md). The
#: '/' keeps every member pattern (``…/workers/%u/hello``) off the topics the manager
#: reads, and no member id has one.
FL_USER_PREFIX = "fl/"
STATE_FILE = "identities.json"
PASSWORD_FILE = "passwd"
ACL_FILE = "acl"
JOIN_TOKEN_PREFIX = "epj_"
#: PBKDF2 rounds of the password file's ``$7$`` hashes: passwords are 256-bit random, so
#: a slow hash buys nothing; Mosquitto's own default is 101.
PBKDF2_ROUNDS = 101
#: the leaves a member may publish on, by level (what the parent subscribes to, plus a
#: worker's ``fetch``)
WORKER_LEAVES = ("hello", "alive", "events", "metrics", "fetch")
CLUSTER_LEAVES = ("hello", "alive", "events", "aggregate", "metrics")

_WORKER_ID = re.compile(WORKER_ID_PATTERN)
#: identity changes kept until an audit trail is attached (``report_to``)
_UNREPORTED = 1000


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """A Mosquitto 2 password-file hash (``$7$``: PBKDF2-HMAC-SHA512)."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ROUNDS)
    return (
        f"$7${PBKDF2_ROUNDS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    )


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_member_id(member_id: str, member: str = "worker") -> str:
    """``member_id`` if it may be a ``member``'s (``worker`` or ``cluster``) username."""
    if not _WORKER_ID.match(member_id):
        raise Invalid(
            f"a {member} id is {SEGMENT_RULE}",
            field=f"{member}_id",
        )
    return member_id


class JoinToken(BaseModel):
    """What the API shows of a join token (never its secret, which is shown once). A
    manager's tokens fill ``worker_id`` and ``workers``, a root's ``cluster_id`` and
    ``clusters``."""

    id: str
    labels: dict[str, str] = Field(default_factory=dict)
    #: the id a worker joining with it gets; None: the id the worker asks for
    worker_id: str | None = None
    #: the user who owns a worker joining with it (docs/security.md); None: nobody
    owner: str | None = None
    created_at: float
    expires_at: float
    #: workers that joined with it (revoked with it)
    workers: list[str] = Field(default_factory=list)
    #: at a root: the only cluster that may join with it (None: any cluster id)
    cluster_id: str | None = None
    #: at a root: clusters that joined with it (revoked with it)
    clusters: list[str] = Field(default_factory=list)


class _StoredToken(BaseModel):
    """A token as kept: ``worker_id`` and ``workers`` name members of either level (the
    field names predate roots having identities; files written then must still load)."""

    id: str
    labels: dict[str, str] = Field(default_factory=dict)
    worker_id: str | None = None
    #: the user who owns a member joining with it (None: nobody)
    owner: str | None = None
    created_at: float
    expires_at: float
    workers: list[str] = Field(default_factory=list)
    secret_hash: str


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    #: the key the member checks its parent's commands with
    mac_key: bytes = field(repr=False)


class _Member(BaseModel):
    password_hash: str
    mac_key: str
    token: str | None = None
    #: its join token's owner, given to the worker document when it first registers
    owner: str | None = None


class _FlClient(BaseModel):
    """A training task's identity: the one topic it may publish its update on."""

    password_hash: str
    topic: str


class _State(BaseModel):
    #: the parent's (manager's or root's) password
    manager_password: str = ""
    #: the artifact proxy's password (a manager's broker only)
    proxy_password: str = ""
    #: members by id (workers, or clusters at a root)
    workers: dict[str, _Member] = Field(default_factory=dict)
    tokens: dict[str, _StoredToken] = Field(default_factory=dict)
    #: federated learning training tasks by username (``fl/<task id>``)
    fl_clients: dict[str, _FlClient] = Field(default_factory=dict)


class BrokerAuth:
    """The identities of one broker: a manager's (members are workers) or, when
    ``topics.root``, a root's (members are clusters). ``reload`` makes the broker re-read
    the files (the embedded broker's SIGHUP); it is called after every change.

    Every change of an identity (join token made or deleted, member joined, given
    credentials, revoked) is reported as an :class:`AuditRecord` to the sink given to
    :meth:`report_to`, with ``actor`` the admin whose call made it, else ``system``."""

    def __init__(
        self, directory: Path, topics: Topics, now: Callable[[], float], reload: Callable[[], None]
    ) -> None:
        self.directory = directory
        self.topics = topics
        self._now = now
        self.reload = reload
        self.password_file = directory / PASSWORD_FILE
        self.acl_file = directory / ACL_FILE
        self._state_file = directory / STATE_FILE
        self._state = self._load()
        self.member = "cluster" if topics.root else "worker"
        self.parent_user = ROOT_USER if topics.root else MANAGER_USER
        self.leaves = CLUSTER_LEAVES if topics.root else WORKER_LEAVES
        self._report: Callable[[AuditRecord], None] | None = None
        self._unreported: list[AuditRecord] = []
        self._keys = {w: bytes.fromhex(v.mac_key) for w, v in self._state.workers.items()}
        if not self._state.manager_password:
            self._state.manager_password = secrets.token_urlsafe(32)
        if not self._state.proxy_password and not topics.root:
            self._state.proxy_password = secrets.token_urlsafe(32)
        self._write(reload=False)

    # ------------------------------------------------------------------ parent
    @property
    def manager(self) -> Credentials:
        """The parent's credentials (the manager's, or the root's at a root)."""
        return Credentials(self.parent_user, self._state.manager_password, b"")

    @property
    def proxy(self) -> Credentials:
        """The artifact proxy's credentials (a manager's broker; a root has no proxy)."""
        if self.topics.root:
            raise NotFound("a root's broker has no artifact proxy", field="proxy")
        return Credentials(PROXY_USER, self._state.proxy_password, b"")

    def sign(self, member_id: str, message: bytes) -> bytes:
        """The parent's command to ``member_id`` with its MAC (unchanged for a member
        without a key: one of a broker that does not know it, e.g. an external one)."""
        key = self._keys.get(member_id)
        return message if key is None else sign(key, message)

    # ------------------------------------------------------------------ audit
    def report_to(self, sink: Callable[[AuditRecord], None]) -> None:
        """Send identity changes to ``sink`` from now on (those made before, too)."""
        self._report = sink
        for record in self._unreported:
            sink(record)
        self._unreported = []

    def _changed(
        self, action: str, actor: str, kind: str, resource_id: str, detail: str | None = None
    ) -> None:
        record = AuditRecord(
            at=self._now(),
            actor=actor,
            action=action,
            resource=kind,
            resource_id=resource_id,
            detail=detail,
        )
        if self._report is not None:
            self._report(record)
        elif len(self._unreported) < _UNREPORTED:
            self._unreported.append(record)

    def sealing_key(self, member_id: str) -> bytes | None:
        """The key ``member_id``'s secret env is sealed with (None: it has no identity
        here). Derived on each call: only tasks with secret env ask for it."""
        key = self._keys.get(member_id)
        return None if key is None else derive(key)

    # ------------------------------------------------------------------ members
    def add_member(
        self,
        member_id: str,
        token: str | None = None,
        owner: str | None = None,
        *,
        actor: str = audit.SYSTEM,
    ) -> Credentials:
        """New credentials for ``member_id`` (replacing any it had)."""
        check_member_id(member_id, self.member)
        if token is not None:
            action, detail = audit.WORKER_JOINED, f"join token {token}"
        elif member_id in self._state.workers:
            action, detail = audit.CREDENTIALS_ROTATED, None
        else:
            action, detail = audit.CREDENTIALS_ISSUED, None
        password = secrets.token_urlsafe(32)
        key = secrets.token_bytes(32)
        self._state.workers[member_id] = _Member(
            password_hash=mosquitto_hash(password), mac_key=key.hex(), token=token, owner=owner
        )
        self._keys[member_id] = key
        self._write()
        self._changed(action, actor, self.member, member_id, detail)
        return Credentials(member_id, password, key)

    def has_member(self, member_id: str) -> bool:
        return member_id in self._state.workers

    def owner_of(self, member_id: str) -> str | None:
        """The owner of the join token ``member_id`` joined with (None: none, or it did
        not join with a token)."""
        found = self._state.workers.get(member_id)
        return None if found is None else found.owner

    def disown(self, owner: str) -> None:
        """Forget ``owner`` on join tokens and on identities not registered yet: their
        user is gone, and a new user of the same name must not inherit them."""
        held: list[_StoredToken | _Member] = [
            *self._state.tokens.values(),
            *self._state.workers.values(),
        ]
        owned = [h for h in held if h.owner == owner]
        for h in owned:
            h.owner = None
        if owned:
            self._write(reload=False)

    def revoke_member(self, member_id: str, *, actor: str = audit.SYSTEM) -> bool:
        """Remove ``member_id``'s credentials; the broker disconnects it on reload."""
        gone = self._state.workers.pop(member_id, None)
        self._keys.pop(member_id, None)
        if gone is None:
            return False
        self._write()
        self._changed(audit.WORKER_REVOKED, actor, self.member, member_id)
        return True

    # ------------------------------------------------------------------ training tasks
    def add_fl_clients(self, topics: Mapping[str, str]) -> dict[str, Credentials]:
        """Credentials for training tasks (task id → the one topic it may publish on),
        made at once (one reload). They are not audited: each lives as long as its task,
        which the experiment made (its creation is)."""
        made: dict[str, Credentials] = {}
        for task_id, topic in topics.items():
            username = FL_USER_PREFIX + check_member_id(task_id, "task")
            password = secrets.token_urlsafe(32)
            self._state.fl_clients[username] = _FlClient(
                password_hash=mosquitto_hash(password), topic=topic
            )
            made[task_id] = Credentials(username, password, b"")
        if made:
            self._write()
        return made

    def remove_fl_clients(self, task_ids: Iterable[str]) -> None:
        """Revoke those tasks' credentials (the broker disconnects them on reload)."""
        gone = [
            self._state.fl_clients.pop(FL_USER_PREFIX + t, None)
            for t in task_ids
            if FL_USER_PREFIX + t in self._state.fl_clients
        ]
        if gone:
            self._write()

    def keep_fl_clients(self, task_ids: Iterable[str]) -> None:
        """Revoke every training task's credentials but those of ``task_ids`` (what a
        restarted coordinator still has a use for)."""
        kept = {FL_USER_PREFIX + t for t in task_ids}
        self.remove_fl_clients(
            [u.removeprefix(FL_USER_PREFIX) for u in self._state.fl_clients if u not in kept]
        )

    def fl_clients(self) -> dict[str, str]:
        """username → topic of every training task's identity."""
        return {u: c.topic for u, c in self._state.fl_clients.items()}

    # ------------------------------------------------------------------ join tokens
    def create_token(
        self,
        *,
        ttl_s: float,
        labels: Mapping[str, str],
        member_id: str | None,
        owner: str | None = None,
        actor: str = audit.SYSTEM,
    ) -> tuple[JoinToken, str]:
        """A join token and its secret (shown once; only its sha256 is kept).
        ``member_id``: the only id that may join with it (None: the one asked for)."""
        if member_id is not None:
            check_member_id(member_id, self.member)
        token_id = secrets.token_hex(6)
        secret = f"{JOIN_TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        now = self._now()
        stored = _StoredToken(
            id=token_id,
            labels=dict(labels),
            worker_id=member_id,
            owner=owner,
            created_at=now,
            expires_at=now + ttl_s,
            secret_hash=_sha256(secret),
        )
        self._state.tokens[token_id] = stored
        self._write(reload=False)
        self._changed(audit.JOIN_TOKEN_CREATED, actor, "join-token", token_id)
        return self._public(stored), secret

    def tokens(self) -> list[JoinToken]:
        return [self._public(t) for t in self._state.tokens.values()]

    def delete_token(self, token_id: str, *, actor: str = audit.SYSTEM) -> list[str]:
        """Revoke a join token and every member that joined with it (returned)."""
        stored = self._state.tokens.pop(token_id, None)
        if stored is None:
            raise NotFound(f"join token {token_id} not found", field="id")
        revoked = [m for m, v in self._state.workers.items() if v.token == token_id]
        for member_id in revoked:
            del self._state.workers[member_id]
            self._keys.pop(member_id, None)
        self._write()
        self._changed(audit.JOIN_TOKEN_DELETED, actor, "join-token", token_id)
        for member_id in revoked:
            self._changed(
                audit.WORKER_REVOKED,
                actor,
                self.member,
                member_id,
                f"join token {token_id} deleted",
            )
        return revoked

    def redeem(self, secret: str, wanted_id: str) -> tuple[Credentials, dict[str, str]]:
        """Credentials for a member presenting ``secret``, and the token's labels.
        ``Unauthorized`` for an unknown, revoked or expired token.

        A worker takes the id its token names; a cluster cannot (its id is in its own
        broker's topics and its store), so a root refuses a token made for another one."""
        token_id = secret.removeprefix(JOIN_TOKEN_PREFIX).split("_", 1)[0]
        stored = self._state.tokens.get(token_id)
        if stored is None or not secrets.compare_digest(stored.secret_hash, _sha256(secret)):
            raise Unauthorized("unknown or revoked join token")
        if self._now() >= stored.expires_at:
            raise Unauthorized("join token expired")
        if self.topics.root and stored.worker_id not in (None, wanted_id):
            raise Unauthorized(f"this join token is for cluster {stored.worker_id}")
        member_id = stored.worker_id or check_member_id(wanted_id, self.member)
        if member_id in self._state.workers:
            # Joining never replaces an identity, not even one joined with this token: a
            # leaked token must not take over a member (delete the member to join anew).
            raise Unauthorized(f"{self.member} {member_id} has joined already")
        stored.workers.append(member_id)
        credentials = self.add_member(member_id, token=token_id, owner=stored.owner)
        return credentials, dict(stored.labels)

    def join_refused(self, why: str) -> None:
        """Record a refused join (the token itself is never recorded)."""
        self._changed(audit.JOIN_REFUSED, audit.ANONYMOUS, self.member, "", why)

    def _public(self, stored: _StoredToken) -> JoinToken:
        shown = stored.model_dump(exclude={"secret_hash"})
        if self.topics.root:
            shown["cluster_id"], shown["clusters"] = shown.pop("worker_id"), shown.pop("workers")
        return JoinToken.model_validate(shown)

    # ------------------------------------------------------------------ files
    def acl_text(self) -> str:
        """Anonymous clients may only join; a member (username = its id) may read its own
        ``cmd`` and ``welcome`` (a worker also its ``chunks``) and write its own leaves;
        the proxy may read every worker's ``fetch`` and write its ``chunks``; a training
        task may write its round's federated learning update and read the answer to it;
        the parent may do anything."""
        join = self.topics.join("%c")
        member = f"{self.topics.prefix}/%u"
        proxy: list[str] = []
        if not self.topics.root:
            proxy = [
                f"pattern read {member}/chunks",
                f"user {PROXY_USER}",
                f"topic read {self.topics.all_members('fetch')}",
                f"topic write {self.topics.all_members('chunks')}",
            ]
        # a training task may publish its own round's update and read its answer, nothing
        # else
        fl = [
            line
            for user, client in sorted(self._state.fl_clients.items())
            for line in (
                f"user {user}",
                f"topic write {client.topic}",
                f"topic read {fl_ack_of(client.topic)}",
            )
        ]
        lines = [
            "# written by edgeplane (security/broker_auth.py); edits are overwritten",
            f"pattern write {join}",
            f"pattern read {self.topics.join_answer('%c')}",
            f"pattern read {member}/cmd",
            f"pattern read {member}/welcome",
            *(f"pattern write {member}/{leaf}" for leaf in self.leaves),
            *proxy,
            *fl,
            f"user {self.parent_user}",
            "topic readwrite #",
            "",
        ]
        return "\n".join(lines)

    def password_text(self) -> str:
        lines = [f"{self.parent_user}:{mosquitto_hash(self._state.manager_password)}"]
        if self._state.proxy_password:
            lines.append(f"{PROXY_USER}:{mosquitto_hash(self._state.proxy_password)}")
        lines += [f"{w}:{v.password_hash}" for w, v in sorted(self._state.workers.items())]
        lines += [f"{u}:{c.password_hash}" for u, c in sorted(self._state.fl_clients.items())]
        return "\n".join(lines) + "\n"

    def _load(self) -> _State:
        try:
            raw = self._state_file.read_bytes()
        except FileNotFoundError:
            return _State()
        return _State.model_validate(orjson.loads(raw))

    def _write(self, *, reload: bool = True) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self._state_file, orjson.dumps(self._state.model_dump()))
        _write_private(self.password_file, self.password_text().encode())
        _write_private(self.acl_file, self.acl_text().encode())
        if reload:
            self.reload()


def _write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with a 0600 file (the broker never sees half of it)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
