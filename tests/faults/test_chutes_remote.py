"""A worker's chutes managed through the manager (docs/chutes.md, "Through the control
plane"): a real manager, a real ``edgeplane worker --api`` process and real busybox
containers; the calls travel over MQTT to the worker and back."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane.runtimes.busybox import busybox_image
from edgeplane.transport import free_port
from faults.procs import TOKEN, Api, Lab, wait_until
from faults.test_chute_worker import Node, chute, running_node
from oci_fixtures import busybox_containers_unavailable
from registry_fixtures import RegistryProcess, skopeo_push

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
    ),
]


class Stack:
    def __init__(self, lab: Lab, node: Node) -> None:
        port = free_port()
        self.manager = lab.manager(port).start()
        self.api: Api = lab.api(port)
        self.api.wait_healthy(self.manager)
        self.node = node
        node.start()
        self.api.wait_workers(["n1"], watch=[self.manager, node.role])
        self.http: httpx.Client = self.api.http

    def ended(self, change_id: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            found: dict[str, Any] = self.http.get(f"/workers/n1/changes/{change_id}").json()
            return found if found.get("state") in ("done", "failed", "rolled_back") else None

        return wait_until(done, f"change {change_id}", timeout=60, watch=[self.node.role])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgeplane", "--url", self.api.url, "--token", TOKEN,
             "chute", *args, "--worker", "n1"],
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip


@pytest.fixture
def stack(lab: Lab) -> Iterator[Stack]:
    with running_node(lab) as node:
        yield Stack(lab, node)


def test_a_chute_through_the_manager_api_and_the_cli(stack: Stack, tmp_path: Path) -> None:
    http = stack.http
    hello = chute("hello", command=["sh", "-c", "echo hello-remote; exec sleep 1000"])
    answer = http.post("/workers/n1/chutes", json=hello)
    assert answer.status_code == 202, answer.text
    change = stack.ended(answer.json()["change_id"])
    assert change["state"] == "done", change
    assert {"id", "state", "steps", "log"} <= change.keys()
    shown = http.get("/workers/n1/chutes/hello").json()
    assert shown["state"] == "running" and shown["version"] == "1"
    assert [c["name"] for c in http.get("/workers/n1/chutes").json()] == ["hello"]
    logs = http.get("/workers/n1/chutes/hello/logs")
    assert logs.status_code == 200 and "hello-remote" in logs.text

    stopped = http.post("/workers/n1/chutes/hello/stop")
    assert stopped.status_code == 202, stopped.text
    assert stack.ended(stopped.json()["change_id"])["state"] == "done"
    assert http.get("/workers/n1/chutes/hello").json()["state"] == "stopped"
    # the CLI follows the change's SSE stream through the manager
    started = stack.cli("start", "hello", "--wait")
    assert started.returncode == 0, started.stderr
    assert "done" in started.stderr
    assert http.get("/workers/n1/chutes/hello").json()["state"] == "running"
    assert "hello-remote" in stack.cli("logs", "hello").stdout
    listed = stack.cli("list")
    assert "hello" in listed.stdout and "running" in listed.stdout, listed.stderr
    deleted = stack.cli("delete", "hello", "--wait")
    assert deleted.returncode == 0, deleted.stderr
    missing = http.get("/workers/n1/chutes/hello")
    assert missing.status_code == 404 and "hello" in missing.json()["detail"]

    spec = tmp_path / "chute.yaml"
    spec.write_text(
        "name: clip\nversion: '2'\n"
        "services: [{name: main, image: busybox, command: [sleep, '1000']}]\n"
    )
    installed = stack.cli("install", str(spec), "--wait")
    assert installed.returncode == 0, installed.stderr
    assert "✓ wait until healthy" in installed.stderr
    assert http.get("/workers/n1/chutes/clip").json()["state"] == "running"

    # bad input is refused by the manager, naming the field, before the worker sees it
    bad = http.post("/workers/n1/chutes", json={**hello, "bogus": 1})
    assert bad.status_code == 422 and bad.json()["field"] == "bogus"
    # the mutating calls are audited
    records = http.get("/audit", params={"limit": 200}).json()["items"]
    paths = {r.get("path") for r in records}
    assert "/api/v1/workers/n1/chutes" in paths, records[:3]
    assert stack.cli("delete", "clip", "--wait").returncode == 0


def test_a_worker_offline_answers_503_naming_it(stack: Stack) -> None:
    stack.node.role.stop()

    def offline() -> bool:
        found = stack.api.worker("n1")
        return found is not None and found["state"] == "offline"

    wait_until(offline, "n1 offline", timeout=60, watch=[stack.manager])
    answer = stack.http.get("/workers/n1/chutes")
    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "n1" in answer.json()["detail"] and "offline" in answer.json()["detail"]
    assert stack.http.post("/workers/n1/chutes", json=chute("x")).status_code == 503
    assert stack.http.get("/workers/nope/chutes").status_code == 404
    cli = stack.cli("list")
    assert cli.returncode == 3 and "n1" in cli.stderr


def test_only_an_admin_or_the_workers_owner_manages_its_chutes(stack: Stack) -> None:
    http = stack.http
    for name in ("otto", "opal"):
        body = {"name": name, "password": "correct horse battery", "role": "operator"}
        assert http.post("/users", json=body).status_code == 201
    assert http.put("/workers/n1/owner", json={"owner": "opal"}).status_code == 200

    def bearer(name: str) -> dict[str, str]:
        login = {"name": name, "password": "correct horse battery"}
        pair = http.post("/auth/login", json=login).json()
        return {"Authorization": f"Bearer {pair['access_token']}"}

    otto, opal = bearer("otto"), bearer("opal")
    refused = http.post("/workers/n1/chutes", json=chute("nope"), headers=otto)
    assert refused.status_code == 403, refused.text
    assert http.post("/workers/n1/chutes/x/stop", headers=otto).status_code == 403
    # reads are every role's (docs/security.md)
    assert http.get("/workers/n1/chutes", headers=otto).status_code == 200
    assert http.get("/workers/n1/chutes", headers=opal).json() == []
    answer = http.post("/workers/n1/chutes", json=chute("mine"), headers=opal)
    assert answer.status_code == 202, answer.text
    assert stack.ended(answer.json()["change_id"])["state"] == "done"
    gone = http.delete("/workers/n1/chutes/mine", headers=opal)
    assert stack.ended(gone.json()["change_id"])["state"] == "done"


def test_a_chute_from_a_registry_image_through_the_manager(
    stack: Stack, oci_registry: RegistryProcess, tmp_path: Path
) -> None:
    """A chute whose service names ``oci://…``: the worker pulls the image (it has none in
    its image dir by that name), verified, and runs it; a bad reference is refused by the
    manager naming the field; an unknown tag rolls the install back naming the image."""
    layout = tmp_path / "layout"
    busybox_image(layout, tag="1")
    skopeo_push(layout, "1", oci_registry, "busybox")
    image = f"oci://{oci_registry.address}/busybox:1"
    http = stack.http
    boxed = chute("boxed", image=image, command=["sh", "-c", "echo from-registry; exec sleep 1000"])
    answer = http.post("/workers/n1/chutes", json=boxed)
    assert answer.status_code == 202, answer.text
    change = stack.ended(answer.json()["change_id"])
    assert change["state"] == "done", change
    shown = http.get("/workers/n1/chutes/boxed").json()
    assert shown["state"] == "running", shown

    def printed() -> bool:
        return "from-registry" in http.get("/workers/n1/chutes/boxed/logs").text

    wait_until(printed, "the chute's output", timeout=30, watch=[stack.node.role])
    pulled = stack.node.data.parent / "images" / ".oci"  # the node's --images-dir
    held = [p.name for p in pulled.iterdir()]
    assert len(held) == 1 and len(held[0]) == 64, held  # kept by its manifest digest

    bad = http.post("/workers/n1/chutes", json=chute("bad", image="oci://h/Busybox:1"))
    assert bad.status_code == 422, bad.text
    assert bad.json()["field"] == "services.0.image"

    missing = image.replace(":1", ":nope")
    answer = http.post("/workers/n1/chutes", json=chute("missing", image=missing))
    assert answer.status_code == 202, answer.text
    change = stack.ended(answer.json()["change_id"])
    assert change["state"] == "rolled_back", change
    assert "artifact_not_found" in change["error"], change
    assert missing in change["error"], change
    assert http.get("/workers/n1/chutes/missing").status_code == 404

    deleted = http.delete("/workers/n1/chutes/boxed")
    assert stack.ended(deleted.json()["change_id"])["state"] == "done"
