"""A node records what happens to its chutes as events for its manager, in order: a
snapshot at start, services started, a change done or failed, a chute unhealthy and
restarted, a service that exits or is OOM-killed on its own, a chute deleted
(``chutes/events.py``; real runc containers)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_chute_health import HTTPD, until

from edgeplane.chutes import manifest
from edgeplane.chutes.node import Node
from edgeplane.protocol import ChuteEvent
from edgeplane.runtimes.container import find_runc
from oci_fixtures import busybox_containers_unavailable, images_with_busybox

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
    ),
]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    images = images_with_busybox(tmp_path / "images")
    found = Node(
        tmp_path / "worker",
        images,
        grace_s=0.3,
        settle_s=0.5,
        healthy_within_s=10,
        restart_backoff_s=0,
        exit_check_s=0.2,
    )
    await found.start()
    try:
        yield found
    finally:
        for name in found.names():
            await asyncio.wait_for(found.changes.wait((await found.act(name, "delete")).id), 30)
        await found.close()


def held(node: Node, chute: str | None = None) -> list[ChuteEvent]:
    """The events the node holds for its manager (none is acked here)."""
    batch = node.events.batch("w", limit=1000)
    events = [] if batch is None else batch.events
    return [e for e in events if chute is None or e.chute == chute]


def kinds(node: Node, chute: str) -> list[str]:
    return [e.kind for e in held(node, chute)]


def one(chute: str = "ev", resources: dict[str, Any] | None = None, **service: Any) -> Any:
    return manifest.parse(
        {
            "name": chute,
            "version": "1",
            "services": [{"name": "main", "image": "busybox", **service}],
            "resources": resources or {},
        }
    )


async def ended(node: Node, change_id: str) -> Any:
    """The change once it ended and its end is told (right after it ends)."""
    change = await asyncio.wait_for(node.changes.wait(change_id), 30)

    async def told() -> bool:
        return any(e.change_id == change_id and e.kind in ENDS for e in held(node))

    await until(f"the end of change {change_id} to be told", told)
    return change


ENDS = ("change_done", "change_failed", "deleted")


async def done(node: Node, change_id: str) -> None:
    change = await ended(node, change_id)
    assert change.state == "done", change


async def test_a_chutes_life_is_told_in_order(node: Node) -> None:
    first = held(node)[0]
    assert first.seq == 1 and first.kind == "snapshot" and first.chutes == []

    chute = one(
        command=["sh", "-c", HTTPD],
        healthcheck={"http": {"port": 8080, "path": "/index.html"}, "interval_s": 0.2,
                     "timeout_s": 1, "retries": 2},
    )  # fmt: skip
    installed = await node.install(chute)
    await done(node, installed.id)
    assert kinds(node, "ev") == ["started", "change_done"]
    started, finished = held(node, "ev")
    assert started.service == "main" and started.change_id == installed.id
    assert finished.change_id == installed.id and finished.status is not None
    assert finished.status["state"] == "running"

    # the health page goes: unhealthy, and the node restarts the chute
    status = await node.status("ev")
    runc = find_runc()
    assert runc is not None
    argv = [runc, "--root", str(node.state_dir), "exec", status["services"][0]["container"],
            "rm", "/tmp/w/index.html"]  # fmt: skip
    await asyncio.to_thread(subprocess.run, argv, check=True, capture_output=True)

    async def restarted() -> bool:
        return kinds(node, "ev").count("change_done") == 2

    await until("the restart of the unhealthy chute", restarted)
    events = held(node, "ev")
    told = [e.kind for e in events]
    assert told.index("unhealthy") < told.index("restarted"), told
    unhealthy = events[told.index("unhealthy")]
    assert unhealthy.service == "main" and unhealthy.status is not None
    assert unhealthy.status["state"] == "unhealthy"
    restart = events[told.index("restarted")]
    assert restart.change_id is not None and events[-1].change_id == restart.change_id

    # the service's process is killed: it exited, on its own
    pid = (await node.status("ev"))["services"][0]["pid"]
    os.kill(pid, signal.SIGKILL)

    async def exited() -> bool:
        return "exited" in kinds(node, "ev")

    await until("the exit to be told", exited)
    last = held(node, "ev")[-1]
    assert last.kind == "exited" and last.service == "main"
    assert last.detail == "its main process ended"
    assert last.status is not None and last.status["state"] == "failed"

    # a stop is the stop change's, not an exit; a delete leaves no status
    await done(node, (await node.act("ev", "delete")).id)
    assert kinds(node, "ev")[-1] == "deleted"
    assert held(node, "ev")[-1].status is None
    seqs = [e.seq for e in held(node)]
    assert seqs == list(range(1, len(seqs) + 1))  # each once, in order


async def test_a_failed_install_and_an_oom_kill_are_told(node: Node) -> None:
    failing = one(chute="nope", image="missing")
    change = await ended(node, (await node.install(failing)).id)
    assert change.state == "rolled_back"
    told = held(node, "nope")
    assert [e.kind for e in told] == ["change_failed"]
    assert told[0].status is None and "rolled_back" in (told[0].detail or "")

    # its main process asks for 64 MB past a 16 MB limit, once the chute is up
    hog = "sleep 1.5; exec dd if=/dev/zero of=/dev/null bs=64M count=1"
    await done(node, (await node.install(one(command=["sh", "-c", hog],
                                              resources={"memory_mb": 16}))).id)  # fmt: skip

    async def killed() -> bool:
        return "exited" in kinds(node, "ev")

    await until("the OOM kill to be told", killed)
    events = held(node, "ev")
    oom = next(e for e in events if e.kind == "oom_killed")
    assert oom.service == "main" and "16 MB" in (oom.detail or "")
    exited = events[-1]
    assert exited.kind == "exited" and exited.detail == "OOM-killed"
    assert exited.status is not None and exited.status["state"] == "failed"
