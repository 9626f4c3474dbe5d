"""manager/chutes.py: answers matched to their call by id and worker; offline refused."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

from edgeplane.errors import Invalid, NotFound, Unavailable
from edgeplane.manager.chutes import ChuteCalls, WorkerProblem
from edgeplane.manager.series import Series
from edgeplane.model.worker import ChuteStates
from edgeplane.protocol import ChuteRequest, ChuteResponse, ChuteSamples, Metrics, Sample


@dataclass
class _Worker:
    state: str
    id: str = "w"
    last_seen: float = 0.0
    chutes: ChuteStates | None = None


@dataclass
class _Entry:
    worker: _Worker

    @property
    def online(self) -> bool:
        return self.worker.state != "offline"


@dataclass
class _Registry:
    entries: dict[str, _Entry]

    def get(self, worker_id: str) -> _Entry | None:
        return self.entries.get(worker_id)


@dataclass
class _Core:
    """What ChuteCalls uses of the manager's core: its registry and ``send``."""

    registry: _Registry
    series: Series = field(default_factory=Series)
    sent: list[tuple[str, str, BaseModel]] = field(default_factory=list)
    was_sent: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, member_id: str, type_: str, body: BaseModel, **_: Any) -> None:
        self.sent.append((member_id, type_, body))
        self.was_sent.set()


def _calls(timeout_s: float = 5) -> tuple[ChuteCalls, _Core]:
    core = _Core(_Registry({"w1": _Entry(_Worker("online")), "w2": _Entry(_Worker("offline"))}))
    return ChuteCalls(core, timeout_s), core  # type: ignore[arg-type]


async def _answered(calls: ChuteCalls, core: _Core, *answers: tuple[str, int, Any]) -> Any:
    pending = asyncio.create_task(calls.call("w1", "GET", "/chutes"))
    await core.was_sent.wait()
    request = core.sent[0][2]
    assert isinstance(request, ChuteRequest) and core.sent[0][1] == "chute.request"
    for member, status, body in answers:
        calls.on_response(member, ChuteResponse(id=request.id, status=status, body=body))
    return await pending


async def test_an_answer_is_matched_by_id_and_worker() -> None:
    calls, core = _calls()
    # another worker's answer with the same id is not this call's
    found = await _answered(calls, core, ("w2", 200, ["forged"]), ("w1", 200, ["hello"]))
    assert found == ["hello"]


async def test_a_workers_problem_comes_back_with_its_status() -> None:
    calls, core = _calls()
    body = {"title": "Not Found", "status": 404, "detail": "no chute 'x'", "field": "name"}
    with pytest.raises(WorkerProblem) as raised:
        await _answered(calls, core, ("w1", 404, body))
    assert (raised.value.status, raised.value.detail, raised.value.field) == (
        404,
        "no chute 'x'",
        "name",
    )


async def test_offline_unknown_and_silent_workers_are_refused() -> None:
    calls, _ = _calls(timeout_s=0.05)
    with pytest.raises(Unavailable, match="worker w2 is offline"):
        await calls.call("w2", "GET", "/chutes")
    with pytest.raises(NotFound):
        await calls.call("nope", "GET", "/chutes")
    with pytest.raises(Unavailable, match="w1 did not answer"):
        await calls.call("w1", "GET", "/chutes")
    assert calls.on_response("w1", ChuteResponse(id="0" * 16, status=200)) is False


async def test_a_read_of_an_offline_or_silent_workers_chutes_answers_the_last_report() -> None:
    calls, core = _calls(timeout_s=0.05)
    kept = ChuteStates(
        stream="ab" * 8, seq=3, reported_at=10.0, items=[{"name": "a", "state": "running"}]
    )
    for entry in core.registry.entries.values():
        entry.worker.chutes, entry.worker.last_seen = kept, 20.0
    stale = {"stale": True, "last_contact": 20.0, "reported_at": 10.0}
    for worker in ("w2", "w1"):  # offline; online but silent
        assert await calls.call(worker, "GET", "/chutes") == [
            {"name": "a", "state": "running", **stale}
        ]
        assert await calls.call(worker, "GET", "/chutes/a") == {
            "name": "a",
            "state": "running",
            **stale,
        }
        with pytest.raises(NotFound, match="as it last reported"):
            await calls.call(worker, "GET", "/chutes/b")
    # anything but those reads is refused as before
    with pytest.raises(Unavailable, match="offline"):
        await calls.call("w2", "GET", "/chutes/a/config")
    with pytest.raises(Unavailable, match="offline"):
        await calls.call("w2", "POST", "/chutes/a/stop")


async def test_a_chutes_usage_is_answered_by_the_manager_offline_too() -> None:
    calls, core = _calls()
    services = [{"name": "web"}, {"name": "db"}]
    kept = ChuteStates(
        stream="ab" * 8, seq=3, reported_at=10.0, items=[{"name": "a", "services": services}]
    )
    core.registry.entries["w2"].worker.chutes = kept
    samples = [Sample(ts=float(t), values={"memory_mb": 50.0 + t}) for t in range(10)]
    batch = Metrics(chutes=[ChuteSamples(chute="a", service="web", history=100, samples=samples)])
    core.series.ingest("w2", batch)
    found = await calls.call("w2", "GET", "/chutes/a/metrics")  # w2 is offline
    assert (found["id"], found["kind"], found["downsampled"]) == ("w2/a/web", "chute", False)
    assert [s["values"]["memory_mb"] for s in found["samples"]] == [50.0 + t for t in range(10)]
    bounded = await calls.call(
        "w2", "GET", "/chutes/a/metrics", query={"since": "2", "until": "4", "points": "2"}
    )
    assert len(bounded["samples"]) == 2 and bounded["downsampled"] is True
    # a service the report has, not sampled yet: an empty series
    db = await calls.call("w2", "GET", "/chutes/a/metrics", query={"service": "db"})
    assert db["samples"] == []
    assert core.sent == []  # never asked the worker
    for query, error, field_ in (
        ({"service": "nope"}, NotFound, "service"),
        ({"since": "5", "until": "1"}, Invalid, "since"),
        ({"points": "0"}, Invalid, "points"),
        ({"since": "x"}, Invalid, "since"),
        ({"until": "nan"}, Invalid, "until"),
    ):
        with pytest.raises(error) as caught:
            await calls.call("w2", "GET", "/chutes/a/metrics", query=query)
        assert caught.value.field == field_, query
    with pytest.raises(NotFound) as unknown:
        await calls.call("w1", "GET", "/chutes/a/metrics")  # w1 reported no chute a
    assert unknown.value.field == "name"
