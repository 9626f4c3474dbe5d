"""The audit log's records: who changed what, when, and how it ended (docs/security.md).

A record never holds a body, a secret or a token: only who called (user and token id),
from where, the call (method, path and route template), the resource it names, and the
answer's status. Broker identity changes (join tokens, workers joining, revoked or given
new credentials) are records too, with ``action`` naming the change.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

#: Longest text kept in a field: a path or a header is cut here, never refused (a record
#: that the store would refuse would be lost).
MAX_FIELD = 256
#: The actor of a change nobody asked for through the API (a worker joining, ``up``
#: giving its in-process workers credentials).
SYSTEM = "system"
ANONYMOUS = "anonymous"

#: Broker identity changes (``action`` of their records).
JOIN_TOKEN_CREATED = "join_token.created"
JOIN_TOKEN_DELETED = "join_token.deleted"
WORKER_JOINED = "worker.joined"
WORKER_REVOKED = "worker.revoked"
#: a join request refused (unknown, revoked or expired token, a worker id taken)
JOIN_REFUSED = "worker.join_refused"
CREDENTIALS_ISSUED = "worker.credentials_issued"
CREDENTIALS_ROTATED = "worker.credentials_rotated"


class AuditRecord(BaseModel):
    """One record, immutable. Made validated: one is made per mutating request, and
    validating its 14 fields costs ~1.7 µs of CPU where ``model_construct`` costs ~7.8
    (and a frozen dataclass ~1.6) on the 2-core dev box."""

    model_config = ConfigDict(frozen=True)

    #: the store's sequence number (0 until stored): newest first, and the paging cursor
    id: int = 0
    #: seconds since the epoch (the manager's clock)
    at: float
    #: user name, ``anonymous`` (no valid token) or ``system``
    actor: str
    #: the HTTP method (``POST``, ``PUT``, ``PATCH``, ``DELETE``) or a broker identity
    #: change (``worker.joined``...)
    action: str
    token_id: str | None = None
    #: the caller's address
    client: str | None = None
    path: str | None = None
    #: the route template (``/api/v1/tasks/{task_id}``); None when no route matched
    route: str | None = None
    #: resource kind (``task``, ``worker``, ``join-token``...) and id where known
    resource: str | None = None
    resource_id: str | None = None
    project: str | None = None
    #: the HTTP status answered (None for broker identity changes, which are done, and
    #: for a call whose client went away before the answer)
    status: int | None = None
    #: ``X-Request-ID`` of the call, if it had one
    request_id: str | None = None
    #: what else a broker identity change says (the join token a worker joined with)
    detail: str | None = None


class AuditPage(BaseModel):
    """A page of records, newest first; ``next`` is the cursor of the following page
    (None: this was the last)."""

    items: list[AuditRecord]
    next: int | None = None


@dataclass(frozen=True)
class AuditQuery:
    """Filters of a read: each None matches all. ``before``: only records older than that
    cursor (a record's ``id``)."""

    actor: str | None = None
    action: str | None = None
    #: a kind (``task``) or a kind and id (``task/ID``)
    resource: str | None = None
    since: float | None = None
    until: float | None = None
    before: int | None = None
    limit: int = 100


def clip(value: str | None) -> str | None:
    """``value`` as a record keeps it: at most :data:`MAX_FIELD` characters, NUL (which
    PostgreSQL refuses in text) replaced."""
    if value is None:
        return None
    if len(value) > MAX_FIELD:
        value = value[:MAX_FIELD]
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def split_resource(resource: str) -> tuple[str, str | None]:
    """``task`` -> (``task``, None); ``task/ID`` -> (``task``, ``ID``)."""
    kind, _, resource_id = resource.partition("/")
    return kind, resource_id or None


def matches(record: AuditRecord, query: AuditQuery) -> bool:
    """Whether ``record`` passes the filters of ``query`` (the cursor included)."""
    if query.before is not None and record.id >= query.before:
        return False
    if query.actor is not None and record.actor != query.actor:
        return False
    if query.action is not None and record.action != query.action:
        return False
    if query.since is not None and record.at < query.since:
        return False
    if query.until is not None and record.at >= query.until:
        return False
    if query.resource is not None:
        kind, resource_id = split_resource(query.resource)
        if record.resource != kind:
            return False
        if resource_id is not None and record.resource_id != resource_id:
            return False
    return True
