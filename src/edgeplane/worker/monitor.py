"""Usage sampling on a worker: the node every ``node_interval_s``, each task and each
running chute service by its monitoring profile (docs/metrics.md), sent batched on the
``metrics`` leaf at QoS 0.

One loop for the whole worker, never a timer per task: :meth:`Monitor.watch` puts the
attempt in a dict with its first due time and wakes the loop only when that comes before
the loop's next wake-up; :meth:`Monitor.unwatch` takes it out. A task that ends before its
first interval is thus never sampled and costs two dict operations; with the profile
``off`` the worker does not call the monitor at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psutil

from edgeplane import clock as clocks
from edgeplane.monitoring import Monitoring
from edgeplane.protocol import ChuteSamples, Metrics, Sample, TaskSamples

log = logging.getLogger(__name__)

Sampler = Callable[[], Awaitable[dict[str, float]]]
Publish = Callable[[Metrics], Awaitable[None]]

#: samples due within this share of an interval are taken in the same wake-up
_SLACK = 0.1
#: samples an attempt keeps unsent while the link is down (older ones are dropped)
_UNSENT = 100
_MIB = 2**20


@dataclass
class _Watch:
    attempt: int
    profile: Monitoring
    sample: Sampler
    due: float
    unsent: list[Sample] = field(default_factory=list)


class NodeSampler:
    """cpu, memory, disk (of the data dir), network, load and temperature of this node.

    CPU and network are rates since the previous sample (its own counters: psutil's
    ``cpu_percent(None)`` is shared with the heartbeat's)."""

    def __init__(self, data_dir: Path, clock: clocks.Clock) -> None:
        self._data_dir = data_dir
        self._clock = clock
        self._last: tuple[float, float, float, int, int] | None = None

    def sample(self) -> dict[str, float]:
        """Blocking (reads /proc and /sys): call it in a thread."""
        now = self._clock.monotonic()
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        total = sum(times)
        net = psutil.net_io_counters()
        values: dict[str, float] = {}
        if self._last is not None:
            then, last_busy, last_total, last_sent, last_recv = self._last
            if total > last_total:
                values["cpu_percent"] = round(100 * (busy - last_busy) / (total - last_total), 2)
            if now > then:
                values["net_sent_bps"] = round((net.bytes_sent - last_sent) / (now - then), 1)
                values["net_recv_bps"] = round((net.bytes_recv - last_recv) / (now - then), 1)
        self._last = (now, busy, total, net.bytes_sent, net.bytes_recv)
        memory = psutil.virtual_memory()
        values["memory_used_mb"] = round((memory.total - memory.available) / _MIB, 1)
        values["memory_total_mb"] = round(memory.total / _MIB, 1)
        with contextlib.suppress(OSError):
            disk = psutil.disk_usage(str(self._data_dir))
            values["disk_used_mb"] = round(disk.used / _MIB, 1)
            values["disk_free_mb"] = round(disk.free / _MIB, 1)
        with contextlib.suppress(OSError, AttributeError):
            values["load1"] = os.getloadavg()[0]
        temperature = _temperature()
        if temperature is not None:
            values["temperature_c"] = temperature
        return values


def _temperature() -> float | None:
    """The hottest sensor's reading, when the node has any."""
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None
    try:
        sensors = read()
    except (OSError, RuntimeError):
        return None
    readings = [t.current for group in sensors.values() for t in group if t.current]
    return max(readings) if readings else None


class Monitor:
    def __init__(
        self,
        publish: Publish,
        clock: clocks.Clock,
        *,
        node: NodeSampler | None,
        node_interval_s: float,
    ) -> None:
        """``node_interval_s`` 0 (or ``node`` None): no node samples."""
        self._publish = publish
        self._clock = clock
        self._node = node if node_interval_s > 0 else None
        self._node_interval = node_interval_s
        self._node_due = 0.0
        self._node_unsent: list[Sample] = []
        self._watches: dict[str, _Watch] = {}
        #: running chute services by (chute, service) (``chutes/node.py`` keeps them)
        self._chutes: dict[tuple[str, str], _Watch] = {}
        self._wake = asyncio.Event()
        #: when the loop wakes next: at once with node samples (the first one), else when
        #: a task is watched
        self._next = 0.0 if self._node is not None else math.inf
        self.sent = 0

    def watch(self, task_id: str, attempt: int, profile: Monitoring, sample: Sampler) -> None:
        due = self._clock.monotonic() + profile.interval_s
        self._watches[task_id] = _Watch(attempt, profile, sample, due)
        if due < self._next:
            self._wake.set()

    def unwatch(self, task_id: str, attempt: int) -> None:
        watch = self._watches.get(task_id)
        if watch is not None and watch.attempt == attempt:
            del self._watches[task_id]

    def watch_chute(self, chute: str, service: str, profile: Monitoring, sample: Sampler) -> None:
        """Sample a running chute service from one interval on (its manifest's profile)."""
        due = self._clock.monotonic() + profile.interval_s
        self._chutes[(chute, service)] = _Watch(0, profile, sample, due)
        if due < self._next:
            self._wake.set()

    def unwatch_chute(self, chute: str, service: str) -> None:
        self._chutes.pop((chute, service), None)

    async def run(self) -> None:
        while True:
            timeout = self._next - self._clock.monotonic()
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wake.wait(), None if timeout == math.inf else timeout
                    )
            self._wake.clear()
            try:
                await self._tick()
            except Exception:  # a sampler's bug must not end sampling
                log.exception("sampling failed")

    async def _tick(self) -> None:
        now = self._clock.monotonic()
        batch = Metrics()
        if self._node is not None and now >= self._node_due - _SLACK * self._node_interval:
            self._node_due = now + self._node_interval
            values = await asyncio.to_thread(self._node.sample)
            self._node_unsent = [*self._node_unsent, Sample(ts=self._clock.now(), values=values)]
            self._node_unsent = self._node_unsent[-_UNSENT:]
        for task_id, watch in list(self._watches.items()):
            await self._sample(now, watch, partial(self._watches.get, task_id), task_id)
        for key, watch in list(self._chutes.items()):
            await self._sample(now, watch, partial(self._chutes.get, key), "/".join(key))
        batch.node = self._node_unsent
        batch.tasks = [
            TaskSamples(
                task_id=task_id,
                attempt=watch.attempt,
                history=watch.profile.history,
                samples=watch.unsent,
            )
            for task_id, watch in self._watches.items()
            if watch.unsent
        ]
        batch.chutes = [
            ChuteSamples(
                chute=chute, service=service, history=watch.profile.history, samples=watch.unsent
            )
            for (chute, service), watch in self._chutes.items()
            if watch.unsent
        ]
        self._next = min(
            [w.due for w in (*self._watches.values(), *self._chutes.values())]
            + ([self._node_due] if self._node is not None else [math.inf])
        )
        if batch.node or batch.tasks or batch.chutes:
            await self._publish(batch)
            self.sent += 1
            self._node_unsent = []
            for watch in (*self._watches.values(), *self._chutes.values()):
                watch.unsent = []

    async def _sample(
        self, now: float, watch: _Watch, current: Callable[[], _Watch | None], what: str
    ) -> None:
        """Take the watch's sample if it is due; kept unless ``current()`` is another
        watch by then (the task or service ended, or was watched afresh, meanwhile)."""
        if now < watch.due - _SLACK * watch.profile.interval_s:
            return
        watch.due = now + watch.profile.interval_s
        try:
            values = await watch.sample()
        except Exception:
            log.exception("sampling failed", extra={"of": what})
            values = {}
        if values and current() is watch:
            watch.unsent.append(Sample(ts=self._clock.now(), values=values))
            del watch.unsent[:-_UNSENT]
