"""Federated learning through the clients and the CLI, against a real API: every FL call
of both clients; an initial model given by the user (bytes, a file beside the experiment
file, another experiment's version) becoming version 0, and updates of another shape
than it refused with the reason."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgeplane.client import AsyncClient, Client
from edgeplane.fl import tokens, updates
from edgeplane.fl.model import initial
from edgeplane.roles.up import Stack
from stack_fixtures import TOKEN, start_stack

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120)]

pytest.importorskip("sklearn")

SRC = Path(__file__).parents[2] / "src"
WAIT_S = 60.0
SLEEP = {"runtime": "host", "command": ["sleep", "120"]}


@pytest.fixture
async def stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for pair in start_stack(tmp_path, fast_broker_url, store, unique_domain):
        yield pair


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not await condition():  # noqa: ASYNC110 -- the API has nothing to wait on
            await asyncio.sleep(0.1)


def spec(workload: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "name": "given",
        "workload": workload,
        "rounds": 1,
        "clients_per_round": 2,
        "min_clients": 2,
        **fields,
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def trained() -> dict[str, np.ndarray]:
    """A model that is not the default zeros."""
    rng = np.random.default_rng(7)
    return {name: rng.normal(size=a.shape).astype(np.float32) for name, a in initial().items()}


def npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # numpy's own .npz, no edgeplane header
    return buf.getvalue()


def same(body: bytes, arrays: dict[str, np.ndarray]) -> bool:
    got = updates.decode(body).arrays
    return set(got) == set(arrays) and all(np.array_equal(got[n], arrays[n]) for n in arrays)


async def test_every_fl_call_of_the_async_and_sync_clients(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    running, _ = stack
    given = trained()
    async with AsyncClient(running.control.url, TOKEN) as client:
        first = await client.fl_create(spec(SLEEP, initial_model=npz(given)))
        assert first["model_version"] == 0
        assert first["initial_model"]["source"] == "upload"
        assert "initial_model" not in first["spec"] or first["spec"]["initial_model"] is None
        assert same(await client.fl_model(first["id"], 0), given)
        assert same(await client.fl_model(first["id"]), given)  # the newest
        # another experiment's version: the same bytes, not a copy
        second = await client.fl_create(
            spec(SLEEP, name="again", initial_model={"experiment": first["id"], "version": 0})
        )
        assert second["initial_model"] == {
            "source": "experiment",
            "experiment": first["id"],
            "version": 0,
        }
        assert same(await client.fl_model(second["id"], 0), given)
        page = await client.fl_experiments(limit=1, offset=1)
        assert page["total"] == 2 and [e["id"] for e in page["items"]] == [second["id"]]
        assert (await client.fl_experiment(first["id"]))["name"] == "given"
        assert (await client.fl_stop(first["id"]))["state"] == "stopped"
        assert (await client.fl_stop(second["id"]))["state"] == "stopped"

    def sync_calls() -> None:
        with Client(running.control.url, TOKEN) as client:
            raw = updates.encode_raw(given)
            made = client.fl_create(spec(SLEEP, name="sync", initial_model=raw))
            assert same(client.fl_model(made["id"], 0), given)
            assert client.fl_experiments()["total"] == 3
            assert client.fl_experiment(made["id"])["initial_model"]["bytes"] == len(raw)
            assert client.fl_stop(made["id"])["state"] == "stopped"

    await asyncio.to_thread(sync_calls)


async def test_updates_not_of_the_initial_models_shape_are_refused(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    running, http = stack
    mine = {**trained(), "extra": np.ones(3, np.float32)}
    created = await http.post(
        "/fl/experiments",
        json=spec(SLEEP, initial_model={"data": _b64(updates.encode_npz(mine))}),
    )
    assert created.status_code == 201, created.text
    exp_id = created.json()["id"]
    store = running.control.store

    async def opened() -> bool:
        exp = await store.get_fl_experiment(exp_id)
        return exp is not None and bool(exp.rounds)

    await until(opened, "round 1 opens")
    exp = await store.get_fl_experiment(exp_id)
    assert exp is not None
    worker = exp.rounds[0].clients[0]
    task_id = exp.rounds[0].tasks[worker]

    async def running_task() -> bool:
        return bool((await http.get(f"/tasks/{task_id}")).json()["state"] == "running")

    await until(running_task, "the client task runs")
    grant = tokens.Grant(exp_id, 1, worker, task_id)
    auth = {"Authorization": f"Bearer {tokens.issue(bytes.fromhex(exp.secret), grant)}"}
    url = f"/fl/experiments/{exp_id}/rounds/1/updates"
    digits = updates.encode_raw(trained(), num_samples=5)  # the example client's shape
    got = await http.post(url, content=digits, headers=auth)
    assert got.status_code == 422
    assert got.json()["reason"] == "shape" and "missing ['extra']" in got.json()["detail"]
    fits = updates.encode_raw(mine, num_samples=5)
    assert (await http.post(url, content=fits, headers=auth)).status_code == 202
    await http.post(f"/fl/experiments/{exp_id}/stop")


async def test_the_example_client_says_when_the_model_is_not_its_own(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = stack
    small = {"w": np.zeros((32, 10), np.float32), "b": np.zeros(10, np.float32)}
    workload = {
        "runtime": "host",
        "command": [sys.executable, "-m", "edgeplane.fl.client"],
        "env": {"PYTHONPATH": str(SRC), "PATH": os.environ.get("PATH", "")},
    }
    body = spec(workload, initial_model={"data": _b64(npz(small))})
    exp_id = (await http.post("/fl/experiments", json=body)).json()["id"]
    ran: list[dict[str, Any]] = []

    async def clients_ended() -> bool:
        tasks = (await http.get("/tasks", params={"limit": 10})).json()["items"]
        ran[:] = [t for t in tasks if t["name"] == "fl-given"]
        return len(ran) == 2 and all(t["state"] in ("completed", "failed") for t in ran)

    await until(clients_ended, "both clients end")
    assert all(t["state"] == "failed" and t["exit_code"] == 2 for t in ran), ran
    assert all("does not fit" in t.get("stderr", "") for t in ran), ran
    got = (await http.get(f"/fl/experiments/{exp_id}")).json()
    assert got["rounds"][0]["updates"] == 0
    await http.post(f"/fl/experiments/{exp_id}/stop")


@pytest.mark.parametrize(
    ("initial_model", "field"),
    [
        ({"data": "not base64!"}, "initial_model.data"),
        ({"data": "Z2FyYmFnZQ=="}, "initial_model.data"),  # base64 of "garbage"
        ({"experiment": "no-such-one"}, "initial_model.experiment"),
        ({"data": "AAAA", "experiment": "x"}, "initial_model"),
        ("a-path.npz", "initial_model"),  # a path is the CLI's to read
    ],
)
async def test_a_bad_initial_model_is_a_422_naming_the_field(
    stack: tuple[Stack, httpx.AsyncClient], initial_model: Any, field: str
) -> None:
    _, http = stack
    got = await http.post("/fl/experiments", json=spec(SLEEP, initial_model=initial_model))
    assert got.status_code == 422, got.text
    assert got.headers["content-type"].startswith("application/problem+json")
    assert got.json()["field"] == field, got.json()


async def test_nan_and_missing_versions_are_refused(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = stack
    nan = {"w": np.array([1.0, np.nan], np.float32)}
    got = await http.post(
        "/fl/experiments", json=spec(SLEEP, initial_model={"data": _b64(npz(nan))})
    )
    assert got.status_code == 422 and got.json()["field"] == "initial_model.data"
    assert "NaN" in got.json()["detail"]
    first = (await http.post("/fl/experiments", json=spec(SLEEP))).json()
    got = await http.post(
        "/fl/experiments",
        json=spec(SLEEP, initial_model={"experiment": first["id"], "version": 4}),
    )
    assert got.status_code == 422 and got.json()["field"] == "initial_model.version"
    await http.post(f"/fl/experiments/{first['id']}/stop")


async def test_the_cli_reads_the_initial_model_beside_the_experiment_file(
    stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    running, http = stack
    folder = tmp_path / "exp"
    folder.mkdir()
    given = trained()
    (folder / "start.npz").write_bytes(npz(given))
    (folder / "exp.yaml").write_text(
        "name: cli\n"
        "workload: {runtime: host, command: [sleep, '120']}\n"
        "rounds: 1\nclients_per_round: 2\nmin_clients: 2\n"
        "initial_model: start.npz\n"
    )
    cli = [sys.executable, "-m", "edgeplane", "--url", running.control.url, "--token", TOKEN]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    done = await asyncio.to_thread(
        subprocess.run,
        [*cli, "fl", "run", str(folder / "exp.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=elsewhere,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    exp_id = done.stdout.strip()
    model = await http.get(f"/fl/experiments/{exp_id}/model", params={"version": 0})
    assert same(model.content, given)
    await http.post(f"/fl/experiments/{exp_id}/stop")

    (folder / "exp.yaml").write_text(
        (folder / "exp.yaml").read_text().replace("start.npz", "missing.npz")
    )
    bad = await asyncio.to_thread(
        subprocess.run,
        [*cli, "fl", "run", str(folder / "exp.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=elsewhere,
        timeout=60,
    )
    assert bad.returncode == 2, bad.stderr
    assert "missing.npz" in bad.stderr and "Traceback" not in bad.stderr


async def test_an_ended_experiment_is_deleted_with_the_blobs_only_it_references(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    """A running experiment is not deleted (409 naming state); an ended one is, through
    the CLI and the API, with its blobs, but not a blob another experiment still uses."""
    running, http = stack
    given = trained()
    first = await http.post(
        "/fl/experiments", json=spec(SLEEP, initial_model={"data": _b64(npz(given))})
    )
    first_id = first.json()["id"]
    second = await http.post(
        "/fl/experiments",
        json=spec(SLEEP, name="again", initial_model={"experiment": first_id, "version": 0}),
    )
    second_id = second.json()["id"]
    digest = updates.encode_raw(given)
    ref = "sha256:" + hashlib.sha256(digest).hexdigest()
    assert await running.control.store.get_fl_blob(ref) == digest

    refused = await http.delete(f"/fl/experiments/{first_id}")
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["field"] == "state"
    await http.post(f"/fl/experiments/{first_id}/stop")
    cli = [sys.executable, "-m", "edgeplane", "--url", running.control.url, "--token", TOKEN]
    done = await asyncio.to_thread(
        subprocess.run,
        [*cli, "fl", "delete", first_id],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (await http.get(f"/fl/experiments/{first_id}")).status_code == 404
    assert (await http.delete(f"/fl/experiments/{first_id}")).status_code == 404
    # the other experiment's version 0 is the same blob: kept
    kept = await http.get(f"/fl/experiments/{second_id}/model", params={"version": 0})
    assert kept.status_code == 200 and same(kept.content, given)

    await http.post(f"/fl/experiments/{second_id}/stop")
    assert (await http.delete(f"/fl/experiments/{second_id}")).status_code == 204
    assert await running.control.store.get_fl_blob(ref) is None


async def test_a_round_stored_without_its_tasks_gets_them_after_a_restart(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    """A manager killed after it stored a round and before it submitted the round's tasks:
    started again, it starts them (with the ids on record)."""
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    first = start_stack(tmp_path, fast_broker_url, store, unique_domain)
    running, http = await first.__anext__()
    try:
        exp_id = (await http.post("/fl/experiments", json=spec(SLEEP))).json()["id"]

        async def opened() -> bool:
            exp = await running.control.store.get_fl_experiment(exp_id)
            return exp is not None and bool(exp.rounds)

        await until(opened, "round 1 opens")
        exp = await running.control.store.get_fl_experiment(exp_id)
        assert exp is not None
        # as if the tasks had never been submitted: the round names tasks nobody has
        never = {worker: f"never-{worker}" for worker in exp.rounds[0].clients}
        exp.rounds[0].tasks = never
        await running.control.store.save_fl_experiment(exp)
    finally:
        await first.aclose()

    second = start_stack(tmp_path, fast_broker_url, store, unique_domain)
    _, http = await second.__anext__()
    try:

        async def started() -> bool:
            states = [(await http.get(f"/tasks/{t}")).status_code for t in never.values()]
            return states == [200] * len(never)

        await until(started, "the round's tasks are started")
        for task_id in never.values():
            task = (await http.get(f"/tasks/{task_id}")).json()
            assert task["name"] == "fl-given" and task["metadata"]["fl_experiment"] == "given"
        await http.post(f"/fl/experiments/{exp_id}/stop")
    finally:
        await second.aclose()


async def test_a_blob_no_document_names_is_pruned_when_the_manager_starts(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    """What a put before a failed referencing write leaves (an update's, a version's): a
    blob in the store that no experiment names. The next start's full prune deletes it;
    an experiment's versions stay."""
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    first = start_stack(tmp_path, fast_broker_url, store, unique_domain)
    running, http = await first.__anext__()
    try:
        created = await http.post("/fl/experiments", json=spec(SLEEP))
        exp_id = created.json()["id"]
        await http.post(f"/fl/experiments/{exp_id}/stop")
        orphan = b"an update whose write failed"
        orphan_ref = "sha256:" + hashlib.sha256(orphan).hexdigest()
        await running.control.store.put_fl_blob(orphan_ref, orphan)
        exp = await running.control.store.get_fl_experiment(exp_id)
        assert exp is not None
        version_0 = exp.versions[0]
    finally:
        await first.aclose()

    second = start_stack(tmp_path, fast_broker_url, store, unique_domain)
    running, http = await second.__anext__()
    try:

        async def pruned() -> bool:
            return await running.control.store.get_fl_blob(orphan_ref) is None

        await until(pruned, "the blob no document names is pruned")
        assert await running.control.store.get_fl_blob(version_0) is not None
        model = await http.get(f"/fl/experiments/{exp_id}/model", params={"version": 0})
        assert model.status_code == 200
    finally:
        await second.aclose()
