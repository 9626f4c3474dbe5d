"""Usage series in the manager (``manager/series.py``) and the worker's sampling loop
(``worker/monitor.py``), with a manual clock."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from edgeplane.clock import ManualClock
from edgeplane.manager.series import Series, aggregate, window
from edgeplane.model import TaskSpec
from edgeplane.monitoring import Monitoring, resolve
from edgeplane.protocol import Metrics, Sample, TaskSamples
from edgeplane.worker.monitor import Monitor


def samples(n: int, start: float = 0.0, **values: float) -> list[Sample]:
    return [Sample(ts=start + i, values={"v": float(i), **values}) for i in range(n)]


def test_profiles_by_kind_and_custom() -> None:
    assert resolve(None, daemon=False) == Monitoring(interval_s=10, history=100)
    assert resolve(None, daemon=True) == Monitoring(interval_s=120, history=500)
    assert resolve("off", daemon=True) is None
    custom = Monitoring(interval_s=0.2, history=5)
    assert resolve(custom, daemon=False) is custom
    for bad in ({"interval_s": 0.01, "history": 1}, {"interval_s": 1, "history": 10**6}, "x"):
        with pytest.raises(ValidationError) as caught:
            TaskSpec.model_validate({"monitoring": bad})
        assert all(e["loc"][0] == "monitoring" for e in caught.value.errors())


def test_a_task_keeps_its_history_and_the_oldest_series_go() -> None:
    series = Series()
    batch = Metrics(tasks=[TaskSamples(task_id="t", attempt=1, history=3, samples=samples(5))])
    series.ingest("w", batch)
    assert [s.ts for s in series.task("t")] == [2, 3, 4]
    assert series.samples == 5


def test_window_bounds_and_downsamples() -> None:
    kept = samples(100)
    assert [s.ts for s in window(kept, 10, 12, 200)] == [10, 11, 12]
    squeezed = window(kept, None, None, 10)
    assert len(squeezed) == 10
    assert squeezed[0].values["v"] == pytest.approx(sum(range(10)) / 10, abs=1.5)


def test_aggregate_sums_and_averages_percentages() -> None:
    a = [Sample(ts=0, values={"memory_used_mb": 100, "cpu_percent": 10})]
    b = [Sample(ts=0, values={"memory_used_mb": 50, "cpu_percent": 30})]
    (one,) = aggregate([a, b], 1)
    assert one.values == {"memory_used_mb": 150, "cpu_percent": 20, "members": 2}


async def test_a_task_ending_before_its_first_interval_is_never_sampled() -> None:
    clock = ManualClock()
    sent: list[Metrics] = []
    calls: list[str] = []

    async def publish(batch: Metrics) -> None:
        sent.append(batch)

    def sampler(name: str):  # type: ignore[no-untyped-def]
        async def sample() -> dict[str, float]:
            calls.append(name)
            return {"cpu_percent": 1.0}

        return sample

    monitor = Monitor(publish, clock, node=None, node_interval_s=0)
    profile = Monitoring(interval_s=1, history=10)
    monitor.watch("short", 1, profile, sampler("short"))
    monitor.watch("long", 1, profile, sampler("long"))
    await monitor._tick()  # before the first interval: nothing
    monitor.unwatch("short", 1)
    clock.advance(1.0)
    await monitor._tick()
    assert calls == ["long"]
    assert [t.task_id for b in sent for t in b.tasks] == ["long"]
    monitor.unwatch("long", 2)  # another attempt's end leaves this one watched
    clock.advance(1.0)
    await monitor._tick()
    assert calls == ["long", "long"]


async def test_node_samples_start_without_any_task() -> None:
    sent: list[Metrics] = []
    published = asyncio.Event()

    async def publish(batch: Metrics) -> None:
        sent.append(batch)
        published.set()

    class Node:
        def sample(self) -> dict[str, float]:
            return {"memory_used_mb": 1.0}

    monitor = Monitor(publish, ManualClock(), node=Node(), node_interval_s=10)  # type: ignore[arg-type]
    loop = asyncio.create_task(monitor.run())
    try:
        async with asyncio.timeout(5):
            await published.wait()
    finally:
        loop.cancel()
    assert sent[0].node[0].values == {"memory_used_mb": 1.0}
