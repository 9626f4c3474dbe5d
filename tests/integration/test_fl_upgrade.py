"""A manager upgraded in place keeps its experiments: the model versions a manager before
the store held them left in ``DATA_DIR/fl/blobs`` are served, and copied into the store,
by the new one; a damaged file there stops nothing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgeplane.roles.up import Stack
from stack_fixtures import start_stack

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120)]

pytest.importorskip("sklearn")

WAIT_S = 60.0


def npz(arrays: dict[str, Any]) -> str:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return base64.b64encode(buf.getvalue()).decode()


async def test_the_blobs_of_an_old_data_dir_are_served_and_copied_into_the_store(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    given = {"w": np.arange(640, dtype=np.float32).reshape(64, 10), "b": np.ones(10, np.float32)}

    def running() -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
        return start_stack(tmp_path, fast_broker_url, store, unique_domain)

    first = running()
    _, http = await anext(first)
    body = {
        "name": "old",
        "workload": {"runtime": "host", "command": ["sleep", "120"]},
        "rounds": 1,
        "clients_per_round": 2,
        "min_clients": 2,
        "initial_model": {"data": npz(given)},
    }
    made = await http.post("/fl/experiments", json=body)
    assert made.status_code == 201, made.text
    exp_id = made.json()["id"]
    model = (await http.get(f"/fl/experiments/{exp_id}/model", params={"version": 0})).content
    assert (await http.post(f"/fl/experiments/{exp_id}/stop")).status_code == 200
    await first.aclose()

    # what a manager before the store held the blobs left: the blob in the data
    # directory, none in the store; beside it a file whose bytes are not its name's
    digest = hashlib.sha256(model).hexdigest()
    blobs = tmp_path / "fl" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / digest).write_bytes(model)
    damaged = hashlib.sha256(b"was").hexdigest()
    (blobs / damaged).write_bytes(b"is")
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        assert db.execute("DELETE FROM fl_blobs").rowcount >= 1

    again = running()
    stack, http = await anext(again)
    try:
        store_of = stack.control.store
        async with asyncio.timeout(WAIT_S):  # copied in the background when it starts
            while await store_of.missing_fl_blobs([f"sha256:{digest}"]):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert await store_of.get_fl_blob(f"sha256:{digest}") == model
        assert await store_of.missing_fl_blobs([f"sha256:{damaged}"]) == {f"sha256:{damaged}"}
        got = await http.get(f"/fl/experiments/{exp_id}/model", params={"version": 0})
        assert got.status_code == 200 and got.content == model
        assert (await http.get(f"/fl/experiments/{exp_id}")).json()["state"] == "stopped"
    finally:
        await again.aclose()
    # the directory is read, never written: it is the operator's to delete
    assert sorted(p.name for p in blobs.iterdir()) == sorted([digest, damaged])
