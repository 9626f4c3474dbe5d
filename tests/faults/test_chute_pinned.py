"""A chute's ``oci://`` image named by a tag is pinned to its manifest digest when the
chute is installed or updated (docs/chutes.md, "Images"): a restart runs exactly what was
pinned, from the node's copy, with the registry and the proxy gone, even after the worker
was killed -9; the tag moving in the registry changes nothing until ``update``.

A real registry, a real manager (the cluster's proxy), a real ``edgeplane worker --api``
process and real busybox containers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane.runtimes.busybox import BUSYBOX_CONFIG, busybox_layer, write_image
from faults.procs import Lab, wait_until
from faults.test_chute_worker import chute, running_node
from faults.test_chutes_remote import Stack
from oci_fixtures import busybox_containers_unavailable
from registry_fixtures import RegistryProcess, skopeo_push

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
    ),
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def push(registry: RegistryProcess, root: Path, which: str) -> str:
    """Push a busybox image saying ``which`` as ``busybox:1``; the digest the tag names."""
    config = {**BUSYBOX_CONFIG, "Env": [*BUSYBOX_CONFIG["Env"], f"WHICH={which}"]}
    write_image(root / which, [busybox_layer()], config, tag="1")
    skopeo_push(root / which, "1", registry, "busybox")
    answer = httpx.head(
        f"http://{registry.address}/v2/busybox/manifests/1",
        headers={"Accept": OCI_MANIFEST},
        timeout=10,
    )
    answer.raise_for_status()
    return answer.headers["Docker-Content-Digest"]


def test_a_pinned_chute_restarts_without_registry_or_proxy(
    lab: Lab, oci_registry: RegistryProcess, tmp_path: Path
) -> None:
    first = push(oci_registry, tmp_path / "images", "one")
    image = f"oci://{oci_registry.address}/busybox:1"
    spec = chute("pinned", image=image, command=["sh", "-c", "echo which-$WHICH; exec sleep 1000"])
    with running_node(lab) as node:
        stack = Stack(lab, node)
        http = stack.http

        def shown() -> dict[str, Any]:
            found: dict[str, Any] = http.get("/workers/n1/chutes/pinned").json()
            return found

        def runs(which: str, via: httpx.Client, prefix: str) -> None:
            """The chute running, and the last line of its log from image ``which``."""

            def said() -> bool:
                status = via.get(f"{prefix}/chutes/pinned").json()
                lines = via.get(f"{prefix}/chutes/pinned/logs").text.split()
                return status["state"] == "running" and lines[-1:] == [f"which-{which}"]

            wait_until(said, f"the chute running image {which}", timeout=60, watch=[node.role])

        answer = http.post("/workers/n1/chutes", json=spec)
        assert answer.status_code == 202, answer.text
        change = stack.ended(answer.json()["change_id"])
        assert change["state"] == "done", change
        assert change["images"] == {"main": f"{image}@{first}"}, change
        [service] = shown()["services"]
        assert service["image"] == image and service["pinned"] == f"{image}@{first}", service
        runs("one", http, "/workers/n1")
        got = stack.cli("get", "pinned")
        assert got.returncode == 0, got.stderr
        assert f"{image}@{first}" in "".join(got.stdout.split()), got.stdout  # (folded)

        # the tag moves: a restart still runs the pinned image
        second = push(oci_registry, tmp_path / "images", "two")
        assert second != first
        restarted = http.post("/workers/n1/chutes/pinned/restart")
        assert stack.ended(restarted.json()["change_id"])["state"] == "done"
        assert shown()["services"][0]["pinned"] == f"{image}@{first}"
        runs("one", http, "/workers/n1")

        # an explicit update resolves the tag again
        updated = http.put("/workers/n1/chutes/pinned", json=spec)
        assert updated.status_code == 202, updated.text
        change = stack.ended(updated.json()["change_id"])
        assert change["state"] == "done", change
        assert change["images"] == {"main": f"{image}@{second}"}, change
        assert shown()["services"][0]["pinned"] == f"{image}@{second}"
        runs("two", http, "/workers/n1")

        # neither the registry nor the proxy (the manager) answers: restarts still run
        oci_registry.stop()
        stack.manager.stop()
        edge = node.client
        restarted = edge.post("/chutes/pinned/restart")
        assert restarted.status_code == 202, restarted.text
        change = node.ended(restarted.json()["change_id"])
        assert change["state"] == "done", change
        runs("two", edge, "")

        # the worker killed -9 and started again: the chute restarts the same way
        node.role.kill9()
        node.start()
        restarted = edge.post("/chutes/pinned/restart")
        assert restarted.status_code == 202, restarted.text
        change = node.ended(restarted.json()["change_id"])
        assert change["state"] == "done", change
        runs("two", edge, "")
        status = edge.get("/chutes/pinned").json()
        assert status["services"][0]["pinned"] == f"{image}@{second}", status
