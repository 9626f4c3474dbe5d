"""Histograms and the event-loop lag probe the Prometheus endpoints expose
(``api/metrics.py``; docs/metrics.md). Plain counters, no locks: each is updated on one
event loop only. An observation is a bisect and three additions (well under 1 µs)."""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client.core import HistogramMetricFamily

#: seconds: from a millisecond (a wasm no-op's path) to a minute (a queued task's wait)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: seconds: a task's whole life, up to an hour
LIFE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: seconds the loop probe sleeps between measurements
LAG_PERIOD_S = 0.5


class Histogram:
    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def family(
        self, name: str, documentation: str, labels: Sequence[str] = (), values: Sequence[str] = ()
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=list(labels))
        family.add_metric(list(values), self.buckets(), self.sum)
        return family

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", self.count))
        return out


class LoopLag:
    """How late the event loop wakes a sleeper: a busy loop delays every message."""

    def __init__(self) -> None:
        self.last = 0.0
        self.histogram = Histogram()

    async def run(self, period_s: float = LAG_PERIOD_S) -> None:
        while True:
            # the real clock, not an injected one: what is measured is the real loop
            before = time.monotonic()
            await asyncio.sleep(period_s)
            self.last = max(0.0, time.monotonic() - before - period_s)
            self.histogram.observe(self.last)
