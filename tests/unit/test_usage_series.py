"""Usage series in the manager (``manager/series.py``) and the worker's sampling loop
(``worker/monitor.py``), with a manual clock."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from edgeplane.clock import ManualClock
from edgeplane.errors import Invalid
from edgeplane.manager.series import Series, aggregate, in_range, window
from edgeplane.model import TaskSpec
from edgeplane.monitoring import Monitoring, resolve
from edgeplane.protocol import ChuteSamples, Metrics, Sample, TaskSamples
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


def test_chute_series_are_per_worker_and_service_bounded_and_forgotten() -> None:
    series = Series()
    web = ChuteSamples(chute="c", service="web", history=3, samples=samples(5))
    db = ChuteSamples(chute="c", service="db", history=10, samples=samples(2))
    series.ingest("w1", Metrics(chutes=[web, db]))
    series.ingest("w2", Metrics(chutes=[web]))
    assert [s.ts for s in series.chute("w1", "c", "web")] == [2, 3, 4]
    assert series.chute_services("w1", "c") == ["db", "web"]
    assert series.samples == 12
    series.forget_chute("w1", "c")  # deleted: w1's go, w2's stay
    assert series.chute("w1", "c", "web") == [] and series.chute_services("w1", "c") == []
    assert len(series.chute("w2", "c", "web")) == 3
    # a root keeps no chute series: it asks the cluster that holds the worker
    root = Series()
    root.ingest("east", Metrics(chutes=[web]), root=True)
    assert root.chute("east", "c", "web") == []


def test_in_range_says_when_it_averaged_and_refuses_a_reversed_range() -> None:
    kept = samples(100)
    assert in_range(kept, 10, 12, 200) == (window(kept, 10, 12, 200), False)
    assert in_range(kept, None, None, 10)[1] is True
    with pytest.raises(Invalid) as caught:
        in_range(kept, 5, 1, 10)
    assert caught.value.field == "since"


async def test_chute_services_are_sampled_by_their_profile_beside_tasks() -> None:
    clock = ManualClock()
    sent: list[Metrics] = []
    values = {"memory_mb": 50.0}

    async def publish(batch: Metrics) -> None:
        sent.append(batch)

    async def sample() -> dict[str, float]:
        return dict(values)

    monitor = Monitor(publish, clock, node=None, node_interval_s=0)
    monitor.watch("t", 1, Monitoring(interval_s=1, history=10), sample)
    monitor.watch_chute("c", "web", Monitoring(interval_s=2, history=7), sample)
    clock.advance(1.0)
    await monitor._tick()  # the task is due, the service not yet
    assert [b.chutes for b in sent] == [[]]
    clock.advance(1.0)
    await monitor._tick()  # both, in one batch
    (chute,) = sent[-1].chutes
    assert (chute.chute, chute.service, chute.history) == ("c", "web", 7)
    assert [s.values for s in chute.samples] == [values] and sent[-1].tasks
    monitor.unwatch_chute("c", "web")
    clock.advance(2.0)
    await monitor._tick()
    assert sent[-1].chutes == []
