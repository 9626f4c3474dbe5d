"""A worker's chutes through the root (docs/chutes.md, "Through the root"): real
``edgeplane root``, two ``manager --root`` clusters and an ``edgeplane worker --api`` in
one of them. The root finds the cluster that holds the worker and forwards each call, the
change's progress stream, the chute's live output and the CLI's ``--worker`` calls."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from edgeplane.transport import free_port
from faults.procs import TOKEN, Api, Lab, wait_until
from faults.test_chute_worker import Node, chute, running_node
from faults.test_chutes_remote import TICKER, sse, ticks
from oci_fixtures import busybox_containers_unavailable

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
    ),
]


class Hierarchy:
    def __init__(self, lab: Lab, node: Node) -> None:
        port = free_port()
        broker = lab.broker_url
        self.root = lab.role(
            "root",
            ["root", "--broker", broker, "--port", str(port),
             "--data-dir", str(lab.root / "root")],
        ).start()  # fmt: skip
        self.api: Api = lab.api(port)
        self.api.wait_healthy(self.root)
        # each cluster with its own store (the default one, in its data dir)
        self.clusters = [
            lab.role(name, ["manager", "--cluster-id", name, "--root", broker, "--broker",
                            broker, "--port", "0", "--data-dir", str(lab.root / name)]).start()
            for name in ("east", "west")
        ]  # fmt: skip
        self.node = node
        node.start()
        self.http = self.api.http

        def both() -> bool:
            items = self.http.get("/clusters").json()["items"]
            online = {c["id"] for c in items if c["state"] == "online"}
            east = next((c for c in items if c["id"] == "east"), None)
            workers = (
                0 if east is None or east["aggregate"] is None else east["aggregate"]["workers"]
            )
            return online == {"east", "west"} and workers == 1

        wait_until(both, "both clusters, and n1 in east", timeout=60,
                   watch=[self.root, *self.clusters, node.role])  # fmt: skip

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
def hierarchy(lab: Lab) -> Iterator[Hierarchy]:
    with running_node(lab, flags=("--cluster-id", "east")) as node:
        yield Hierarchy(lab, node)


def test_a_workers_chutes_through_the_root(hierarchy: Hierarchy) -> None:
    http = hierarchy.http
    ticker = {
        **chute("ticker", command=["sh", "-c", TICKER]),
        "monitoring": {"interval_s": 0.5, "history": 10},
    }
    answer = http.post("/workers/n1/chutes", json=ticker)
    assert answer.status_code == 202, answer.text
    change_id = answer.json()["change_id"]
    # the change's progress, streamed through the root
    with http.stream("GET", f"/workers/n1/changes/{change_id}/stream", timeout=90) as stream:
        views = [json.loads(data) for name, data in sse(stream.iter_lines()) if name == "change"]
    assert views[-1]["state"] == "done", views[-1]
    shown = http.get("/workers/n1/chutes/ticker").json()
    assert shown["state"] == "running" and shown["stale"] is False
    assert [c["name"] for c in http.get("/workers/n1/chutes").json()] == ["ticker"]
    assert "tick-" in http.get("/workers/n1/chutes/ticker/logs").text
    # the node's and the cluster's errors come through as they are
    bad = http.post("/workers/n1/chutes", json={**chute("x"), "bogus": 1})
    assert bad.status_code == 422 and bad.json()["field"] == "bogus"
    assert http.get("/workers/n1/chutes/nope").status_code == 404
    unknown = http.get("/workers/nobody/chutes")
    assert unknown.status_code == 404 and "nobody" in unknown.json()["detail"]

    # its usage series, kept by its cluster's manager, read through the root
    def sampled() -> dict[str, Any] | None:
        found: dict[str, Any] = http.get("/workers/n1/chutes/ticker/metrics").json()
        return found if len(found.get("samples") or ()) >= 2 else None

    roles = [hierarchy.root, *hierarchy.clusters, hierarchy.node.role]
    series = wait_until(sampled, "the ticker's samples through the root", timeout=60, watch=roles)
    assert series["id"] == "n1/ticker/main" and series["samples"][-1]["values"]["memory_mb"] > 0
    squeezed = http.get("/workers/n1/chutes/ticker/metrics", params={"points": 1}).json()
    assert len(squeezed["samples"]) == 1 and squeezed["downsampled"] is True
    nope = http.get("/workers/n1/chutes/ticker/metrics", params={"service": "nope"})
    assert nope.status_code == 404 and nope.json()["field"] == "service"
    metrics = hierarchy.cli("metrics", "ticker")
    assert metrics.returncode == 0 and "n1/ticker/main" in metrics.stderr, metrics.stderr

    # the CLI against the root
    listed = hierarchy.cli("list")
    assert listed.returncode == 0 and "ticker" in listed.stdout, listed.stderr
    config = hierarchy.cli("config", "ticker", "--set", "color=blue", "--wait")
    assert config.returncode == 0, config.stderr
    assert json.loads(hierarchy.cli("config", "ticker").stdout) == {"color": "blue"}

    # the chute's output, live through the root, until the chute is deleted
    text, ended = "", {}
    with httpx.Client(
        base_url=http.base_url, headers=http.headers, timeout=None
    ) as client, client.stream(
        "GET", "/workers/n1/chutes/ticker/logs", params={"follow": "true"}
    ) as stream:  # fmt: skip
        assert stream.status_code == 200
        deleted = False
        for name, data in sse(stream.iter_lines()):
            if name == "log":
                text += data
                if len(set(ticks(text))) >= 20 and not deleted:
                    gone = hierarchy.cli("delete", "ticker")
                    assert gone.returncode == 0, gone.stderr
                    deleted = True
            elif name == "end":
                ended = json.loads(data)
                break
    assert "deleted" in ended["reason"], ended
    numbers = ticks(text)
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert http.get("/workers/n1/chutes/ticker").status_code == 404
    # the root's own audit log has the calls
    paths = {r.get("path") for r in http.get("/audit", params={"limit": 200}).json()["items"]}
    assert "/api/v1/workers/n1/chutes" in paths
