"""Leases: which process of a cluster (or of the root) leads, and since which term.

Several control-plane processes on one store form one cluster: one holds the lease and
acts (schedules, dispatches, judges liveness, runs workflows and schedules), the others
stand by. A lease is a row in the store with a ``term`` that grows by one each time the
lease changes hands; every write the leader makes carries its term and the store refuses
it once the term has moved on (fencing), so a leader that was paused past its lease
cannot write, whatever its clock says.

Clocks only decide *when* a standby may take over (the holder's ``expires_at`` has
passed); correctness rests on the term. Pure: the stores call :func:`claimed` and
:func:`renewed` inside their own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgeplane.errors import Fenced


@dataclass(frozen=True)
class Lease:
    #: what is led: ``{domain}/{cluster_id}`` (a cluster) or ``{domain}/root``
    name: str
    #: the process holding it (unique per process start)
    holder: str
    #: the holder's home (host and data dir): a process restarted in the same home may
    #: take the lease over at once instead of waiting for it to expire, because only one
    #: process at a time can run in one data dir
    home: str
    term: int
    #: when the holder's claim runs out (seconds since the epoch, the holder's clock)
    expires_at: float
    #: where the holder's API answers (``--advertise-url``), for redirects
    url: str = ""
    #: a random id the lease got when it was first claimed in this store, kept from
    #: holder to holder: the processes that lead one cluster in turn share it, a process
    #: with the same cluster id on another store does not (the root tells a new leader
    #: of a cluster from a second cluster claiming its id by it, manager/membership.py)
    lineage: str = ""


@dataclass(frozen=True)
class Claim:
    holder: str
    home: str
    url: str
    ttl_s: float
    #: the lineage the lease takes if it has none yet (a fresh random id)
    lineage: str = ""


def claimed(current: Lease | None, name: str, claim: Claim, now: float) -> Lease:
    """The lease after ``claim`` is made at ``now``: the claimant's when it was free,
    already its own, expired, or held from the claimant's own home; else unchanged."""
    until = now + claim.ttl_s
    if current is None or current.term == 0:
        return Lease(name, claim.holder, claim.home, 1, until, claim.url, claim.lineage)
    # a lease of a store from before lineages takes the claimant's
    lineage = current.lineage or claim.lineage
    if current.holder == claim.holder:
        return replace(current, expires_at=until, url=claim.url, lineage=lineage)
    if current.expires_at <= now or current.home == claim.home:
        term = current.term + 1
        return Lease(name, claim.holder, claim.home, term, until, claim.url, lineage)
    return current


def renewed(
    current: Lease | None, holder: str, term: int, now: float, ttl_s: float
) -> Lease | None:
    """The lease renewed by its holder, or None when ``holder`` lost it (another process
    holds it, or a later term began)."""
    if current is None or current.holder != holder or current.term != term:
        return None
    return replace(current, expires_at=now + ttl_s)


def released(current: Lease | None, holder: str, term: int) -> Lease | None:
    """The lease given up by its holder (expired now, so a standby takes it at once),
    or None when it is not the holder's to give up."""
    if current is None or current.holder != holder or current.term != term:
        return None
    return replace(current, expires_at=0.0)


def check_term(current: Lease | None, name: str, term: int) -> None:
    """:class:`Fenced` unless lease ``name`` is still in ``term``."""
    if current is None or current.term != term:
        now_term = 0 if current is None else current.term
        raise Fenced(
            f"this process led {name} in term {term}, which has ended (term {now_term} "
            "began): it writes nothing more"
        )
