"""Federated learning end to end: the digits example on 4 real workers running host tasks
(`python -m edgeplane.fl.client`), over the API, to ≥ 90 % test accuracy; a bad update
from a live client credential is refused with its reason and counted."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane import safeyaml
from edgeplane.fl import updates
from edgeplane.roles.up import Stack
from stack_fixtures import TOKEN, start_stack

pytestmark = pytest.mark.timeout(180)

pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).parents[2] / "examples" / "fl" / "digits.yaml"
SRC = Path(__file__).parents[2] / "src"


@pytest.fixture
async def stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for pair in start_stack(tmp_path, fast_broker_url, store, unique_domain, workers=4):
        yield pair


def experiment(rounds: int) -> dict[str, Any]:
    spec: dict[str, Any] = safeyaml.load(EXAMPLE.read_text())
    # this interpreter (the test venv's), this tree's code
    spec["workload"]["command"] = [sys.executable, "-m", "edgeplane.fl.client"]
    spec["workload"]["env"] = {"PYTHONPATH": str(SRC), "PATH": os.environ.get("PATH", "")}
    spec["rounds"] = rounds
    return spec


@pytest.mark.parametrize("client_tasks", ["persistent", "per_round"])
async def test_digits_reach_90_percent_on_four_workers(
    stack: tuple[Stack, httpx.AsyncClient], client_tasks: str, tmp_path: Path
) -> None:
    running, http = stack
    await wait_until_workers(http, 4)
    spec = experiment(3)
    spec["client_tasks"] = client_tasks
    created = await http.post("/fl/experiments", json=spec)
    assert created.status_code == 201, created.text
    exp_id = created.json()["id"]

    async def done() -> bool:
        got = (await http.get(f"/fl/experiments/{exp_id}")).json()
        return bool(got["state"] != "running")

    await until(done, "the experiment ends", timeout_s=150)
    got = (await http.get(f"/fl/experiments/{exp_id}")).json()
    assert got["state"] == "completed", got
    closed = [r for r in got["rounds"] if r["state"] == "closed"]
    assert [r["round"] for r in closed] == [1, 2, 3]
    assert all(r["updates"] >= 3 for r in closed)
    assert closed[-1]["metrics"]["accuracy"] >= 0.9, got
    assert got["model_version"] == 3
    # each round's moments, in order, and the next round handed out after the last closed
    # (what bench/fl.py reads as the coordinator's share of a round)
    moments = [(r["opened_at"], r["last_update_at"], r["closed_at"]) for r in closed]
    assert all(None not in m and m[0] <= m[1] <= m[2] for m in moments), moments
    assert all(a[2] <= b[0] for a, b in itertools.pairwise(moments)), moments
    assert all(sorted(r["tasks"]) == sorted(r["clients"]) for r in closed), closed
    if client_tasks == "persistent":
        # one client task per worker for the whole experiment, each ending on its own
        # (exit 0) once told the experiment completed
        assert closed[0]["tasks"] == closed[1]["tasks"] == closed[2]["tasks"], closed
        for task_id in closed[0]["tasks"].values():

            async def ended(task_id: str = task_id) -> bool:
                got = (await http.get(f"/tasks/{task_id}")).json()
                return bool(got["state"] not in ("pending", "scheduled", "running"))

            await until(ended, "a client task ends on its own", timeout_s=20)
            task = (await http.get(f"/tasks/{task_id}")).json()
            assert (task["state"], task["exit_code"]) == ("completed", 0), task
    else:
        task = (await http.get(f"/tasks/{closed[0]['tasks'][closed[0]['clients'][0]]}")).json()
        assert task["state"] in ("completed", "cancelled", "failed"), task
        assert len({t for r in closed for t in r["tasks"].values()}) == 3 * 4

    model = await http.get(f"/fl/experiments/{exp_id}/model", params={"version": 3})
    assert model.status_code == 200
    assert updates.decode(model.content).arrays["w"].shape == (64, 10)
    missing = await http.get(f"/fl/experiments/{exp_id}/model", params={"version": 9})
    assert missing.status_code == 404

    # the store keeps the model versions and nothing else: each round's 3-4 updates were
    # pruned once its version was stored
    stored = await running.control.store.get_fl_experiment(exp_id)
    assert stored is not None
    versions = set(stored.versions)
    every_update = {d for r in stored.rounds for d in r.update_refs.values()}
    assert len(every_update - versions) >= 3 * 3

    async def pruned() -> bool:
        return blob_digests(tmp_path / "db.sqlite") == versions

    await until(pruned, "the updates' blobs are pruned", timeout_s=30)
    for v in range(4):  # every version still downloads
        got = await http.get(f"/fl/experiments/{exp_id}/model", params={"version": v})
        assert got.status_code == 200
    # and a deleted experiment leaves no blob at all
    assert (await http.delete(f"/fl/experiments/{exp_id}")).status_code == 204
    assert blob_digests(tmp_path / "db.sqlite") == set()


def blob_digests(db: Path) -> set[str]:
    """The digests the store holds, read straight from its database file."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {row[0] for row in conn.execute("SELECT digest FROM fl_blobs")}


async def test_a_closed_round_opens_the_next_at_once_not_at_the_next_tick(
    stack: tuple[Stack, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the coordinator's idle tick an hour long, the experiment still goes round
    after round: the pass that closes a round opens the next (it used to wait for the
    tick, half a second of every round), and the update that completes a round wakes the
    pass that closes it."""
    from edgeplane.fl import coordinator

    monkeypatch.setattr(coordinator, "TICK_S", 3600.0)
    _, http = stack
    await wait_until_workers(http, 4)
    created = await http.post("/fl/experiments", json=experiment(2))
    assert created.status_code == 201, created.text
    exp_id = created.json()["id"]

    async def done() -> bool:
        got = (await http.get(f"/fl/experiments/{exp_id}")).json()
        return bool(got["state"] != "running")

    await until(done, "the experiment ends without waiting for a tick", timeout_s=120)
    got = (await http.get(f"/fl/experiments/{exp_id}")).json()
    assert got["state"] == "completed", got
    assert got["model_version"] == 2


async def test_cli_runs_the_example_to_completion(
    stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    running, http = stack
    await wait_until_workers(http, 4)
    spec = experiment(2)
    spec["hyperparams"] = {"lr": 0.5, "epochs": 5}
    path = tmp_path / "digits.json"  # JSON is YAML: the CLI reads either
    import orjson

    path.write_bytes(orjson.dumps(spec))
    cli = [sys.executable, "-m", "edgeplane", "--url", running.control.url, "--token", TOKEN, "fl"]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = await asyncio.to_thread(
        subprocess.run,
        [*cli, "run", str(path), "--wait"],
        capture_output=True,
        text=True,
        env=env,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("completed: model version 2, accuracy 0.9"), done.stdout
    listed = await asyncio.to_thread(
        subprocess.run,
        [*cli, "list", "--output", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    exp_id = orjson.loads(listed.stdout)["items"][0]["id"]
    out = tmp_path / "v1.f32"
    saved = await asyncio.to_thread(
        subprocess.run,
        [*cli, "model", exp_id, "--version", "1", "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert saved.returncode == 0, saved.stderr
    assert updates.decode(out.read_bytes()).arrays["b"].shape == (10,)
    bad = await asyncio.to_thread(
        subprocess.run,
        [*cli, "model", exp_id, "--version", "7", "-o", str(out)],
        capture_output=True,
        env=env,
        timeout=30,
    )
    assert bad.returncode == 2


async def test_bad_input_is_refused_with_the_field(stack: tuple[Stack, httpx.AsyncClient]) -> None:
    _, http = stack
    bad = experiment(1)
    bad["min_clients"] = 9
    got = await http.post("/fl/experiments", json=bad)
    assert got.status_code == 422 and got.headers["content-type"].startswith("application/problem")
    forged = await http.post(
        "/fl/experiments/x/rounds/1/updates",
        content=b"{}\n",
        headers={"Authorization": "Bearer fl1.e30.AAAA"},
    )
    assert forged.status_code in (401, 404)


async def wait_until_workers(http: httpx.AsyncClient, n: int) -> None:
    async def online() -> bool:
        got = (await http.get("/workers")).json()
        items = got["items"] if isinstance(got, dict) else got
        return sum(1 for w in items if w.get("state", "online") == "online") >= n

    await until(online, f"{n} workers online", timeout_s=30)


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float) -> None:
    """Poll ``condition`` (the API: nothing to wait on but its answers) until it holds."""
    for _ in range(int(timeout_s / 0.1)):
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def test_a_restarted_manager_goes_on_with_the_experiment(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    """The whole stack (manager and workers) stops after round 1 and starts again on the
    same store and data directory: the experiment goes on from the version it had."""
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    first = start_stack(tmp_path, fast_broker_url, store, unique_domain, workers=4)
    _, http = await first.__anext__()
    try:
        await wait_until_workers(http, 4)
        spec = experiment(3)
        spec["round_timeout_s"] = 5  # a round the stop cut short is retried soon
        exp_id = (await http.post("/fl/experiments", json=spec)).json()["id"]

        async def one_version() -> bool:
            return bool((await http.get(f"/fl/experiments/{exp_id}")).json()["model_version"] >= 1)

        await until(one_version, "round 1 closes", timeout_s=60)
    finally:
        await first.aclose()

    second = start_stack(tmp_path, fast_broker_url, store, unique_domain, workers=4)
    _, http = await second.__anext__()
    try:

        async def done() -> bool:
            return bool((await http.get(f"/fl/experiments/{exp_id}")).json()["state"] != "running")

        await until(done, "the experiment ends after the restart", timeout_s=120)
        got = (await http.get(f"/fl/experiments/{exp_id}")).json()
        assert got["state"] == "completed", got
        assert got["model_version"] == 3
        assert [r["round"] for r in got["rounds"] if r["state"] == "closed"] == [1, 2, 3]
        assert got["rounds"][-1]["metrics"]["accuracy"] >= 0.9
    finally:
        await second.aclose()


async def test_bad_updates_are_rejected_with_their_reason_and_counted(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    """Clients that only wait (their tasks stay live, so their credentials hold); the test
    posts for them, with credentials made from the stored experiment's key."""
    import numpy as np

    from edgeplane.fl import tokens
    from edgeplane.fl.model import initial

    running, http = stack
    await wait_until_workers(http, 4)
    spec = experiment(1)
    spec["workload"] = {"runtime": "host", "command": ["sleep", "60"]}
    spec["round_timeout_s"] = 120
    exp_id = (await http.post("/fl/experiments", json=spec)).json()["id"]
    store = running.control.store

    async def opened() -> bool:
        exp = await store.get_fl_experiment(exp_id)
        return exp is not None and bool(exp.rounds)

    await until(opened, "round 1 opens", timeout_s=30)
    exp = await store.get_fl_experiment(exp_id)
    assert exp is not None
    record = exp.rounds[0]
    secret = bytes.fromhex(exp.secret)
    url = f"/fl/experiments/{exp_id}/rounds/1/updates"

    def token(worker: str, task: str) -> dict[str, str]:
        grant = tokens.Grant(exp_id, 1, worker, task)
        return {"Authorization": f"Bearer {tokens.issue(secret, grant)}"}

    async def task_live(task_id: str) -> bool:
        return bool((await http.get(f"/tasks/{task_id}")).json()["state"] == "running")

    w1, w2 = record.clients[:2]
    await until(lambda: task_live(record.tasks[w1]), "a client task runs", timeout_s=30)
    good = updates.encode_raw(initial(), num_samples=10)
    nan = initial()
    nan["w"][0, 0] = np.nan
    cases = [
        (token(w1, record.tasks[w1]), good, 202, None),
        (token(w1, record.tasks[w1]), good, 422, "duplicate"),
        (token("not-selected", record.tasks[w1]), good, 422, "unselected"),
        (token(w2, record.tasks[w2]), updates.encode_raw({"w": np.zeros(3)}), 422, "shape"),
        (token(w2, record.tasks[w2]), updates.encode_raw(nan, num_samples=1), 422, "nonfinite"),
        (token(w2, record.tasks[w2]), b"garbage", 422, "malformed"),
    ]
    for headers, body, status, reason in cases:
        got = await http.post(url, content=body, headers=headers)
        assert got.status_code == status, (reason, got.text)
        if reason is not None:
            assert got.json()["reason"] == reason, got.json()
    forged = {"Authorization": token(w2, record.tasks[w2])["Authorization"][:-4] + "AAAA"}
    assert (await http.post(url, content=good, headers=forged)).status_code == 401

    await http.post(f"/fl/experiments/{exp_id}/stop")
    got = (await http.get(f"/fl/experiments/{exp_id}")).json()
    assert got["state"] == "stopped"
    assert got["rounds"][0]["rejected"] == {
        "duplicate": 1,
        "unselected": 1,
        "shape": 1,
        "nonfinite": 1,
        "malformed": 1,
    }

    async def ended() -> bool:
        return not await task_live(record.tasks[w2])

    await until(ended, "the round's tasks are cancelled", timeout_s=30)
    late = await http.post(url, content=good, headers=token(w2, record.tasks[w2]))
    assert late.status_code == 401  # the credential expired with its task
