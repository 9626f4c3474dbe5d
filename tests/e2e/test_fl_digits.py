"""Federated learning end to end: the digits example on 4 real workers running host tasks
(`python -m edgeplane.fl.client`), over the API, to ≥ 90 % test accuracy; a bad update
from a live client credential is refused with its reason and counted."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane import safeyaml
from edgeplane.fl import updates
from edgeplane.roles.up import Stack
from stack_fixtures import start_stack

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


async def test_digits_reach_90_percent_on_four_workers(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = stack
    await wait_until_workers(http, 4)
    created = await http.post("/fl/experiments", json=experiment(3))
    assert created.status_code == 201, created.text
    exp_id = created.json()["id"]

    async def done() -> bool:
        got = (await http.get(f"/fl/experiments/{exp_id}")).json()
        return bool(got["state"] != "running")

    await until(done, "the experiment ends", timeout=150)
    got = (await http.get(f"/fl/experiments/{exp_id}")).json()
    assert got["state"] == "completed", got
    closed = [r for r in got["rounds"] if r["state"] == "closed"]
    assert [r["round"] for r in closed] == [1, 2, 3]
    assert all(r["updates"] >= 3 for r in closed)
    assert closed[-1]["metrics"]["accuracy"] >= 0.9, got
    assert got["model_version"] == 3

    model = await http.get(f"/fl/experiments/{exp_id}/model", params={"version": 3})
    assert model.status_code == 200
    assert updates.decode(model.content).arrays["w"].shape == (64, 10)
    missing = await http.get(f"/fl/experiments/{exp_id}/model", params={"version": 9})
    assert missing.status_code == 404


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

    await until(online, f"{n} workers online", timeout=30)


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    """Poll ``condition`` (the API) until it holds; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)
