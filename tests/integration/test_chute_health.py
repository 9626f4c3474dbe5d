"""Health checks keep running after a chute has started: a service whose check fails
``retries`` times in a row is shown unhealthy, and the node restarts its chute."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from edgeplane.chutes import manifest
from edgeplane.chutes.node import Node
from edgeplane.runtimes.container import find_runc
from oci_fixtures import busybox_containers_unavailable, images_with_busybox

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
    ),
]

HTTPD = "mkdir -p /tmp/w && echo ok > /tmp/w/index.html && httpd -f -p 8080 -h /tmp/w"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    images = images_with_busybox(tmp_path / "images")
    found = Node(
        tmp_path / "worker",
        images,
        grace_s=0.3,
        settle_s=0.5,
        healthy_within_s=10,
        restart_unhealthy=False,
        restart_backoff_s=0,
    )
    await found.start()
    try:
        yield found
    finally:
        for name in found.names():
            await asyncio.wait_for(found.changes.wait((await found.act(name, "delete")).id), 30)
        await found.close()


async def until(what: str, probe: Callable[[], Awaitable[Any]], deadline: float = 30) -> Any:
    """Poll ``probe`` until it answers something true (the node gives no event for it)."""
    async with asyncio.timeout(deadline):
        while not (found := await probe()):  # noqa: ASYNC110 - polled: no event to await
            await asyncio.sleep(0.1)
    assert found, what
    return found


async def test_a_service_whose_health_endpoint_goes_away_is_unhealthy_then_restarted(
    node: Node,
) -> None:
    chute = manifest.parse(
        {
            "name": "pulse",
            "version": "1",
            "services": [
                {
                    "name": "web",
                    "image": "busybox",
                    "command": ["sh", "-c", HTTPD],
                    "healthcheck": {
                        "http": {"port": 8080, "path": "/index.html"},
                        "interval_s": 0.2,
                        "timeout_s": 1,
                        "retries": 2,
                    },
                }
            ],
        }
    )
    change = await asyncio.wait_for(node.changes.wait((await node.install(chute)).id), 30)
    assert change.state == "done", change
    status = await node.status("pulse")
    assert status["state"] == "running" and status["services"][0]["healthy"] is True
    cid = status["services"][0]["container"]

    runc = find_runc()
    assert runc is not None
    argv = [runc, "--root", str(node.state_dir), "exec", cid, "rm", "/tmp/w/index.html"]
    await asyncio.to_thread(subprocess.run, argv, check=True, capture_output=True)

    async def unhealthy() -> bool:
        listed = (await node.listing())[0]  # what GET /chutes shows
        return listed["state"] == "unhealthy" and listed["services"][0]["healthy"] is False

    await until("the chute is seen unhealthy", unhealthy)
    assert (await node.status("pulse"))["services"][0]["health_restarts"] == 0

    # the node's policy: an unhealthy chute is restarted (its command writes the page again)
    node.restart_unhealthy = True

    async def healed() -> bool:
        if node.changes.active("pulse"):
            return 0  # the restart change is still on its way
        found = await node.status("pulse", probe=False)
        service = found["services"][0]
        return found["state"] == "running" and service["healthy"] and service["health_restarts"]

    assert await until("the chute is restarted and healthy", healed) == 1
