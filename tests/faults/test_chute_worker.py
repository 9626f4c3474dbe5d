"""Chutes and a real ``edgeplane worker --api`` process: a chute outlives the worker
(re-attached, same pid, not restarted), and a change cut short by kill -9 is rolled back
(or finished past its point of no return) when the worker starts again."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chute_fixtures import names
from edgeplane.config import Settings
from edgeplane.runtimes.container import find_runc
from edgeplane.transport import free_port
from faults.procs import Lab, Role, alive, wait_until
from oci_fixtures import busybox_containers_unavailable, images_with_busybox

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
    ),
]


def chute(name: str, **service: Any) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1",
        "services": [{"name": "main", "image": "busybox", "command": ["sleep", "1000"], **service}],
    }


class Node:
    """A worker process serving the Edge API, and a client of it."""

    def __init__(
        self,
        lab: Lab,
        *,
        broker: str | None = None,
        flags: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """``broker``: where the worker dials (default the lab's); ``flags`` are added.
        The worker's chute network is a bridge, subnet and table of this test's own."""
        bridge, subnet, _ = names()
        own = {"EDGEPLANE_BRIDGE": bridge, "EDGEPLANE_BRIDGE_SUBNET": subnet}
        self.gateway = subnet.removesuffix("0/24") + "1"
        self.data = lab.root / "node"
        self.runc_root = self.data / "worker" / "chutes" / "runc"
        images = images_with_busybox(lab.root / "images")
        port = free_port()
        self.role: Role = lab.role(
            "node",
            ["worker", "--manager", broker or lab.broker_url, "--worker-id", "n1",
             "--no-containers", "--api", f"127.0.0.1:{port}", "--images-dir", str(images),
             "--data-dir", str(self.data), *flags],
            lab.env(**own, **(env or {})),
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}/api/v1"
        self.http: httpx.Client | None = None

    def start(self) -> None:
        self.role.start()
        token_file = self.data / "worker" / "edge-api-token"

        def token() -> str | None:
            return token_file.read_text().strip() if token_file.exists() else None

        wait_until(token, "the node token", timeout=60, watch=[self.role])
        if self.http is None:
            token = token_file.read_text().strip()
            self.http = httpx.Client(
                base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )

        def serving() -> bool:
            try:
                return self.client.get("/info").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(serving, "the Edge API", timeout=60, watch=[self.role])

    @property
    def client(self) -> httpx.Client:
        assert self.http is not None
        return self.http

    def change(self, change_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.client.get(f"/changes/{change_id}").json()
        return found

    def ended(self, change_id: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            found = self.change(change_id)
            return found if found["state"] in ("done", "failed", "rolled_back") else None

        return wait_until(done, f"change {change_id}", timeout=60, watch=[self.role])

    def containers(self) -> list[dict[str, Any]]:
        runc = find_runc()
        assert runc is not None
        said = subprocess.run(
            [runc, "--root", str(self.runc_root), "list", "--format", "json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return list(json.loads(said.stdout) or [])

    def clean(self) -> None:
        """Remove whatever container the test left: they outlive the worker by design."""
        runc = find_runc()
        if runc is None or not self.runc_root.exists():
            return
        for found in self.containers():
            subprocess.run([runc, "--root", str(self.runc_root), "delete", "--force", found["id"]],
                           capture_output=True, check=False)  # fmt: skip


@contextlib.contextmanager
def running_node(lab: Lab, **options: Any) -> Iterator[Node]:
    """A :class:`Node` (``options`` as it takes them), and everything its chutes leave
    removed at the end."""
    found = Node(lab, **options)
    try:
        yield found
    finally:
        if found.http is not None:
            found.http.close()
        lab.close()
        found.clean()
        from edgeplane.chutes.network import NodeNetwork
        from edgeplane.chutes.resources import ChuteEnforcer

        # the worker's network (default bridge and table) and the chutes' disks (loop
        # mounts) outlive the worker, as chutes do: a test removes them itself
        chutes = found.data / "worker" / "chutes"
        for disk in (chutes / "disks").glob("*.img"):
            ChuteEnforcer(chutes).remove(disk.stem)
        env = found.role.env
        NodeNetwork(
            chutes / "net",
            bridge=env["EDGEPLANE_BRIDGE"],
            subnet=env["EDGEPLANE_BRIDGE_SUBNET"],
            table=Settings(bridge=env["EDGEPLANE_BRIDGE"]).nft_table,
        ).teardown()


@pytest.fixture
def node(lab: Lab) -> Iterator[Node]:
    with running_node(lab) as found:
        yield found


@pytest.mark.parametrize("how", ["stop", "kill9"])
def test_a_chute_survives_a_worker_restart(node: Node, how: str) -> None:
    node.start()
    answer = node.client.post("/chutes", json=chute("keep"))
    assert answer.status_code == 202, answer.text
    assert node.ended(answer.json()["change_id"])["state"] == "done"
    before = node.client.get("/chutes/keep").json()
    pid = before["services"][0]["pid"]
    assert before["state"] == "running" and alive(pid)
    address = before["services"][0]["address"]
    assert address is not None  # on the node's bridge network (network.py)

    node.role.stop() if how == "stop" else node.role.kill9()
    assert alive(pid)  # the chute keeps running with no worker at all
    node.start()
    # the Edge API may answer before the worker has re-attached its chutes
    after = wait_until(
        lambda: (doc := node.client.get("/chutes/keep").json()).get("state") == "running" and doc,
        "the chute to be re-attached",
        watch=[node.role],
    )
    assert after["services"][0]["pid"] == pid  # re-attached, not restarted
    assert after["services"][0]["address"] == address
    assert node.ended(node.client.post("/chutes/keep/stop").json()["change_id"])["state"] == "done"
    assert not alive(pid)


def test_kill9_mid_install_rolls_the_change_back(node: Node) -> None:
    node.start()
    # never healthy: the change waits in its health step, where the worker is killed
    never = chute("half", healthcheck={"tcp": {"port": 9}, "interval_s": 0.2, "retries": 100})
    change_id = node.client.post("/chutes", json=never).json()["change_id"]

    def waiting() -> bool:
        steps = {s["name"]: s["state"] for s in node.change(change_id)["steps"]}
        return steps.get("wait until healthy") == "running"

    wait_until(waiting, "the install to wait for health", watch=[node.role])
    assert len(node.containers()) == 1
    node.role.kill9()
    node.start()
    change = node.ended(change_id)
    assert change["state"] == "rolled_back", change
    assert any("worker stopped mid-change" in line for line in change["log"])
    assert node.client.get("/chutes/half").status_code == 404
    assert node.containers() == []
    assert not (node.data / "worker" / "chutes" / "installed" / "half").exists()


def test_kill9_mid_delete_finishes_it(node: Node, tmp_path: Path) -> None:
    node.start()
    # a service that ignores SIGTERM keeps the delete in its stop step for the grace time
    stubborn = chute("gone", command=["sh", "-c", "trap '' TERM; while true; do sleep 1; done"])
    assert (
        node.ended(node.client.post("/chutes", json=stubborn).json()["change_id"])["state"]
        == "done"
    )
    change_id = node.client.delete("/chutes/gone").json()["change_id"]

    def stopping() -> bool:
        return node.change(change_id)["steps"][0]["state"] == "running"

    wait_until(stopping, "the delete to stop the service", watch=[node.role])
    node.role.kill9()
    node.start()
    change = node.ended(change_id)
    assert change["state"] == "done", change
    assert any("past its point of no return" in line for line in change["log"])
    assert node.client.get("/chutes/gone").status_code == 404
    assert node.containers() == []


def test_the_cli_against_the_node(node: Node, tmp_path: Path) -> None:
    import sys

    node.start()
    token = ["--node", node.url.removesuffix("/api/v1"),
             "--token-file", str(node.data / "worker" / "edge-api-token")]  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgeplane", "chute", *args, *token],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    spec = tmp_path / "chute.yaml"
    spec.write_text(
        "name: clip\nversion: '1'\nconfig: {a: 1}\n"
        "services: [{name: main, image: busybox,"
        " command: [sh, -c, 'echo hello; exec sleep 1000']}]\n"
    )
    done = cli("install", str(spec), "--wait")
    assert done.returncode == 0, done.stderr
    assert "✓ wait until healthy" in done.stderr and "done" in done.stderr
    listed = cli("list")
    assert "clip" in listed.stdout and "running" in listed.stdout
    assert '"state": "running"' in subprocess.run(
        [sys.executable, "-m", "edgeplane", "--output", "json", "chute", "get", "clip", *token],
        capture_output=True, text=True, timeout=60, check=False,
    ).stdout  # fmt: skip
    assert cli("logs", "clip").stdout == "hello\n"
    assert cli("config", "clip", "--set", "b=x", "--wait").returncode == 0
    assert json.loads(cli("config", "clip").stdout) == {"a": 1, "b": "x"}
    assert cli("stop", "clip", "--wait").returncode == 0
    assert cli("delete", "clip", "--wait").returncode == 0
    assert cli("get", "clip").returncode == 2

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: clip\nversion: '1'\nservices: [{name: main, image: busybox, cpus: 2}]\n")
    refused = cli("install", str(bad))
    assert refused.returncode == 2 and "services.0.cpus" in refused.stderr
    failing = tmp_path / "failing.yaml"
    failing.write_text("name: clip\nversion: '1'\nservices: [{name: main, image: nope}]\n")
    failed = cli("install", str(failing), "--wait")
    assert failed.returncode == 1 and "rolled_back" in failed.stderr
    assert cli("list", "--worker", "w1").returncode == 2


def test_a_chute_reads_itself_through_the_workers_chute_api(node: Node) -> None:
    """``edgeplane worker`` serves its chutes' API on its bridge gateway: a chute reads
    its own status and config with its token; another chute's token is refused there."""
    node.start()
    for name in ("me", "other"):
        body = {**chute(name), "config": {"color": name}}
        answer = node.client.post("/chutes", json=body)
        assert node.ended(answer.json()["change_id"])["state"] == "done"
    runc = find_runc()
    assert runc is not None
    # static busybox wget may crash on -T: the timeout applet bounds it instead
    url = f"http://{node.gateway}:7072/api/v1"
    get = 'timeout 10 wget -qO- --header "Authorization: Bearer {token}" ' + url + "{path}"

    def inside(name: str, script: str) -> subprocess.CompletedProcess[str]:
        cid = node.client.get(f"/chutes/{name}").json()["services"][0]["container"]
        return subprocess.run(
            [runc, "--root", str(node.runc_root), "exec", cid, "sh", "-c", script],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    mine = "$(cat /run/chute/token)"
    said = inside("me", get.format(token=mine, path="/self"))
    assert said.returncode == 0, said.stderr
    found = json.loads(said.stdout)
    assert found["name"] == "me" and found["state"] == "running"
    assert found["config"] == {"color": "me"}
    assert json.loads(inside("other", get.format(token=mine, path="/self/config")).stdout) == {
        "color": "other"
    }
    info = inside("me", get.format(token=mine, path="/info"))
    assert info.returncode == 0 and {c["name"] for c in json.loads(info.stdout)["chutes"]} == {
        "me",
        "other",
    }
    installed = node.data / "worker" / "chutes" / "installed"
    theirs = (installed / "other" / "config" / "token").read_text()
    for token in (theirs, "nope"):  # another chute's token, and none at all, from "me"
        said = inside("me", get.format(token=token, path="/self"))
        assert said.returncode != 0 and said.stdout == "", said
    # the node's own API token is no chute's either
    node_token = (node.data / "worker" / "edge-api-token").read_text().strip()
    assert inside("me", get.format(token=node_token, path="/self")).stdout == ""
