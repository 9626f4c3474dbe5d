"""The proxy path for real (issue 15): two workers in a network namespace of their own,
whose only route is a veth to the host where the broker listens, run a wasm task and a
container task named ``oci://127.0.0.1:PORT/…``, and a third, serving chutes, installs a
chute whose service names the same image. The registry listens on the host's
127.0.0.1 only: from the namespace that address is the namespace's own loopback, so a
worker that tries it directly (``--pull auto``) is refused at once and goes through the
proxy, which pulls each blob from the registry once for all of them.

The workers enter the namespace with ``nsenter --net`` rather than ``ip netns exec``: the
latter also remounts ``/sys`` for the namespace, hiding the cgroup mount runc needs.

Needs root (``ip netns``, ``nsenter``), runc and busybox; skipped otherwise. The namespace, the veth
and the worker processes are removed in ``finally`` whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_proxy_pull import push_add

from edgeplane.config import Settings
from edgeplane.model import TaskSpec
from edgeplane.roles.up import running_stack
from edgeplane.runtimes.busybox import busybox_image
from edgeplane.runtimes.container import find_runc
from edgeplane.transport import free_port
from edgeplane.transport.broker import MosquittoProcess
from faults.procs import EDGEPLANE
from oci_fixtures import busybox_containers_unavailable
from registry_fixtures import RegistryProcess, skopeo_push

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="ip netns needs root"),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("nsenter") is None,
        reason="iproute2 or util-linux (nsenter) is not installed",
    ),
    pytest.mark.skipif(
        busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
    ),
]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def isolated() -> Iterator[tuple[str, str]]:
    """A namespace (name) linked to the host by a veth; yields (namespace, host address)."""
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"ep-pp-{tag}", f"eppa{tag}", f"eppb{tag}"
    octet = 16 + secrets.randbelow(200)
    host_addr, ns_addr = f"10.231.{octet}.1", f"10.231.{octet}.2"
    try:
        ip("netns", "add", ns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"{host_addr}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{ns_addr}/30", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns, host_addr
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def worker_in(
    ns: str, broker: str, worker_id: str, data_dir: Path, domain: str, *more: str
) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    # chutes on loopback only: the namespace needs no bridge of theirs for this test
    env = {**os.environ, "EDGEPLANE_DOMAIN": domain, "EDGEPLANE_HEARTBEAT_S": "0.5",
           "EDGEPLANE_CHUTE_NETWORK": "false"}  # fmt: skip
    with (data_dir.parent / f"{worker_id}.log").open("ab") as log:  # the child keeps its own
        return subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{ns}", *EDGEPLANE, "worker", "--manager", broker,
             "--worker-id", worker_id, "--data-dir", str(data_dir), "--pull", "auto", *more],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


async def test_workers_without_a_route_to_the_registry_run_oci_tasks_through_the_proxy(
    isolated: tuple[str, str], oci_registry: RegistryProcess, tmp_path: Path, unique_domain: str
) -> None:
    ns, host_addr = isolated
    layout = tmp_path / "layout"
    busybox_image(layout, tag="1")
    skopeo_push(layout, "1", oci_registry, "busybox")
    await push_add(oci_registry, tmp_path)
    mosquitto = shutil.which("mosquitto")
    assert mosquitto is not None
    broker = MosquittoProcess(tmp_path / "mosquitto", free_port(), mosquitto, host=host_addr)
    broker_url = broker.start()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        settings = Settings(
            data_dir=tmp_path / "control", broker=broker_url, port=0, workers=0,
            store=f"sqlite:///{tmp_path / 'db.sqlite'}", domain=unique_domain,
            admin_token="t" * 32, heartbeat_s=0.5,
        )  # fmt: skip
        async with running_stack(settings) as stack:
            manager = stack.control.manager
            for worker_id in ("w1", "w2"):
                workers.append(
                    worker_in(ns, broker_url, worker_id, tmp_path / worker_id, unique_domain)
                )
            chute_node = ("--no-containers", "--api", f"127.0.0.1:{free_port()}")
            workers.append(
                worker_in(ns, broker_url, "w3", tmp_path / "w3", unique_domain, *chute_node)
            )
            async with asyncio.timeout(60):
                while {"w1", "w2", "w3"} - {  # noqa: ASYNC110 -- membership has no event
                    w.id for w in manager.members.workers() if w.state == "online"
                }:
                    await asyncio.sleep(0.1)

            registry = f"oci://{oci_registry.address}"
            specs = []
            for worker_id in ("w1", "w2"):
                specs += [
                    TaskSpec(name="add", image_url=f"{registry}/demo/add:1", inputs=[2, 3],
                             worker_id=worker_id, start=True),
                    TaskSpec(name="hi", runtime="container", image=f"{registry}/busybox:1",
                             command=["echo", "hi"], worker_id=worker_id, start=True,
                             limits={"timeout_s": 30, "memory_mb": 64}),
                ]  # fmt: skip
            tasks = await manager.submit(specs)
            done = [await manager.wait(task.id, 60) for task in tasks]
            for task in done:
                assert task.state == "completed", (task.error, task.reason, _logs(tmp_path)[-2500:])
            assert [t.results for t in done if t.runtime == "wasm"] == [[5], [5]]
            assert [t.results["stdout"] for t in done if t.runtime == "container"] == ["hi\n"] * 2

            # each worker tried the registry itself first (--pull auto) and was refused
            assert _logs(tmp_path).count("registry unreachable, pulling through the proxy") == 2
            proxy = stack.control.proxy
            assert proxy is not None and proxy.registries is not None
            pulls = proxy.registries.pulls
            blobs = {key: n for key, n in pulls.items() if key.startswith("blob ")}
            assert len(blobs) >= 2 and set(blobs.values()) == {1}, pulls  # config + layer(s)
            assert proxy.stats.served >= 2 + 2 * len(blobs)  # the module, and the image twice

            # a chute naming the image, on the chute node (which holds no image): through
            # the proxy as well, whose blobs are not pulled from the registry again
            served = proxy.stats.served
            service = {"name": "main", "image": f"{registry}/busybox:1",
                       "command": ["sh", "-c", "echo chute-up; exec sleep 1000"]}  # fmt: skip
            async with httpx.AsyncClient(
                base_url=stack.control.url + "/api/v1",
                headers={"Authorization": f"Bearer {settings.admin_token}"},
                timeout=30,
            ) as http:
                body = {"name": "boxed", "version": "1", "services": [service]}
                change = await _change(http, await http.post("/workers/w3/chutes", json=body))
                assert change["state"] == "done", (change, _logs(tmp_path)[-2500:])
                chute = (await http.get("/workers/w3/chutes/boxed")).json()
                assert chute["state"] == "running", chute
                logs = _logs(tmp_path)
                assert logs.count("registry unreachable, pulling through the proxy") == 3
                assert "image pulled through the proxy" in (tmp_path / "w3.log").read_text()
                assert proxy.stats.served >= served + len(blobs)
                pulls = proxy.registries.pulls
                assert {k: n for k, n in pulls.items() if k.startswith("blob ")} == blobs, pulls
                gone = await http.delete("/workers/w3/chutes/boxed")
                assert (await _change(http, gone))["state"] == "done"
    finally:
        for process in workers:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        _remove_chutes(tmp_path / "w3" / "worker" / "chutes" / "runc")
        broker.stop()


async def _change(http: httpx.AsyncClient, answer: httpx.Response) -> dict[str, Any]:
    """The change ``answer`` (a 202) queued, once it has ended."""
    assert answer.status_code == 202, answer.text
    change_id = answer.json()["change_id"]
    async with asyncio.timeout(60):
        while True:
            change: dict[str, Any] = (await http.get(f"/workers/w3/changes/{change_id}")).json()
            if change.get("state") in ("done", "failed", "rolled_back"):
                return change
            await asyncio.sleep(0.1)


def _remove_chutes(runc_root: Path) -> None:
    """Chutes outlive their worker by design: whatever the test left goes."""
    runc = find_runc()
    if runc is None or not runc_root.exists():
        return
    listed = subprocess.run(
        [runc, "--root", str(runc_root), "list", "-q"], capture_output=True, text=True, timeout=30
    )
    for cid in listed.stdout.split():
        subprocess.run([runc, "--root", str(runc_root), "delete", "--force", cid],
                       capture_output=True, timeout=30)  # fmt: skip


def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("w*.log"))
