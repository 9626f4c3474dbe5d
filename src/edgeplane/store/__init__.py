"""Durable state: the :class:`Store` interface and its memory and SQL backends."""

from __future__ import annotations

from edgeplane.errors import Invalid
from edgeplane.store.base import (
    AuditPrune,
    Batch,
    ChuteVersionRecord,
    Kind,
    Store,
    StoreChuteRecord,
    TokenRecord,
    UserRecord,
)
from edgeplane.store.leases import Claim, Lease
from edgeplane.store.memory import MemoryStore
from edgeplane.store.sql import SqlStore

__all__ = [
    "AuditPrune",
    "Batch",
    "ChuteVersionRecord",
    "Claim",
    "Kind",
    "Lease",
    "MemoryStore",
    "SqlStore",
    "Store",
    "StoreChuteRecord",
    "TokenRecord",
    "UserRecord",
    "open_store",
]


def open_store(url: str, *, hold_s: float | None = None) -> Store:
    """The store for ``url``, not yet opened (the caller awaits ``open()``).

    ``memory://`` keeps everything in this process; ``sqlite:///path``, ``sqlite://``
    (in memory) and ``postgresql://host[:port]/db[?schema=NAME]`` use :class:`SqlStore`
    (``hold_s``: see there).
    """
    scheme = url.partition(":")[0].lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme.partition("+")[0] in ("sqlite", "postgresql"):
        return SqlStore(url, hold_s=hold_s)
    raise Invalid(
        f"unknown store URL scheme {scheme!r}: use memory, sqlite or postgresql", field="store"
    )
