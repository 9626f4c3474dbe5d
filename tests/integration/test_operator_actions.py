"""What an operator does to a running fleet, through the REST API and the CLI on a real
stack (MQTT, SQLite, host workers): pause and resume schedules (across a manager
restart), retry ended tasks, and find tasks among many with server-side filters and
cursor paging. The dashboard's buttons for the same: tests/browser."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner, Result

from edgeplane.cli.main import app as cli_app
from edgeplane.clock import SystemClock
from edgeplane.roles.up import Stack
from edgeplane.schedules import run_id
from stack_fixtures import TOKEN, start_stack

PROBLEM = "application/problem+json"
WAIT = {"wait": 30}


class FixedClock(SystemClock):
    """Wall-clock time held where the test puts it (a schedule's view of "now")."""

    def __init__(self, at: float) -> None:
        self.at = at

    def now(self) -> float:
        return self.at


@pytest.fixture
async def stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    async for pair in start_stack(
        tmp_path, fast_broker_url, f"sqlite:///{tmp_path / 'db.sqlite'}", unique_domain
    ):
        yield pair


def host(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "runtime": "host", "command": ["sh", "-c", script], **extra}


async def ended(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    created = await http.post("/tasks", params=WAIT, json={**body, "start": True})
    assert created.status_code == 201, created.text
    task: dict[str, Any] = created.json()
    assert task["state"] in ("completed", "failed"), task
    return task


def refused(response: httpx.Response, status: int, field: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["field"] == field, response.text
    assert "Traceback" not in response.text


# --- schedules ---------------------------------------------------------------------------

#: Slots an @hourly schedule paused at its first slot H has missed at H + 2.5 h: H, H+1h and
#: H+2h; which of them run on resume is its catch-up policy's call.
FIRED = {"none": [], "last": [2], "all": [0, 1, 2]}


@pytest.mark.parametrize("catch_up", sorted(FIRED))
async def test_a_paused_schedule_fires_nothing_across_a_restart_then_catches_up_on_resume(
    tmp_path: Path, fast_broker_url: str, unique_domain: str, catch_up: str
) -> None:
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    name = f"tick-{catch_up}"
    body = host(name, "true", schedule="@hourly", catch_up=catch_up)
    async for stack, http in start_stack(tmp_path, fast_broker_url, store, unique_domain):
        runner = stack.control.schedules
        clock = FixedClock(stack.control.manager.clock.now())
        runner.clock = clock  # (before it exists: no real slot can pass meanwhile)
        created = await http.post("/tasks", json=body)
        assert created.status_code == 201, created.text
        schedule = created.json()
        first = schedule["next_run"]
        paused = await http.post(f"/schedules/{schedule['id']}/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json()["paused"] is True
        again = await http.post(f"/schedules/{schedule['id']}/pause")  # no change, no error
        assert again.json()["paused"] is True and again.json()["next_run"] == first
        clock.at = first + 2.5 * 3600
        await runner.fire_due()
        assert (await http.get("/tasks", params={"name": name})).json()["total"] == 0

    # another manager process on the same store: still paused, still nothing fired
    async for stack, http in start_stack(tmp_path, fast_broker_url, store, unique_domain):
        runner = stack.control.schedules
        runner.clock = FixedClock(first + 2.5 * 3600)
        got = (await http.get(f"/schedules/{schedule['id']}")).json()
        assert (got["paused"], got["next_run"], got["runs"]) == (True, first, 0)
        await runner.fire_due()
        assert (await http.get("/tasks", params={"name": name})).json()["total"] == 0

        resumed = await http.post(f"/schedules/{schedule['id']}/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["paused"] is False
        await runner.fire_due()  # (or the schedule loop, woken by the resume, did it first)
        fired = (await http.get("/tasks", params={"name": name, "limit": 10})).json()
        wanted = [run_id(schedule["id"], first + n * 3600) for n in FIRED[catch_up]]
        assert sorted(t["id"] for t in fired["items"]) == sorted(wanted)
        now = (await http.get(f"/schedules/{schedule['id']}")).json()
        assert (now["paused"], now["next_run"], now["runs"]) == (
            False,
            first + 3 * 3600,
            len(wanted),
        )
        for task_id in wanted:
            done = (await http.get(f"/tasks/{task_id}", params=WAIT)).json()
            assert done["state"] == "completed" and done["schedule_id"] == schedule["id"]


async def test_pause_resume_and_get_refuse_what_is_not_there(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = stack
    for path in ("/schedules/nope/pause", "/schedules/nope/resume"):
        refused(await http.post(path), 404, "id")
    refused(await http.get("/schedules/nope"), 404, "id")
    created = (await http.post("/tasks", json=host("c", "true", schedule="@daily"))).json()
    assert (await http.delete(f"/schedules/{created['id']}")).status_code == 204
    refused(await http.post(f"/schedules/{created['id']}/resume"), 404, "id")


class WatchedLock(asyncio.Lock):
    """A lock that tells how many wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    async def acquire(self) -> bool:
        self.waiting += 1
        try:
            return await super().acquire()
        finally:
            self.waiting -= 1


async def test_a_schedule_deleted_or_paused_while_it_fires_stays_so(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    """A firing writes its schedule back (next run, runs): it must not undo a pause or
    bring back a deleted schedule that came while it was starting runs."""
    stack_, http = stack
    runner = stack_.control.schedules
    await runner.stop()  # its loop would fire too: here only the test's firing runs
    clock = FixedClock(stack_.control.manager.clock.now())
    runner.clock = clock
    lock = runner._changing = WatchedLock()  # what firings and changes take turns on
    paused = (await http.post("/tasks", json=host("p", "true", schedule="@hourly"))).json()
    deleted = (await http.post("/tasks", json=host("d", "true", schedule="@hourly"))).json()
    facade = runner.manager
    submit = facade.submit
    entered = asyncio.Event()
    release = asyncio.Event()

    async def held_submit(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await release.wait()
        return await submit(*args, **kwargs)

    facade.submit = held_submit  # type: ignore[method-assign]
    try:
        clock.at = paused["next_run"] + 60
        firing = asyncio.create_task(runner.fire_due())
        await entered.wait()  # the first schedule is starting its run
        pausing = asyncio.create_task(http.post(f"/schedules/{paused['id']}/pause"))
        deleting = asyncio.create_task(http.delete(f"/schedules/{deleted['id']}"))
        # both changes are made, or wait their turn, while the run is still starting
        while not (pausing.done() and deleting.done()) and lock.waiting < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        release.set()
        await firing
        assert (await pausing).status_code == 200
        assert (await deleting).status_code == 204
    finally:
        release.set()
        facade.submit = submit  # type: ignore[method-assign]
    await runner.fire_due()
    assert (await http.get(f"/schedules/{paused['id']}")).json()["paused"] is True
    assert (await http.get(f"/schedules/{deleted['id']}")).status_code == 404
    listed = (await http.get("/schedules")).json()
    assert [s["id"] for s in listed["items"]] == [paused["id"]]


# --- retry -------------------------------------------------------------------------------


async def test_retry_runs_an_ended_task_again_as_a_new_task(
    stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    _, http = stack
    gate = tmp_path / "gate"
    # passes only with the secret value itself and once the gate exists
    body = host(
        "flaky", f'test "$KEY" = s3cret && test -e {gate}', secret_env={"KEY": "s3cret"}, retries=0
    )
    failed = await ended(http, body)
    assert failed["state"] == "failed"
    gate.touch()
    retried = await http.post(f"/tasks/{failed['id']}/retry")
    assert retried.status_code == 201, retried.text
    copy = retried.json()
    assert copy["id"] != failed["id"] and copy["retry_of"] == failed["id"]
    assert (copy["name"], copy["command"], copy["started"]) == (
        "flaky",
        failed["command"],
        True,
    )
    assert copy["secret_env"] == {"KEY": "***"}
    done = (await http.get(f"/tasks/{copy['id']}", params=WAIT)).json()
    assert done["state"] == "completed", done  # ran with the secret the first one had
    old = (await http.get(f"/tasks/{failed['id']}")).json()
    assert (old["state"], old["exit_code"]) == ("failed", failed["exit_code"])
    # a completed task may run again too (and a retry of a retry names its own source)
    again = await http.post(f"/tasks/{copy['id']}/retry")
    assert again.status_code == 201 and again.json()["retry_of"] == copy["id"]
    retries = (await http.get("/tasks", params={"name": "flaky"})).json()
    assert retries["total"] == 3


async def test_retry_refuses_live_tasks_and_steps_of_runs(
    stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    _, http = stack
    gate = tmp_path / "release"
    running = (
        await http.post(
            "/tasks", json=host("slow", f"while [ ! -e {gate} ]; do sleep 0.05; done", start=True)
        )
    ).json()
    unstarted = (await http.post("/tasks", json=host("later", "true"))).json()
    for task in (running, unstarted):
        answer = await http.post(f"/tasks/{task['id']}/retry")
        refused(answer, 409, "id")
        assert "only an ended task" in answer.json()["detail"]
    gate.touch()
    assert (await http.get(f"/tasks/{running['id']}", params=WAIT)).json()["state"] == "completed"
    flow = await http.post("/workflows", json={"tasks": [host("step", "false")]})
    run = (await http.get(f"/workflows/{flow.json()['id']}", params=WAIT)).json()
    assert run["state"] == "failed"
    answer = await http.post(f"/tasks/{run['tasks'][0]['id']}/retry")
    refused(answer, 409, "id")
    assert "submit the workflow again" in answer.json()["detail"]
    refused(await http.post("/tasks/nope/retry"), 404, "id")
    listed = (await http.get("/tasks")).json()
    assert listed["total"] == 3  # nothing was made by the refused retries


# --- the task list -----------------------------------------------------------------------


async def test_the_task_list_filters_and_pages_on_the_server(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = stack
    names = ["etl-1", "etl-2", "etl-10", "train-a", "train-b", "ETL-upper", "xetl"]
    batch = await http.post(
        "/tasks/batch", json={"tasks": [host(n, "true", start=True) for n in names]}
    )
    assert batch.status_code == 201, batch.text
    flow = (await http.post("/workflows", json={"tasks": [host("wf-step", "false")]})).json()
    for task in batch.json()["items"]:
        await http.get(f"/tasks/{task['id']}", params=WAIT)
    await http.get(f"/workflows/{flow['id']}", params=WAIT)
    everything = (await http.get("/tasks")).json()
    assert everything["total"] == 8 and everything["next"] is None

    async def listed(**params: Any) -> dict[str, Any]:
        answer = await http.get("/tasks", params=params)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    etl = await listed(name="etl-")
    assert sorted(t["name"] for t in etl["items"]) == ["etl-1", "etl-10", "etl-2"]
    assert etl["total"] == 3
    assert (await listed(name="etl-1"))["total"] == 2  # etl-1 and etl-10: a prefix
    one = everything["items"][0]
    ran_there = [t for t in everything["items"] if t["worker_id"] == one["worker_id"]]
    by_worker = await listed(worker_id=one["worker_id"])
    assert [t["id"] for t in by_worker["items"]] == [t["id"] for t in ran_there]
    step = await listed(workflow_id=flow["id"], state="failed")
    assert [t["name"] for t in step["items"]] == ["wf-step"]
    assert (await listed(workflow_id=flow["id"], state="completed"))["total"] == 0
    assert (await listed(name="train", state="completed", worker_id="nobody"))["total"] == 0

    # cursor paging, newest first: every task once, in order, the total on every page
    seen: list[str] = []
    params: dict[str, Any] = {"order": "newest", "limit": 3}
    while True:
        page = await listed(**params)
        assert page["total"] == 8
        seen += [t["id"] for t in page["items"]]
        if page["next"] is None:
            break
        params["cursor"] = page["next"]
    assert seen == [t["id"] for t in everything["items"]][::-1]
    # the same filters on every page: the cursor keeps a position, not a query
    first = await listed(name="etl", limit=2)
    rest = await listed(name="etl", limit=2, cursor=first["next"])
    in_order = [t["name"] for t in everything["items"] if t["name"].startswith("etl")]
    assert [t["name"] for t in first["items"] + rest["items"]] == in_order
    assert rest["next"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "sleeping"}, "state"),
        ({"state": ""}, "state"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"order": "sideways"}, "order"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "x" * 5000}, "cursor"),
        ({"cursor": "WzEsImEiXQ", "offset": 5}, "cursor"),
        ({"name": "n" * 257}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"worker_id": "w" * 257}, "worker_id"),
    ],
)
async def test_bad_list_input_is_a_422_naming_the_field(
    stack: tuple[Stack, httpx.AsyncClient], params: dict[str, Any], field: str
) -> None:
    _, http = stack
    refused(await http.get("/tasks", params=params), 422, field)


# --- the CLI -----------------------------------------------------------------------------


async def test_the_cli_pauses_resumes_retries_and_filters(
    stack: tuple[Stack, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stack_, http = stack
    monkeypatch.setenv("EDGEPLANE_DATA_DIR", str(tmp_path / "cli"))
    for name in ("EDGEPLANE_TOKEN", "EDGEPLANE_ADMIN_TOKEN", "EDGEPLANE_URL", "EDGEPLANE_OUTPUT"):
        monkeypatch.delenv(name, raising=False)

    async def cli(*args: str) -> Result:
        given = ["--url", stack_.control.url, "--token", TOKEN]
        return await asyncio.to_thread(
            CliRunner().invoke, cli_app, [*given, *args], catch_exceptions=False
        )

    schedule = (
        await http.post("/tasks", json=host("nightly", "true", schedule="0 3 * * *"))
    ).json()
    paused = await cli("schedule", "pause", schedule["id"])
    assert paused.exit_code == 0, paused.output
    assert f"schedule {schedule['id']} paused" in paused.stderr
    assert (await http.get(f"/schedules/{schedule['id']}")).json()["paused"] is True
    table = await cli("schedule", "list")
    assert "paused" in table.stdout and schedule["id"] in table.stdout
    shown = await cli("schedule", "get", schedule["id"], "--output", "json")
    assert orjson.loads(shown.stdout)["paused"] is True
    resumed = await cli("schedule", "resume", schedule["id"])
    assert resumed.exit_code == 0 and "catch-up: last" in resumed.stderr
    assert (await http.get(f"/schedules/{schedule['id']}")).json()["paused"] is False
    assert (await cli("schedule", "pause", "nope")).exit_code == 2  # no such schedule

    failed = await ended(http, host("etl-1", "exit 3"))
    await ended(http, host("etl-2", "true"))
    await ended(http, host("train", "true"))
    retried = await cli("task", "retry", failed["id"])
    assert retried.exit_code == 0, retried.output
    new_id = retried.stdout.strip()
    assert f"task {new_id} retries {failed['id']}" in retried.stderr
    copy = (await http.get(f"/tasks/{new_id}", params=WAIT)).json()
    assert copy["retry_of"] == failed["id"] and copy["exit_code"] == 3
    busy = await http.post("/tasks", json=host("busy", "sleep 60", start=True))
    refused_retry = await cli("task", "retry", busy.json()["id"])
    assert refused_retry.exit_code == 1 and "only an ended task" in refused_retry.stderr
    await http.post(f"/tasks/{busy.json()['id']}/stop")

    listed = await cli("task", "list", "--name", "etl", "--output", "json")
    page = orjson.loads(listed.stdout)
    assert sorted(t["name"] for t in page["items"]) == ["etl-1", "etl-1", "etl-2"]
    worker = copy["worker_id"]
    mine = await cli("task", "list", "--worker", worker, "--output", "json")
    assert {t["worker_id"] for t in orjson.loads(mine.stdout)["items"]} == {worker}
    flow = (await http.post("/workflows", json={"tasks": [host("wf-step", "true")]})).json()
    steps = await cli("task", "list", "--workflow", flow["id"], "--output", "json")
    assert [t["name"] for t in orjson.loads(steps.stdout)["items"]] == ["wf-step"]
    newest = await cli("task", "list", "--name", "etl", "--newest", "--limit", "1")
    assert newest.exit_code == 0 and new_id in newest.stdout
    assert "--cursor" in newest.stderr  # how to go on
    cursor = newest.stderr.split("--cursor ")[1].split()[0]
    older = await cli(
        "task", "list", "--name", "etl", "--newest", "--cursor", cursor, "--output", "json"
    )
    assert len(orjson.loads(older.stdout)["items"]) == 2
    for bad in (
        ["--state", "sleeping"],
        ["--limit", "0"],
        ["--cursor", "junk"],
        ["--cursor", cursor, "--offset", "2"],
        ["--name", "n" * 300],
    ):
        refused_list = await cli("task", "list", *bad)
        assert refused_list.exit_code == 2, (bad, refused_list.output)
        assert "Traceback" not in refused_list.output
