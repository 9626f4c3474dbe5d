"""A member's side of joining: present a join token once, keep the identity it buys.

A worker joins its manager's broker (``edgeplane worker --join``), a cluster's manager its
root's (``edgeplane manager --root … --join``). The answer (MQTT username/password and the
command key) is kept in ``credentials.json`` (mode 0600) in the member's data dir
(``<data dir>/worker``, ``<data dir>/uplink``) and used from then on; the token is not
needed again (docs/broker-security.md).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from pydantic import ValidationError

from edgeplane.errors import Invalid, Unavailable
from edgeplane.protocol import Topics
from edgeplane.protocol.joining import JoinAnswer, JoinRequest
from edgeplane.transport import MqttLink

CREDENTIALS_FILE = "credentials.json"
JOIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Identity:
    #: the member's id: a worker's, or a cluster's at its root
    member_id: str
    username: str
    password: str = field(repr=False)
    mac_key: bytes = field(repr=False)
    labels: dict[str, str] = field(default_factory=dict)


async def join(
    broker_url: str,
    topics: Topics,
    token: str,
    wanted_id: str,
    timeout_s: float = JOIN_TIMEOUT_S,
    ca: Path | None = None,
) -> Identity:
    """Ask the parent (``topics``' level) for an identity; ``Invalid`` (field ``join``) if
    it refuses the token, ``Unavailable`` if no answer comes."""
    nonce = "join-" + secrets.token_hex(16)  # the client id: only we may read the answer
    answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    request = JoinRequest(token=token, worker_id=wanted_id).model_dump_json().encode()

    async def on_message(topic: str, payload: bytes) -> None:
        if not answered.done():
            answered.set_result(payload)

    async def ask() -> None:  # on every (re)connection, once subscribed to the answer
        await link.publish(topics.join(nonce), request)

    link = MqttLink(
        broker_url,
        client_id=nonce,
        subscriptions=[topics.join_answer(nonce)],
        on_message=on_message,
        on_connect=ask,
        ca=ca,
    )
    await link.start()
    try:
        payload = await asyncio.wait_for(answered, timeout_s)
    except TimeoutError:
        raise Unavailable(
            f"no answer to the join request within {timeout_s:g} s: is the "
            f"{'root' if topics.root else 'manager'} running and is {link.broker} its broker?"
        ) from None
    finally:
        await link.stop()
    try:
        answer = JoinAnswer.model_validate_json(payload)
    except ValidationError:
        raise Invalid("the join answer is malformed", field="join") from None
    if answer.error:
        # Invalid, not Unauthorized: the CLI's advice for that is about API tokens.
        parent = "root" if topics.root else "manager"
        raise Invalid(f"the {parent} refused the join token: {answer.error}", field="join")
    return Identity(
        member_id=answer.worker_id,
        username=answer.username,
        password=answer.password,
        mac_key=bytes.fromhex(answer.mac_key),
        labels=dict(answer.labels),
    )


def save(data_dir: Path, identity: Identity) -> Path:
    """Keep ``identity`` in ``data_dir`` (0600, replaced atomically)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / CREDENTIALS_FILE
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            orjson.dumps(
                {
                    # (the key of the file a worker kept before clusters joined too)
                    "worker_id": identity.member_id,
                    "username": identity.username,
                    "password": identity.password,
                    "mac_key": identity.mac_key.hex(),
                    "labels": identity.labels,
                }
            )
        )
    os.replace(tmp, path)
    return path


def load(data_dir: Path, name: str = CREDENTIALS_FILE) -> Identity | None:
    """The identity kept in ``data_dir`` (in the file ``name``), or None if the member
    never joined."""
    path = data_dir / name
    try:
        raw = orjson.loads(path.read_bytes())
        return Identity(
            member_id=str(raw["worker_id"]),
            username=str(raw["username"]),
            password=str(raw["password"]),
            mac_key=bytes.fromhex(str(raw["mac_key"])),
            labels={str(k): str(v) for k, v in dict(raw.get("labels") or {}).items()},
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Invalid(f"cannot read {path}: {exc}", field="credentials") from None
