"""Leading a cluster (or the root) among several processes on one store.

One process holds the lease (``edgeplane.store.leases``) and runs everything that acts:
scheduling, dispatch, liveness, workflows, schedules, applications. The others stand by
and claim the lease every :attr:`Leadership.poll_s`; once the leader's claim has expired
(it died, or lost the store), one of them takes it with the next term. Every write the
leader makes is fenced by its term, so a leader that was paused past its lease cannot
write once another took over: its store refuses, it notices (:attr:`lost`) and stands by.

Timing, with the lease ``ttl_s`` (default: the heartbeat): the leader renews every
``ttl_s / 3``; a standby claims every ``ttl_s / 5``, so it takes over within
``ttl_s * 1.2`` of the leader's last renewal. A leader that cannot renew for ``ttl_s``
(the store is out of reach) gives up on its own, before anyone else may take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from edgeplane import clock as clocks
from edgeplane.errors import Fenced, Unavailable
from edgeplane.store import Claim, Lease, Store

log = logging.getLogger(__name__)


def lease_name(domain: str, cluster_id: str, *, root: bool = False) -> str:
    """What a process leads: its cluster, or the root of its domain."""
    return f"{domain}/root" if root else f"{domain}/{cluster_id}"


def home_of(data_dir: Path) -> str:
    """Where a process lives: one process at a time per data dir on a host."""
    return f"{socket.gethostname()}:{data_dir.resolve()}"


class Leadership:
    def __init__(
        self,
        store: Store,
        name: str,
        *,
        home: str,
        url: str,
        ttl_s: float,
        clock: clocks.Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{clocks.new_id()[:8]}"
        self.home = home
        self.url = url
        self.ttl_s = ttl_s
        self.poll_s = ttl_s / 5
        self.renew_s = ttl_s / 3
        self.clock = clock or clocks.SystemClock()
        self._sleep = sleep or asyncio.sleep
        #: the term this process leads in (0: it does not lead)
        self.term = 0
        #: the lease's lineage (``edgeplane.store.leases``), once this process leads
        self.lineage = ""
        #: the leader as last seen (None: nobody, or not looked yet)
        self.leader: Lease | None = None
        #: set when this process stops leading: why, in :attr:`why`
        self.lost = asyncio.Event()
        self.why = ""
        self._renewing: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def leading(self) -> bool:
        return self.term > 0 and not self.lost.is_set()

    async def claim(self) -> bool:
        """Claim the lease once: whether this process leads now."""
        try:
            lease = await self.store.claim_lease(
                self.name,
                Claim(self.holder, self.home, self.url, self.ttl_s, lineage=clocks.new_id()),
                self.clock.now(),
            )
        except Unavailable as exc:
            log.warning("cannot claim the lease: store unavailable", extra={"error": exc.detail})
            return False
        self.leader = lease
        if lease.holder != self.holder:
            return False
        self.lineage = lease.lineage
        self._lead(lease.term)
        return True

    async def acquire(self) -> int:
        """Claim every :attr:`poll_s` until this process leads; its term. The caller
        fences the store it writes with by this term (``Store.fence``)."""
        while not await self.claim():
            await self._sleep(self.poll_s)
        return self.term

    def _lead(self, term: int) -> None:
        self.term = term
        self.lost.clear()
        self.why = ""
        log.info("leading", extra={"lease": self.name, "term": term, "holder": self.holder})
        self._renewing = asyncio.create_task(self._renew_loop(), name="lease-renewal")

    def deposed(self, why: str) -> None:
        """Stop leading (a fenced write said another process leads now)."""
        if self.term and not self.lost.is_set():
            log.error(
                "no longer leading", extra={"lease": self.name, "term": self.term, "why": why}
            )
            self.why = why
            self.lost.set()

    def on_fenced(self, exc: Fenced) -> None:
        self.deposed(exc.detail)

    async def _renew_loop(self) -> None:
        last = self.clock.monotonic()
        while not self.lost.is_set():
            with contextlib.suppress(TimeoutError):
                # woken early by release(): never cancelled inside a store call, which
                # would leave its connection checked out as the store closes
                await asyncio.wait_for(self._stopping.wait(), self.renew_s)
            if self._stopping.is_set():
                return
            try:
                ours = await self.store.renew_lease(
                    self.name, self.holder, self.term, self.clock.now(), self.ttl_s
                )
            except Unavailable as exc:
                if self.clock.monotonic() - last >= self.ttl_s:
                    self.deposed(f"could not renew the lease for {self.ttl_s:g} s: {exc.detail}")
                continue
            if not ours:
                self.deposed("another process holds the lease")
                continue
            last = self.clock.monotonic()

    async def release(self) -> None:
        """Stop renewing and, if still leading, give the lease up so a standby takes over
        at once (a clean stop)."""
        renewing, self._renewing = self._renewing, None
        if renewing is not None:
            self._stopping.set()
            # a renewal under way finishes (its connection goes back to the pool); one
            # that hangs past the lease is cancelled rather than hold up the stop
            await asyncio.wait({renewing}, timeout=self.ttl_s)
            if not renewing.done():
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
        if self.term and not self.lost.is_set():
            with contextlib.suppress(Unavailable):
                await self.store.release_lease(self.name, self.holder, self.term)
        self.term = 0
