"""kill -9 of a real ``edgeplane worker`` running an application's networked, health-checked
container instance (docs/services.md): the instance keeps serving at its address while no
worker runs, the restarted worker re-attaches it (same instance, same host port) and goes
on checking its health, and its network is released once it ends."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from chute_fixtures import chute_image, names, require_chute_host
from edgeplane.chutes.network import TASK_CHUTE, NodeNetwork
from edgeplane.config import Settings
from edgeplane.runtimes.container import find_runc
from edgeplane.transport import free_port
from faults.procs import Api, Lab, Role, wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(240)]

HTTPD = "mkdir -p /tmp/w && echo one > /tmp/w/index.html && exec httpd -f -p 8000 -h /tmp/w"
CHECK = {"http": {"port": 8000}, "interval_s": 0.2, "timeout_s": 5, "retries": 3}


@dataclass
class Scene:
    lab: Lab
    api: Api
    manager: Role
    worker: Role
    data: Path
    net: NodeNetwork

    @property
    def runc_root(self) -> Path:
        return self.data / "worker" / "containers" / "runc"

    def containers(self) -> list[str]:
        runc = find_runc()
        assert runc is not None
        said = subprocess.run(
            [runc, "--root", str(self.runc_root), "list", "--format", "json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return [c["id"] for c in json.loads(said.stdout) or [] if c["status"] == "running"]

    def leases(self) -> list[Any]:
        """The task leases the worker keeps in its network.json (read afresh)."""
        again = NodeNetwork(
            self.net.dir, bridge=self.net.bridge, subnet=str(self.net.subnet), table=self.net.table
        )
        return [lease for lease in again.leases() if lease.chute == TASK_CHUTE]

    def instance(self, app_id: str) -> dict[str, Any] | None:
        doc = self.api.http.get(f"/applications/{app_id}").json()
        found = [i for s in doc["services"] for i in s["instances"]]
        return found[0] if len(found) == 1 else None


@pytest.fixture
def scene(lab: Lab, tmp_path: Path) -> Iterator[Scene]:
    require_chute_host()
    images = chute_image(tmp_path / "images")
    bridge, subnet, _ = names()
    data = tmp_path / "node"
    low = 20000 + secrets.randbelow(120) * 100
    port = free_port()
    manager = lab.manager(port, "--lost-grace-s", "120").start()
    api = lab.api(port)
    api.wait_healthy(manager)
    env = lab.env(EDGEPLANE_BRIDGE=bridge, EDGEPLANE_BRIDGE_SUBNET=subnet)
    worker = lab.role(
        "n1",
        ["worker", "--manager", lab.broker_url, "--worker-id", "n1", "--images-dir", str(images),
         "--service-ports", f"{low}-{low + 99}", "--data-dir", str(data)],
        env,
    )  # fmt: skip
    table = Settings(bridge=bridge).nft_table  # the worker's, from its bridge's name
    net = NodeNetwork(data / "worker" / "chutes" / "net", bridge=bridge, subnet=subnet, table=table)
    found = Scene(lab, api, manager, worker, data, net)
    try:
        yield found
    finally:
        lab.close()
        runc = find_runc()
        if runc is not None and found.runc_root.exists():
            for cid in found.containers():
                subprocess.run([runc, "--root", str(found.runc_root), "delete", "--force", cid],
                               capture_output=True, check=False)  # fmt: skip
        net.teardown()


def fetch(endpoint: dict[str, Any]) -> str | None:
    try:
        answer = httpx.get(f"http://{endpoint['address']}:{endpoint['host_port']}/", timeout=10)
    except httpx.HTTPError:
        return None
    return answer.text.strip() if answer.status_code == 200 else None


def test_a_checked_instance_outlives_kill9_of_its_worker_and_is_checked_after(
    scene: Scene,
) -> None:
    scene.worker.start()
    scene.api.wait_workers(["n1"], watch=[scene.manager, scene.worker])
    body = {
        "name": "svc",
        "services": [
            {
                "name": "web",
                "runtime": "container",
                "image": "busybox",
                "command": ["sh", "-c", HTTPD],
                "ports": [{"port": 8000}],
                "healthcheck": CHECK,
            }
        ],
    }
    created = scene.api.http.post("/applications", json=body)
    assert created.status_code == 201, created.text
    app_id = created.json()["id"]
    watch = [scene.manager, scene.worker]

    def running() -> dict[str, Any] | None:
        found = scene.instance(app_id)
        return found if found and found["state"] == "running" else None

    first = wait_until(running, "the instance running (healthy)", timeout=90, watch=watch)
    endpoint = first["endpoints"][0]
    assert fetch(endpoint) == "one"
    (cid,) = scene.containers()

    scene.worker.kill9()
    # no worker: the container and its network go on, and so does the service
    assert scene.containers() == [cid] and fetch(endpoint) == "one"
    scene.worker.start()
    scene.api.wait_workers(["n1"], watch=watch)
    again = wait_until(running, "the instance after the restart", watch=watch)
    assert (again["id"], again["restarts"], again["endpoints"]) == (first["id"], 0, [endpoint])
    assert scene.containers() == [cid] and fetch(endpoint) == "one"  # re-attached, not restarted

    # it stops being healthy (its page is gone: 404): the re-attached worker's checks see
    # it, it ends `unhealthy` and the application starts a new instance
    runc = find_runc()
    assert runc is not None
    subprocess.run(
        [runc, "--root", str(scene.runc_root), "exec", cid, "rm", "/tmp/w/index.html"], check=True
    )

    def replaced() -> dict[str, Any] | None:
        found = running()
        return found if found and found["restarts"] == 1 else None

    new = wait_until(replaced, "a new instance after the unhealthy one", timeout=90, watch=watch)
    tasks = scene.api.http.get("/tasks", params={"limit": 10}).json()["items"]
    ended = next(t for t in tasks if t["id"] == first["task_id"])
    assert ended["state"] == "failed" and ended["reason"] == "unhealthy"
    assert ended["error"].startswith("unhealthy: http GET / on port 8000: http status 404")
    assert fetch(new["endpoints"][0]) == "one"
    assert cid not in scene.containers()
    (lease,) = scene.leases()  # the ended instance's network was released
    assert [p.node_port for p in lease.ports] == [new["endpoints"][0]["host_port"]]

    assert scene.api.http.delete(f"/applications/{app_id}").status_code == 204
    wait_until(lambda: not scene.leases(), "the last lease released", watch=watch)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lease.netns not in netns
