"""Usage metrics with the real stack (docs/metrics.md): monitoring profiles sample a host
task on its worker, the samples travel on the ``metrics`` leaf, the manager serves them;
``off`` sends nothing; Prometheus text parses with the named families."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from edgeplane.cli.main import app as cli_app
from edgeplane.protocol import Metrics, Topics, decode, parse_body
from edgeplane.roles.up import Stack
from edgeplane.transport import MqttLink
from edgeplane.worker.exposition import serve
from stack_fixtures import TOKEN, start_stack

T = TypeVar("T")
WAIT_S = 30
FAST = {"interval_s": 0.2, "history": 50}


@pytest.fixture
async def stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    async for pair in start_stack(
        tmp_path, fast_broker_url, "memory://", unique_domain, workers=1, metrics_interval_s=0.2
    ):
        yield pair


async def eventually(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Poll ``check`` until it returns something truthy (the condition, not a fixed sleep)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.05)
    raise AssertionError(what)  # pragma: no cover - the timeout raises first


class MetricsTap:
    """Counts what workers publish on the ``metrics`` leaf, per task."""

    def __init__(self, url: str, topics: Topics) -> None:
        self.batches: list[Metrics] = []
        self.link = MqttLink(
            url,
            client_id=f"test-metrics-tap-{topics.domain}",
            subscriptions=[topics.all_members("metrics")],
            on_message=self._on_message,
        )

    async def _on_message(self, topic: str, payload: bytes) -> None:
        envelope = decode(payload)
        body = parse_body(envelope.type, envelope.body)
        assert isinstance(body, Metrics)
        self.batches.append(body)

    def task_samples(self, task_id: str) -> int:
        return sum(len(t.samples) for b in self.batches for t in b.tasks if t.task_id == task_id)


async def run_host(http: httpx.AsyncClient, script: str, **fields: Any) -> str:
    body = {"runtime": "host", "command": ["sh", "-c", script], "start": True, **fields}
    response = await http.post("/tasks", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def state_of(http: httpx.AsyncClient, task_id: str) -> str:
    return str((await http.get(f"/tasks/{task_id}")).json()["state"])


async def test_fast_profile_reports_samples_and_off_sends_none(
    stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    up, http = stack
    tap = MetricsTap(up.broker_url, up.control.manager.topics)
    await tap.link.start()
    try:
        stop = tmp_path / "stop"
        wait = f"while [ ! -e {stop} ]; do sleep 0.05; done"
        watched = await run_host(http, wait, monitoring=FAST)
        quiet = await run_host(http, wait, monitoring="off")

        async def samples() -> list[dict[str, Any]] | None:
            got = (await http.get(f"/tasks/{watched}/metrics")).json()["samples"]
            return got if len(got) >= 3 else None

        got = await eventually(samples, "three samples of the watched task")
        assert all("memory_mb" in s["values"] or "rss_mb" in s["values"] for s in got)
        assert [s["ts"] for s in got] == sorted(s["ts"] for s in got)
        # the watched task's samples came over MQTT, and by then the quiet one's would have
        await eventually(
            lambda: _now(tap.task_samples(watched) >= 3), "the watched task's samples on MQTT"
        )
        assert tap.task_samples(quiet) == 0
        assert (await http.get(f"/tasks/{quiet}/metrics")).json()["samples"] == []
        stop.touch()
        for task_id in (watched, quiet):
            await eventually(lambda t=task_id: _done(http, t), f"{task_id} completed")
        # time-bounded: nothing before the first sample's time, nothing after ``until``
        first = got[0]["ts"]
        bounded = (await http.get(f"/tasks/{watched}/metrics", params={"until": first - 1})).json()
        assert bounded["samples"] == []
        squeezed = (await http.get(f"/tasks/{watched}/metrics", params={"points": 1})).json()
        assert len(squeezed["samples"]) == 1 and squeezed["downsampled"]
        # the node: worker and cluster series
        worker = up.workers[0].id
        node = await eventually(
            lambda: _samples(http, f"/workers/{worker}/metrics"), "node samples"
        )
        assert node[-1]["values"]["memory_total_mb"] > 0
        cluster = await eventually(
            lambda: _samples(http, f"/clusters/{up.control.settings.cluster_id}/metrics"),
            "cluster samples",
        )
        assert cluster[-1]["values"]["members"] == 1
    finally:
        await tap.link.stop()


async def _now(value: T) -> T:
    return value


async def _done(http: httpx.AsyncClient, task_id: str) -> bool:
    return await state_of(http, task_id) == "completed"


async def _samples(http: httpx.AsyncClient, path: str) -> list[dict[str, Any]] | None:
    response = await http.get(path)
    assert response.status_code == 200, response.text
    return response.json()["samples"] or None  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "monitoring",
    [
        "sometimes",
        {"interval_s": 0.01, "history": 10},
        {"interval_s": 1, "history": 0},
        {"interval_s": 1},
    ],
)
async def test_bad_monitoring_is_422_naming_the_field(
    stack: tuple[Stack, httpx.AsyncClient], monitoring: Any
) -> None:
    _, http = stack
    response = await http.post(
        "/tasks", json={"runtime": "host", "command": ["true"], "monitoring": monitoring}
    )
    assert response.status_code == 422
    assert "monitoring" in response.text


async def test_metrics_bad_window_is_422(stack: tuple[Stack, httpx.AsyncClient]) -> None:
    _, http = stack
    task_id = await run_host(http, "true", monitoring="off")
    response = await http.get(f"/tasks/{task_id}/metrics", params={"since": 10, "until": 5})
    assert response.status_code == 422 and "since" in response.text
    assert (await http.get("/tasks/nope/metrics")).status_code == 404
    assert (await http.get("/workers/nope/metrics")).status_code == 404


#: families ``/metrics`` has on every control plane (names as the parser gives them)
FAMILIES = {
    "edgeplane_tasks": "gauge",
    "edgeplane_tasks_finished": "counter",
    "edgeplane_tasks_dispatched": "counter",
    "edgeplane_task_dispatch_seconds": "histogram",
    "edgeplane_task_end_to_end_seconds": "histogram",
    "edgeplane_queue_depth": "gauge",
    "edgeplane_workers_online": "gauge",
    "edgeplane_mqtt_messages_received": "counter",
    "edgeplane_mqtt_messages_published": "counter",
    "edgeplane_mqtt_messages_bad": "counter",
    "edgeplane_store_commit_seconds": "histogram",
    "edgeplane_journal_queue": "gauge",
    "edgeplane_event_loop_lag_seconds": "histogram",
}


async def test_prometheus_text_parses_with_sane_values(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    up, http = stack
    ids = [await run_host(http, "true", monitoring="off") for _ in range(3)]
    for task_id in ids:
        await eventually(lambda t=task_id: _done(http, t), f"{task_id} completed")  # type: ignore[misc]
    async with httpx.AsyncClient(base_url=up.control.url) as plain:
        response = await plain.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name, kind in FAMILIES.items():
        assert name in families, name
        assert families[name].type == kind, name

    def value(name: str, sample: str, **labels: str) -> float:
        for s in families[name].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"{sample} {labels} not in {name}")

    assert (
        value("edgeplane_tasks_finished", "edgeplane_tasks_finished_total", state="completed") >= 3
    )
    assert value("edgeplane_tasks_dispatched", "edgeplane_tasks_dispatched_total") >= 3
    assert value("edgeplane_task_dispatch_seconds", "edgeplane_task_dispatch_seconds_count") >= 3
    e2e = "edgeplane_task_end_to_end_seconds"
    assert value(e2e, f"{e2e}_count") >= 3
    assert value(e2e, f"{e2e}_bucket", le="+Inf") == value(e2e, f"{e2e}_count")
    assert value(e2e, f"{e2e}_sum") > 0
    assert value("edgeplane_workers_online", "edgeplane_workers_online") == 1
    assert value("edgeplane_queue_depth", "edgeplane_queue_depth") == 0
    received = "edgeplane_mqtt_messages_received"
    assert value(received, f"{received}_total") >= 6  # hello, events of three tasks
    assert value("edgeplane_mqtt_messages_bad", "edgeplane_mqtt_messages_bad_total") == 0
    commit = "edgeplane_store_commit_seconds"
    assert value(commit, f"{commit}_count") >= 1

    # a worker's own (``worker --metrics-listen``): runtime start latency among them
    server = serve(up.workers[0], "127.0.0.1", 0)  # the system's free port, held at once
    port = server.server_address[1]
    try:
        async with httpx.AsyncClient() as plain:
            text = (await plain.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        server.shutdown()
        server.server_close()
    worker = {f.name: f for f in text_string_to_metric_families(text)}
    start = worker["edgeplane_runtime_start_seconds"]
    assert start.type == "histogram"
    counts = [s for s in start.samples if s.name.endswith("_count")]
    assert [(s.labels["runtime"], s.value >= 3) for s in counts] == [("host", True)]
    assert worker["edgeplane_worker_tasks_finished"].samples[0].value >= 3
    for refused in ("unsigned", "foreign", "duplicate"):  # none in a plain run
        assert worker[f"edgeplane_worker_commands_{refused}"].samples[0].value == 0


async def test_logs_follow_streams_lines_as_printed_and_ends_with_the_task(
    stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    """Each line is seen before the task prints the next one: it prints one, then waits
    for a file the test makes only once that line came through."""
    _, http = stack
    steps = tmp_path / "steps"
    steps.mkdir()
    script = (
        f"for i in 1 2 3; do echo line-$i; "
        f"while [ ! -e {steps}/$i ]; do sleep 0.05; done; done; echo bye >&2"
    )
    task_id = await run_host(http, script, monitoring="off")
    seen: list[str] = []
    events: list[str] = []
    async with asyncio.timeout(WAIT_S):
        async with http.stream("GET", f"/tasks/{task_id}/logs", params={"follow": "true"}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            name = ""
            async for line in resp.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                    events.append(name)
                elif line.startswith("data: ") and name == "stdout" and line[6:]:
                    seen.append(line[6:])
                    (steps / line[6:].removeprefix("line-")).touch()
    assert seen == ["line-1", "line-2", "line-3"]
    assert events[-1] == "end" and "stderr" in events
    # a finished task's follow gives its stored logs and ends at once
    async with http.stream("GET", f"/tasks/{task_id}/logs", params={"follow": "true"}) as resp:
        text = (await resp.aread()).decode()
    assert "data: line-1" in text and text.rstrip().endswith('"exit_code":0}')


async def test_cli_task_logs_follow(
    stack: tuple[Stack, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    up, http = stack
    for name in ("EDGEPLANE_URL", "EDGEPLANE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    task_id = await run_host(http, "echo one; sleep 0.3; echo two; echo err >&2")
    given = ["--url", up.control.url, "--token", TOKEN]
    result = await asyncio.to_thread(
        CliRunner().invoke, cli_app, [*given, "task", "logs", task_id, "--follow"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "one\ntwo\n"
    assert "err" in result.stderr


@pytest.fixture
async def rooted(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    """``up --clusters 1``: a root, one cluster, one worker."""
    async for pair in start_stack(
        tmp_path,
        fast_broker_url,
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        unique_domain,
        workers=1,
        clusters=1,
        aggregate_interval_s=0.3,
        metrics_interval_s=0.2,
    ):
        yield pair


async def test_root_sees_cluster_aggregate_worker_series_and_task_samples(
    rooted: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    """Under a root: the cluster sends its aggregate, each worker's node samples and the
    samples of the root's tasks up on the root's ``metrics`` leaf."""
    up, http = rooted
    stop = tmp_path / "stop"
    task_id = await run_host(http, f"while [ ! -e {stop} ]; do sleep 0.05; done", monitoring=FAST)
    clusters = (await http.get("/clusters")).json()["items"]
    cluster = clusters[0]["id"]
    aggregate = await eventually(
        lambda: _samples(http, f"/clusters/{cluster}/metrics"), "the cluster's aggregate"
    )
    assert aggregate[-1]["values"]["members"] == 1
    worker = up.workers[0].id
    node = await eventually(
        lambda: _samples(http, f"/clusters/{cluster}/workers/{worker}/metrics"),
        "a worker's series through its cluster",
    )
    assert node[-1]["values"]["memory_total_mb"] > 0
    assert (await http.get(f"/workers/{worker}/metrics")).status_code == 404  # no /workers
    await eventually(lambda: _samples(http, f"/tasks/{task_id}/metrics"), "the root's task samples")
    stop.touch()
    await eventually(lambda: _done(http, task_id), "the task completed")
