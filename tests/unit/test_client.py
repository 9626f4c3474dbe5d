"""The Python client against a mock transport: requests, long-poll waits, error mapping."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane import AsyncClient, Client, WaitTimeout
from edgeplane.client import BATCH_LIMIT, DEFAULT_URL, resolve_endpoint
from edgeplane.clock import ManualClock
from edgeplane.errors import (
    Conflict,
    EdgeplaneError,
    Forbidden,
    Invalid,
    NotFound,
    TaskFailure,
    Unauthorized,
    Unavailable,
)
from edgeplane.model import Schedule, TaskSpec, Workflow, WorkflowSpec

Handler = Callable[[httpx.Request], httpx.Response]
WASM = b"\x00asm\x01\x00\x00\x00"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("EDGEPLANE_URL", "EDGEPLANE_TOKEN", "EDGEPLANE_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("EDGEPLANE_DATA_DIR", str(data_dir))
    return data_dir


def task_doc(task_id: str = "t1", state: str = "pending", **extra: Any) -> dict[str, Any]:
    return {"id": task_id, "name": "add", "state": state, **extra}


def problem(status: int, detail: str, **extra: Any) -> httpx.Response:
    body = {"type": "about:blank", "title": "x", "status": status, "detail": detail, **extra}
    return httpx.Response(
        status, content=json.dumps(body), headers={"Content-Type": "application/problem+json"}
    )


class Recorder:
    """Answers with ``handler`` and keeps every request for the assertions."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def client(self, **kwargs: Any) -> Client:
        return Client("http://api.test", "tok", transport=httpx.MockTransport(self), **kwargs)

    def async_client(self, **kwargs: Any) -> AsyncClient:
        return AsyncClient("http://api.test", "tok", transport=httpx.MockTransport(self), **kwargs)


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


# --- where the server is -------------------------------------------------------------------


def test_resolution_defaults_without_env_or_files() -> None:
    assert resolve_endpoint() == (DEFAULT_URL, None)


def test_resolution_reads_files_left_by_up(clean_env: Path) -> None:
    clean_env.mkdir()
    (clean_env / "endpoint").write_text("http://10.0.0.5:7070\n")
    (clean_env / "admin-token").write_text("secret\n")
    assert resolve_endpoint() == ("http://10.0.0.5:7070", "secret")


def test_resolution_env_beats_files_and_args_beat_env(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_env.mkdir()
    (clean_env / "endpoint").write_text("http://file:1")
    (clean_env / "admin-token").write_text("file-token")
    monkeypatch.setenv("EDGEPLANE_URL", "http://env:2")
    monkeypatch.setenv("EDGEPLANE_TOKEN", "env-token")
    assert resolve_endpoint() == ("http://env:2", "env-token")
    assert resolve_endpoint("http://arg:3", "arg-token") == ("http://arg:3", "arg-token")


def test_resolution_uses_admin_token_env_before_the_file(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_env.mkdir()
    (clean_env / "admin-token").write_text("file-token")
    monkeypatch.setenv("EDGEPLANE_ADMIN_TOKEN", "admin")
    assert resolve_endpoint()[1] == "admin"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:7070", "http://127.0.0.1:7070"),
        ("http://h:1/", "http://h:1"),
        ("https://h/api/v1", "https://h"),
    ],
)
def test_urls_are_normalised(given: str, expected: str) -> None:
    assert resolve_endpoint(given)[0] == expected


# --- requests ------------------------------------------------------------------------------


def test_submit_reads_the_module_and_starts_it(tmp_path: Path) -> None:
    module = tmp_path / "add.wasm"
    module.write_bytes(WASM)
    api = Recorder(lambda r: httpx.Response(201, json=task_doc()))
    with api.client() as client:
        task = client.submit(module, "add", [2, 3], priority=90)
    assert task.id == "t1"
    (request,) = api.requests
    assert (request.method, request.url.path) == ("POST", "/api/v1/tasks")
    assert request.headers["Authorization"] == "Bearer tok"
    sent = body(request)
    assert base64.b64decode(sent["file"]) == WASM
    assert sent | {"file": None} == {
        "file": None,
        "name": "add",
        "inputs": [2, 3],
        "priority": 90,
        "start": True,
    }


def test_submit_takes_bytes_and_may_leave_the_task_unstarted() -> None:
    api = Recorder(lambda r: httpx.Response(201, json=task_doc()))
    with api.client() as client:
        client.submit(WASM, "add", start=False)
    sent = body(api.requests[0])
    assert sent["start"] is False
    assert base64.b64decode(sent["file"]) == WASM
    assert "inputs" not in sent


def test_submit_takes_a_bytearray_as_wat2wasm_returns() -> None:
    api = Recorder(lambda r: httpx.Response(201, json=task_doc()))
    with api.client() as client:
        client.submit(bytearray(WASM), "add")
    assert base64.b64decode(body(api.requests[0])["file"]) == WASM


def test_submit_of_a_missing_file_is_invalid_input(tmp_path: Path) -> None:
    api = Recorder(lambda r: httpx.Response(201, json=task_doc()))
    with api.client() as client, pytest.raises(Invalid) as caught:
        client.submit(str(tmp_path / "nope.wasm"), "add")
    assert caught.value.field == "file"
    assert api.requests == []


def test_submit_many_sends_batches_in_order() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        tasks = body(request)["tasks"]
        return httpx.Response(200, json={"items": [task_doc(t["name"]) for t in tasks]})

    api = Recorder(handler)
    specs = [{"name": f"n{i}", "file": WASM} for i in range(2 * BATCH_LIMIT + 5)]
    with api.client() as client:
        created = client.submit_many(specs)
    assert [t.id for t in created] == [s["name"] for s in specs]
    sizes = [len(body(r)["tasks"]) for r in api.requests]
    assert sizes == [BATCH_LIMIT, BATCH_LIMIT, 5]
    first = body(api.requests[0])["tasks"][0]
    assert first["start"] is True
    assert base64.b64decode(first["file"]) == WASM


def test_create_task_sends_the_spec_as_is() -> None:
    api = Recorder(lambda r: httpx.Response(201, json=task_doc()))
    with api.client() as client:
        client.create_task({"name": "x", "runtime": "host", "command": ["true"]})
    assert body(api.requests[0]) == {"name": "x", "runtime": "host", "command": ["true"]}


def test_list_tasks_passes_only_given_filters() -> None:
    page = {"items": [task_doc("a"), task_doc("b")], "total": 7}
    api = Recorder(lambda r: httpx.Response(200, json=page))
    with api.client() as client:
        got = client.list_tasks(state="running", limit=2)
    assert [t.id for t in got.items] == ["a", "b"]
    assert got.total == 7
    assert dict(api.requests[0].url.params) == {"state": "running", "limit": "2"}


def test_every_task_and_worker_call_uses_its_route() -> None:
    worker = {"id": "w1", "state": "online"}
    answers: dict[tuple[str, str], httpx.Response] = {
        ("POST", "/api/v1/tasks/t1/start"): httpx.Response(200, json=task_doc()),
        ("POST", "/api/v1/tasks/t1/stop"): httpx.Response(200, json=task_doc(state="cancelled")),
        ("POST", "/api/v1/tasks/t1/retry"): httpx.Response(
            201, json={**task_doc("t2"), "retry_of": "t1"}
        ),
        ("PATCH", "/api/v1/tasks/t1"): httpx.Response(200, json=task_doc()),
        ("GET", "/api/v1/tasks/t1"): httpx.Response(200, json=task_doc()),
        ("DELETE", "/api/v1/tasks/t1"): httpx.Response(204),
        ("GET", "/api/v1/tasks/t1/results"): httpx.Response(
            200, json={"task_id": "t1", "state": "completed", "results": [5]}
        ),
        ("GET", "/api/v1/tasks/t1/logs"): httpx.Response(
            200, json={"task_id": "t1", "stdout": "out", "stderr": "err"}
        ),
        ("GET", "/api/v1/workers"): httpx.Response(200, json={"items": [worker], "total": 1}),
        ("GET", "/api/v1/workers/w1"): httpx.Response(200, json=worker),
        ("POST", "/api/v1/workers/w1/drain"): httpx.Response(200, json=worker),
        ("POST", "/api/v1/workers/w1/undrain"): httpx.Response(200, json=worker),
        ("PUT", "/api/v1/workers/w1/owner"): httpx.Response(200, json={**worker, "owner": "ann"}),
        ("DELETE", "/api/v1/workers/w1"): httpx.Response(204),
        ("GET", "/healthz"): httpx.Response(200, json={"status": "ok"}),
        ("GET", "/metrics"): httpx.Response(200, text="edgeplane_up 1.0\n"),
    }
    api = Recorder(lambda r: answers[(r.method, r.url.path)])
    with api.client() as client:
        assert client.start("t1").id == "t1"
        assert client.stop("t1").state == "cancelled"
        assert client.retry("t1").retry_of == "t1"
        client.update("t1", priority=10)
        client.get("t1")
        client.delete("t1")
        assert client.results("t1").results == [5]
        assert client.logs("t1").stderr == "err"
        assert client.workers().items[0].id == "w1"
        assert client.worker("w1").state == "online"
        client.drain_worker("w1")
        client.undrain_worker("w1")
        assert client.set_worker_owner("w1", "ann").owner == "ann"
        client.delete_worker("w1")
        assert client.health() == {"status": "ok"}
        assert client.metrics() == "edgeplane_up 1.0\n"
    assert body(api.requests[3]) == {"priority": 10}
    assert len(api.requests) == len(answers)


def test_task_pages_carry_their_cursor_and_schedules_pause() -> None:
    schedule = {"id": "s1", "kind": "task", "cron": "0 3 * * *", "paused": True}
    answers: dict[tuple[str, str], httpx.Response] = {
        ("GET", "/api/v1/tasks"): httpx.Response(
            200, json={"items": [task_doc("a")], "total": 9, "next": "CUR"}
        ),
        ("POST", "/api/v1/schedules/s1/pause"): httpx.Response(200, json=schedule),
        ("POST", "/api/v1/schedules/s1/resume"): httpx.Response(
            200, json={**schedule, "paused": False}
        ),
        ("GET", "/api/v1/schedules/s1"): httpx.Response(200, json=schedule),
    }
    api = Recorder(lambda r: answers[(r.method, r.url.path)])
    with api.client() as client:
        page = client.list_tasks(name="etl", worker_id="w1", order="newest", cursor="PREV")
        assert (page.next, page.total) == ("CUR", 9)
        assert client.pause_schedule("s1").paused is True
        assert client.resume_schedule("s1").paused is False
        assert client.schedule("s1").id == "s1"
    assert dict(api.requests[0].url.params) == {
        "name": "etl",
        "worker_id": "w1",
        "order": "newest",
        "cursor": "PREV",
    }


# --- waiting -------------------------------------------------------------------------------


def long_poll(clock: ManualClock, states: list[str], results: Any = None) -> Handler:
    """Holds each GET for its ``wait`` (by moving the clock) and walks through ``states``."""
    remaining = list(states)

    def handler(request: httpx.Request) -> httpx.Response:
        clock.advance(float(request.url.params.get("wait", 0)))
        state = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        return httpx.Response(200, json=task_doc(state=state, results=results, error="trap"))

    return handler


def test_wait_long_polls_until_terminal() -> None:
    clock = ManualClock()
    api = Recorder(long_poll(clock, ["running", "running", "completed"], results=[5]))
    with api.client(clock=clock) as client:
        task = client.wait("t1")
    assert task.state == "completed"
    assert [r.url.params["wait"] for r in api.requests] == ["30.0"] * 3
    assert api.requests[0].extensions["timeout"]["read"] == 30 + 30


def test_run_creates_and_waits_in_one_request_then_long_polls() -> None:
    clock = ManualClock()
    api = Recorder(long_poll(clock, ["running", "completed"], results=[5]))
    with api.client(clock=clock) as client:
        task = client.run(WASM, "add", [2, 3], timeout=100)
    assert (task.state, task.results) == ("completed", [5])
    created, polled = api.requests
    assert (created.method, created.url.path, created.url.params["wait"]) == (
        "POST",
        "/api/v1/tasks",
        "30.0",
    )
    assert body(created)["start"] is True
    assert (polled.method, polled.url.path) == ("GET", "/api/v1/tasks/t1")


def test_run_times_out_with_the_task_it_created() -> None:
    clock = ManualClock()
    api = Recorder(long_poll(clock, ["running"]))
    with api.client(clock=clock) as client, pytest.raises(WaitTimeout) as caught:
        client.run(WASM, "add", [2, 3], timeout=5)
    assert caught.value.task is not None and caught.value.task.id == "t1"
    assert "task t1 still running after 5s" in str(caught.value)
    assert [r.url.params["wait"] for r in api.requests] == ["5.0"]


def test_wait_gives_up_at_the_timeout_with_the_last_state() -> None:
    clock = ManualClock()
    api = Recorder(long_poll(clock, ["running"]))
    with api.client(clock=clock) as client, pytest.raises(WaitTimeout) as caught:
        client.wait("t1", timeout=45)
    assert [r.url.params["wait"] for r in api.requests] == ["30.0", "15.0"]
    assert caught.value.task.state == "running"
    assert isinstance(caught.value, Unavailable)
    assert isinstance(caught.value, TimeoutError)


def test_wait_with_zero_timeout_asks_once_without_holding() -> None:
    api = Recorder(long_poll(ManualClock(), ["pending"]))
    with api.client(clock=ManualClock()) as client, pytest.raises(WaitTimeout):
        client.wait("t1", timeout=0)
    assert len(api.requests) == 1
    assert "wait" not in api.requests[0].url.params


def test_result_returns_results_of_a_completed_task() -> None:
    api = Recorder(long_poll(ManualClock(), ["completed"], results=[5]))
    with api.client() as client:
        assert client.result("t1", timeout=10) == [5]


def test_result_raises_task_failure_with_the_task_error() -> None:
    api = Recorder(long_poll(ManualClock(), ["failed"]))
    with api.client() as client, pytest.raises(TaskFailure, match="trap"):
        client.result("t1")


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, Invalid),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (413, Invalid),
        (422, Invalid),
        (503, Unavailable),
    ],
)
def test_problems_map_back_to_error_classes(status: int, error: type[EdgeplaneError]) -> None:
    api = Recorder(lambda r: problem(status, "went wrong", field="inputs"))
    with api.client() as client, pytest.raises(error) as caught:
        client.get("t1")
    assert type(caught.value) is error
    assert caught.value.detail == "went wrong"
    assert caught.value.field == "inputs"


def test_a_non_json_error_keeps_its_text() -> None:
    api = Recorder(lambda r: httpx.Response(500, text="proxy exploded"))
    with api.client() as client, pytest.raises(EdgeplaneError, match="proxy exploded"):
        client.get("t1")


def test_a_malformed_answer_is_an_edgeplane_error() -> None:
    api = Recorder(lambda r: httpx.Response(200, json={"no": "id"}))
    with api.client() as client, pytest.raises(EdgeplaneError, match="unexpected answer"):
        client.get("t1")


def test_connection_failure_is_unavailable_naming_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with (
        Client("http://down.test:9", transport=httpx.MockTransport(refuse)) as client,
        pytest.raises(Unavailable, match=r"http://down\.test:9"),
    ):
        client.health()


# --- the async twin -------------------------------------------------------------------------


async def test_async_client_submits_and_waits(tmp_path: Path) -> None:
    module = tmp_path / "add.wasm"
    module.write_bytes(WASM)
    clock = ManualClock()
    polls = long_poll(clock, ["running", "completed"], results=[5])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json=task_doc())
        return polls(request)

    api = Recorder(handler)
    async with api.async_client(clock=clock) as client:
        task = await client.submit(module, "add", [2, 3])
        assert await client.result(task.id) == [5]
    assert base64.b64decode(body(api.requests[0])["file"]) == WASM
    assert len(api.requests) == 3


async def test_async_client_runs_in_one_request() -> None:
    clock = ManualClock()
    api = Recorder(long_poll(clock, ["completed"], results=[5]))
    async with api.async_client(clock=clock) as client:
        task = await client.run(WASM, "add", [2, 3])
    assert task.results == [5]
    assert [(r.method, r.url.params["wait"]) for r in api.requests] == [("POST", "30.0")]


async def test_async_client_maps_errors_batches_and_times_out() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/batch"):
            return httpx.Response(200, json={"items": [task_doc()] * len(body(request)["tasks"])})
        if request.url.path.endswith("/t1"):
            return httpx.Response(200, json=task_doc(state="running"))
        return problem(404, "no task t9")

    api = Recorder(handler)
    async with api.async_client(clock=ManualClock()) as client:
        assert len(await client.submit_many([{"name": "a"}] * 3)) == 3
        with pytest.raises(NotFound, match="no task t9"):
            await client.get("t9")
        with pytest.raises(WaitTimeout, match="still running"):
            await client.wait("t1", timeout=0)


# --- jobs, workflows and schedules -----------------------------------------------------------


def run_doc(run_id: str = "j1", state: str = "running", **extra: Any) -> dict[str, Any]:
    return {"id": run_id, "kind": "job", "state": state, "tasks": [task_doc()], **extra}


def schedule_doc(schedule_id: str = "s1", **extra: Any) -> dict[str, Any]:
    cron = {"cron": "*/5 * * * *", "timezone": "Europe/Berlin", "next_run": 1.7e9}
    return {"id": schedule_id, "kind": "job", **cron, **extra}


def test_create_job_encodes_task_files_and_returns_the_run(tmp_path: Path) -> None:
    module = tmp_path / "add.wasm"
    module.write_bytes(WASM)
    api = Recorder(lambda r: httpx.Response(201, json=run_doc()))
    spec = {
        "name": "nightly",
        "mode": "sequential",
        "tasks": [{"name": "a", "file": module}, {"name": "b", "file": WASM}, {"name": "c"}],
    }
    with api.client() as client:
        run = client.create_job(spec)
    assert isinstance(run, Workflow)
    assert (run.id, run.state, run.tasks[0].id) == ("j1", "running", "t1")
    (request,) = api.requests
    assert (request.method, request.url.path) == ("POST", "/api/v1/jobs")
    sent = body(request)
    assert (sent["name"], sent["mode"]) == ("nightly", "sequential")
    assert [base64.b64decode(t["file"]) for t in sent["tasks"][:2]] == [WASM, WASM]
    assert sent["tasks"][2] == {"name": "c"}


def test_create_workflow_takes_the_pydantic_spec() -> None:
    api = Recorder(lambda r: httpx.Response(201, json=run_doc(kind="workflow")))
    spec = WorkflowSpec(
        tasks=[TaskSpec(name="a", command=["true"]), TaskSpec(name="b", depends_on=["a"])],
        fail_fast=True,
    )
    with api.client() as client:
        run = client.create_workflow(spec)
    assert isinstance(run, Workflow)
    assert api.requests[0].url.path == "/api/v1/workflows"
    assert body(api.requests[0]) == {
        "tasks": [{"name": "a", "command": ["true"]}, {"name": "b", "depends_on": ["a"]}],
        "fail_fast": True,
    }


def test_a_scheduled_job_comes_back_as_its_schedule() -> None:
    api = Recorder(lambda r: httpx.Response(201, json=schedule_doc()))
    with api.client() as client:
        made = client.create_job({"tasks": [{"name": "a"}], "schedule": "*/5 * * * *"})
    assert isinstance(made, Schedule)
    assert (made.id, made.cron, made.next_run) == ("s1", "*/5 * * * *", 1.7e9)


def test_schedule_task_posts_a_task_and_returns_the_schedule() -> None:
    api = Recorder(lambda r: httpx.Response(201, json=schedule_doc(kind="task")))
    with api.client() as client:
        made = client.schedule_task({"name": "add", "file": WASM, "schedule": "0 * * * *"})
        with pytest.raises(Invalid) as unscheduled:
            client.schedule_task({"name": "add"})
        with pytest.raises(Invalid, match="schedule_task") as scheduled:
            client.create_task({"name": "add", "schedule": "0 * * * *"})
    assert (made.kind, made.timezone) == ("task", "Europe/Berlin")
    assert unscheduled.value.field == scheduled.value.field == "schedule"
    (request,) = api.requests
    assert request.url.path == "/api/v1/tasks"
    assert base64.b64decode(body(request)["file"]) == WASM


def test_every_job_workflow_and_schedule_call_uses_its_route() -> None:
    page = {"items": [run_doc(tasks=[])], "total": 1}
    answers: dict[tuple[str, str], httpx.Response] = {
        ("GET", "/api/v1/jobs"): httpx.Response(200, json=page),
        ("GET", "/api/v1/jobs/j1"): httpx.Response(200, json=run_doc()),
        ("POST", "/api/v1/jobs/j1/stop"): httpx.Response(200, json=run_doc(state="cancelled")),
        ("GET", "/api/v1/workflows"): httpx.Response(200, json=page),
        ("GET", "/api/v1/workflows/w1"): httpx.Response(200, json=run_doc("w1")),
        ("POST", "/api/v1/workflows/w1/stop"): httpx.Response(200, json=run_doc("w1")),
        ("GET", "/api/v1/schedules"): httpx.Response(
            200, json={"items": [schedule_doc()], "total": 3}
        ),
        ("DELETE", "/api/v1/schedules/s1"): httpx.Response(204),
    }
    api = Recorder(lambda r: answers[(r.method, r.url.path)])
    with api.client() as client:
        assert client.jobs(limit=1, offset=2).items[0].id == "j1"
        assert client.job("j1").tasks[0].id == "t1"
        assert client.stop_job("j1").state == "cancelled"
        assert client.workflows().total == 1
        assert client.workflow("w1").id == "w1"
        client.stop_workflow("w1")
        schedules = client.schedules()
        assert (schedules.items[0].id, schedules.total) == ("s1", 3)
        client.delete_schedule("s1")
    assert dict(api.requests[0].url.params) == {"limit": "1", "offset": "2"}
    assert len(api.requests) == len(answers)


def run_poll(clock: ManualClock, states: list[str]) -> Handler:
    """Like :func:`long_poll`, for a job or workflow."""
    remaining = list(states)

    def handler(request: httpx.Request) -> httpx.Response:
        clock.advance(float(request.url.params.get("wait", 0)))
        state = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        return httpx.Response(200, json=run_doc(state=state))

    return handler


def test_wait_job_long_polls_and_reports_every_state() -> None:
    clock = ManualClock()
    api = Recorder(run_poll(clock, ["running", "running", "failed"]))
    seen: list[str] = []
    with api.client(clock=clock) as client:
        run = client.wait_job("j1", progress=lambda r: seen.append(r.state), poll_s=2)
    assert run.state == "failed"
    assert seen == ["running", "running", "failed"]
    assert {r.url.path for r in api.requests} == {"/api/v1/jobs/j1"}
    assert [float(r.url.params["wait"]) for r in api.requests] == [2.0] * 3


def test_wait_workflow_times_out_with_the_last_state() -> None:
    clock = ManualClock()
    api = Recorder(run_poll(clock, ["running"]))
    with api.client(clock=clock) as client, pytest.raises(WaitTimeout) as caught:
        client.wait_workflow("w1", timeout=45)
    assert "workflow w1 still running after 45s" in caught.value.detail
    assert caught.value.workflow is not None
    assert caught.value.workflow.state == "running"
    assert caught.value.task is None
    assert [r.url.params["wait"] for r in api.requests] == ["30.0", "15.0"]


async def test_async_client_runs_jobs_workflows_and_schedules() -> None:
    clock = ManualClock()
    polls = run_poll(clock, ["running", "completed"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/api/v1/workflows":
            return httpx.Response(201, json=run_doc("w1", kind="workflow"))
        if request.method == "POST":
            return httpx.Response(201, json=schedule_doc())
        if request.url.path == "/api/v1/schedules":
            return httpx.Response(200, json={"items": [schedule_doc()], "total": 1})
        if request.method == "DELETE":
            return httpx.Response(204)
        return polls(request)

    api = Recorder(handler)
    async with api.async_client(clock=clock) as client:
        run = await client.create_workflow({"tasks": [{"name": "a", "file": WASM}]})
        assert isinstance(run, Workflow)
        assert (await client.wait_workflow(run.id)).state == "completed"
        scheduled = await client.create_job({"tasks": [{"name": "a"}], "schedule": "@daily"})
        assert isinstance(scheduled, Schedule)
        assert (await client.schedules()).items[0].id == "s1"
        await client.delete_schedule("s1")
        assert isinstance(await client.schedule_task({"schedule": "@daily"}), Schedule)
    paths = [(r.method, r.url.path) for r in api.requests]
    assert paths == [
        ("POST", "/api/v1/workflows"),
        ("GET", "/api/v1/workflows/w1"),
        ("GET", "/api/v1/workflows/w1"),
        ("POST", "/api/v1/jobs"),
        ("GET", "/api/v1/schedules"),
        ("DELETE", "/api/v1/schedules/s1"),
        ("POST", "/api/v1/tasks"),
    ]


# --- several processes of one cluster ------------------------------------------------------


def test_the_client_follows_the_leader_a_standby_names() -> None:
    standby = {"X-Edgeplane-Role": "standby", "X-Edgeplane-Leader": "http://b.test"}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a.test":
            return httpx.Response(307, headers={**standby, "Location": "http://b.test/x"})
        return httpx.Response(200, json={"status": "ok"})

    api = Recorder(answer)
    with Client("http://a.test, http://c.test", "tok", transport=httpx.MockTransport(api)) as c:
        assert c.health() == {"status": "ok"}
        assert c.url == "http://b.test"
        assert c.urls == ["http://a.test", "http://c.test", "http://b.test"]
        assert c.health() == {"status": "ok"}  # stays with the leader
    assert [r.url.host for r in api.requests] == ["a.test", "b.test", "b.test"]
    assert all(r.headers["authorization"] == "Bearer tok" for r in api.requests)


def test_the_client_tries_the_next_url_only_when_nothing_was_sent() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a.test":
            raise httpx.ConnectError("refused", request=request)
        if request.url.host == "b.test":
            raise httpx.ReadTimeout("no answer", request=request)
        return httpx.Response(200, json={"status": "ok"})

    api = Recorder(answer)
    urls = "http://a.test,http://b.test,http://c.test"
    # a: never connected, so b is tried; b may have acted on it: not sent again
    with Client(urls, "t", transport=httpx.MockTransport(api)) as c, pytest.raises(Unavailable):
        c.health()
    assert [r.url.host for r in api.requests] == ["a.test", "b.test"]


def test_no_leader_anywhere_is_unavailable() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"X-Edgeplane-Role": "standby", "X-Edgeplane-Leader": ""}
        body = {"title": "No leader", "status": 503, "detail": "election"}
        return httpx.Response(503, json=body, headers=headers)

    api = Recorder(answer)
    transport = httpx.MockTransport(api)
    with (
        Client("http://a.test,http://b.test", "t", transport=transport) as c,
        pytest.raises(Unavailable, match="election"),
    ):
        c.health()
    assert [r.url.host for r in api.requests] == ["a.test", "b.test"]


async def test_the_async_client_follows_the_leader_too() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a.test":
            headers = {"X-Edgeplane-Role": "standby", "X-Edgeplane-Leader": "http://b.test"}
            return httpx.Response(307, headers={**headers, "Location": "http://b.test/"})
        return httpx.Response(200, json={"status": "ok"})

    api = Recorder(answer)
    transport = httpx.MockTransport(api)
    async with AsyncClient("http://a.test", "t", transport=transport) as c:
        assert await c.health() == {"status": "ok"}
        assert c.url == "http://b.test"


def busy(retry_after: str = "1") -> httpx.Response:
    """What a control plane holding ``max_held_answers`` answers open says to one more."""
    body = {"type": "about:blank", "title": "Busy", "status": 503, "detail": "held"}
    headers = {"Content-Type": "application/problem+json", "Retry-After": retry_after}
    return httpx.Response(503, content=json.dumps(body), headers=headers)


def test_a_busy_long_poll_waits_as_told_and_asks_again(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    answers = [busy("2"), busy("2")]
    polls = long_poll(clock, ["completed"])
    api = Recorder(lambda request: answers.pop(0) if answers else polls(request))
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    monkeypatch.setattr("edgeplane.client.time.sleep", sleep)
    with api.client(clock=clock) as client:
        assert client.wait("t1", timeout=100).state == "completed"
    assert slept == [2.0, 2.0] and len(api.requests) == 3
    # out of time while refused: the refusal, not a busy loop
    answers[:] = [busy("5")] * 10
    with api.client(clock=clock) as client, pytest.raises(Unavailable, match="held"):
        client.wait("t1", timeout=7)
    assert slept[2:] == [5.0, 2.0]


def test_only_a_busy_503_is_asked_again() -> None:
    api = Recorder(lambda request: problem(503, "store down"))
    with api.client(clock=ManualClock()) as client, pytest.raises(Unavailable, match="down"):
        client.wait("t1", timeout=100)
    assert len(api.requests) == 1
