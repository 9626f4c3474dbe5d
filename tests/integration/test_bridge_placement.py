"""``network: bridge`` is a placement requirement (docs/scheduling.md): a real manager on
the test Mosquitto and two real workers running busybox containers, one with a bridge
network of the test's own and one without (its chute network turned off, as on a node
that is not root or lacks nftables). Bridge tasks always land on the bridged worker;
with only the bridgeless one online a bridge task waits ``pending`` with the reason, the
CLI showing it, instead of failing ``no_network`` there again and again."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from chute_fixtures import chute_image, names, require_chute_host
from edgeplane.chutes.network import NodeNetwork
from edgeplane.cli.main import app as cli_app
from edgeplane.config import Settings
from edgeplane.roles.control import ControlPlane
from edgeplane.roles.worker import build_worker
from edgeplane.worker import WorkerAgent
from integration.test_app_services import eventually

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(300)]

TOKEN = "test-admin-token"
REASON = "no worker has a bridge network (the task has network: bridge)"


def bridge_task(n: int) -> dict[str, Any]:
    return {
        "runtime": "container",
        "image": "busybox",
        "command": ["sh", "-c", f"echo bridged-{n}"],
        "network": "bridge",
        "start": True,
        "max_retries": 0,
    }


async def test_bridge_tasks_go_only_to_a_worker_with_a_bridge(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    require_chute_host()
    bridge, subnet, table = names()
    net = NodeNetwork(tmp_path / "net", bridge=bridge, subnet=subnet, table=table)
    settings = Settings(
        data_dir=tmp_path / "plane",
        store=f"sqlite:///{tmp_path / 'plane.db'}",
        broker=fast_broker_url,
        domain=unique_domain,
        port=0,
        admin_token=TOKEN,
        heartbeat_s=0.3,
        retry_backoff_s=0.05,
        images_dir=chute_image(tmp_path / "images"),
        slots=4,
    )
    settings.data_dir.mkdir(parents=True)
    control = ControlPlane(settings, fast_broker_url)
    await control.start()

    def worker(worker_id: str, network: NodeNetwork | str) -> WorkerAgent:
        return build_worker(
            settings,
            broker_url=fast_broker_url,
            worker_id=worker_id,
            data_dir=tmp_path / worker_id,
            network=network,
        )

    # how node_network answers on a node whose bridge cannot be had
    bare = worker("bare", "turned off (chute_network)")
    bridged = worker("bridged", net)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(asyncio.to_thread, net.teardown)
        stack.push_async_callback(control.stop)
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=control.url + "/api/v1",
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=30,
            )
        )
        await bare.start()
        stack.push_async_callback(bare.stop)

        async def submit(body: dict[str, Any]) -> str:
            created = await http.post("/tasks", json=body)
            assert created.status_code == 201, created.text
            task_id: str = created.json()["id"]
            return task_id

        async def task(task_id: str) -> dict[str, Any]:
            found: dict[str, Any] = (await http.get(f"/tasks/{task_id}")).json()
            return found

        async def ended(task_id: str) -> dict[str, Any] | None:
            found = await task(task_id)
            return (
                found if found["state"] in ("completed", "failed", "skipped", "cancelled") else None
            )

        # the workers say what they can: only one has a bridge
        async def reported() -> dict[str, Any] | None:
            found: dict[str, Any] = (await http.get("/workers/bare")).json()
            return found if found.get("state") == "online" else None

        assert (await eventually(reported, "bare online"))["capabilities"]["bridge"] is False

        # only the bridgeless worker: a bridge task waits pending, saying why
        waiting = await submit(bridge_task(0))

        async def pending_with_reason() -> dict[str, Any] | None:
            found = await task(waiting)
            return found if found["state"] == "pending" and found.get("reason") else None

        found = await eventually(pending_with_reason, "the bridge task pending with a reason")
        assert found["reason"] == REASON, found["reason"]
        shown = await asyncio.to_thread(
            CliRunner().invoke,
            cli_app,
            ["--url", control.url, "--token", TOKEN, "task", "get", waiting],
            catch_exceptions=False,
        )
        assert shown.exit_code == 0, shown.output
        assert "bridge network" in shown.output, shown.output
        # a task without a network still runs there
        plain = await submit({**bridge_task(9), "network": "none"})
        done = await eventually(lambda: ended(plain), "the plain task ended")
        assert done["state"] == "completed" and done["worker_id"] == "bare", done
        assert (await task(waiting))["state"] == "pending"  # never sent there: not failed

        # a worker with a bridge joins: the waiting task runs there, as every later one
        await bridged.start()
        stack.push_async_callback(bridged.stop)
        batch = [waiting, *[await submit(bridge_task(n)) for n in range(1, 7)]]
        for task_id in batch:
            done = await eventually(lambda t=task_id: ended(t), f"bridge task {task_id}")
            assert done["state"] == "completed", done
            assert done["worker_id"] == "bridged" and done["attempt"] == 1, done
        workers = {w["id"]: w for w in (await http.get("/workers")).json()["items"]}
        assert workers["bridged"]["capabilities"]["bridge"] is True
