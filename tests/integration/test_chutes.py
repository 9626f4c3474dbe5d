"""Chutes through the node-local Edge API, end to end: a real uvicorn, real runc, busybox
images built offline; every change followed to its end and the node checked after it."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane.chutes.edgeapi import EdgeApi
from edgeplane.chutes.node import Node
from edgeplane.runtimes.container import find_runc
from edgeplane.transport import free_port
from oci_fixtures import busybox_containers_unavailable, images_with_busybox

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
    ),
]

HTTPD = (
    "mkdir -p /tmp/w && echo hi > /tmp/w/index.html && echo started && httpd -f -p 8080 -h /tmp/w"
)
MANIFEST = f"""
name: hello
version: "1.0"
description: a tiny web page
services:
  - name: web
    image: busybox
    command: ["sh", "-c", "{HTTPD}"]
    env: {{GREETING: hi}}
    ports: [{{host: PORT, chute: 8080, protocol: tcp}}]
    healthcheck: {{http: {{port: 8080, path: /}}, interval_s: 0.2, timeout_s: 1, retries: 3}}
    depends_on: []
  - name: side
    image: busybox
    command: ["sh", "-c", "cat /run/chute/config.json; echo; exec sleep 1000"]
    healthcheck: {{exec: [cat, /run/chute/config.json], interval_s: 0.2}}
    depends_on: [web]
resources: {{cpu_shares: 1024, memory_mb: 64, pids: 64, disk_mb: 1024,
            bandwidth_kbit: {{egress: 10000, ingress: 10000}}}}
web: {{service: web, port: 8080}}
config: {{colour: blue}}
"""


def manifest(**changes: Any) -> dict[str, Any]:
    from edgeplane import safeyaml

    found: dict[str, Any] = safeyaml.load(MANIFEST.replace("PORT", str(free_port())))
    found.update(changes)
    return found


def runc_list(state_dir: Path) -> list[dict[str, Any]]:
    runc = find_runc()
    assert runc is not None
    said = subprocess.run(
        [runc, "--root", str(state_dir), "list", "--format", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return list(json.loads(said.stdout) or [])


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[EdgeApi]:
    images = images_with_busybox(tmp_path / "images")
    node = Node(tmp_path / "worker", images, grace_s=0.3, settle_s=0.5, healthy_within_s=5)
    api = EdgeApi(node, tmp_path / "worker", f"127.0.0.1:{free_port()}")
    await api.start()
    try:
        yield api
    finally:
        for name in node.names():  # leave no container behind, whatever the test did
            change = await node.act(name, "delete")
            await asyncio.wait_for(node.changes.wait(change.id), 30)
        await api.stop()
        runc = find_runc()
        for left in runc_list(node.state_dir) if runc and node.state_dir.exists() else []:
            argv = [runc, "--root", str(node.state_dir), "delete", "--force", left["id"]]
            await asyncio.to_thread(subprocess.run, argv, capture_output=True, check=False)


@pytest.fixture
async def client(edge: EdgeApi) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{edge.port}/api/v1",
        headers={"Authorization": f"Bearer {edge.token}"},
        timeout=30,
    ) as http:
        yield http


async def finished(client: httpx.AsyncClient, answer: httpx.Response) -> dict[str, Any]:
    """The change ``answer`` started, followed through its SSE stream to its end."""
    assert answer.status_code == 202, answer.text
    change_id = answer.json()["change_id"]
    last: dict[str, Any] = {}
    async with client.stream("GET", f"/changes/{change_id}/stream") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                last = json.loads(line.removeprefix("data: "))
    assert last["state"] in ("done", "failed", "rolled_back")
    assert (await client.get(f"/changes/{change_id}")).json() == last
    return last


def assert_empty(edge: EdgeApi) -> None:
    """The node as before any chute: no container, no chute directory."""
    assert runc_list(edge.node.state_dir) == []
    installed = edge.node.root / "installed"
    assert not installed.exists() or list(installed.iterdir()) == []


async def test_lifecycle(edge: EdgeApi, client: httpx.AsyncClient) -> None:
    body = manifest()
    change = await finished(client, await client.post("/chutes", json=body))
    assert change["state"] == "done", change
    names = [s["name"] for s in change["steps"]]
    assert names[:3] == ["check ports", "prepare images", "write files"]
    assert names.index("start web") < names.index("start side")

    chute = (await client.get("/chutes/hello")).json()
    assert chute["state"] == "running" and chute["version"] == "1.0"
    assert chute["change_id"] == change["id"]
    assert [(s["name"], s["state"], s["healthy"]) for s in chute["services"]] == [
        ("web", "running", True),
        ("side", "running", True),
    ]
    assert chute["resources"]["memory_mb"] == 64
    assert [c["name"] for c in (await client.get("/chutes")).json()] == ["hello"]
    info = (await client.get("/info")).json()
    assert info["chutes"] == [{"name": "hello", "version": "1.0", "state": "running"}]
    assert info["hardware"]["cpus"] >= 1 and info["os"]["system"] == "Linux"

    logs = await client.get("/chutes/hello/logs")
    assert logs.text.startswith("started")
    side = await client.get("/chutes/hello/logs", params={"service": "side"})
    assert json.loads(side.text.splitlines()[0]) == {"colour": "blue"}
    params = {"service": "web", "follow": "true"}
    async with client.stream("GET", "/chutes/hello/logs", params=params) as stream:
        async for text in stream.aiter_text():
            assert text.startswith("started")
            break  # following goes on until the client leaves

    assert (await client.get("/chutes/hello/config")).json() == {"colour": "blue"}
    change = await finished(
        client, await client.put("/chutes/hello/config", json={"colour": "red", "n": 2})
    )
    assert change["state"] == "done"
    assert (await client.get("/chutes/hello/config")).json() == {"colour": "red", "n": 2}
    bad = await client.put("/chutes/hello/config", json={"../x": 1})
    assert bad.status_code == 422 and bad.json()["field"].startswith("config")

    assert (await finished(client, await client.post("/chutes/hello/stop")))["state"] == "done"
    chute = (await client.get("/chutes/hello")).json()
    assert chute["state"] == "stopped"
    assert {s["state"] for s in chute["services"]} == {"stopped"}
    assert runc_list(edge.node.state_dir) == []

    assert (await finished(client, await client.post("/chutes/hello/start")))["state"] == "done"
    chute = (await client.get("/chutes/hello")).json()
    assert chute["state"] == "running"
    pids = {s["name"]: s["pid"] for s in chute["services"]}
    side = await client.get("/chutes/hello/logs", params={"service": "side"})
    assert {"colour": "red", "n": 2} in [
        json.loads(x) for x in side.text.splitlines() if x.startswith("{")
    ]

    assert (await finished(client, await client.post("/chutes/hello/restart")))["state"] == "done"
    chute = (await client.get("/chutes/hello")).json()
    assert chute["state"] == "running"
    assert all(s["pid"] != pids[s["name"]] for s in chute["services"])

    assert (await finished(client, await client.delete("/chutes/hello")))["state"] == "done"
    assert (await client.get("/chutes/hello")).status_code == 404
    assert_empty(edge)


async def test_bad_input_is_a_problem_naming_the_field(client: httpx.AsyncClient) -> None:
    body = manifest()
    body["services"][0]["bogus"] = 1
    answer = await client.post("/chutes", json=body)
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["field"] == "services.0.bogus"
    yaml = "name: Bad_Name\nversion: '1'\nservices: [{name: a, image: busybox}]\n"
    answer = await client.post(
        "/chutes", content=yaml, headers={"content-type": "application/yaml"}
    )
    assert answer.status_code == 422 and answer.json()["field"] == "name"
    assert (await client.get("/chutes/nope")).status_code == 404
    assert (await client.post("/chutes/..%2Fetc/stop")).status_code in (404, 422)
    assert (await client.post("/chutes/hello/explode")).status_code in (404, 422)
    unauthorized = await client.get("/chutes", headers={"Authorization": "Bearer wrong"})
    assert unauthorized.status_code == 401


@pytest.mark.parametrize(
    ("what", "service", "step"),
    [
        ("image missing", {"image": "nosuchimage"}, "prepare images"),
        ("exits at once", {"command": ["sh", "-c", "echo bye; exit 3"]}, "wait until healthy"),
        (
            "never healthy",
            {
                "command": ["sleep", "1000"],
                "healthcheck": {"tcp": {"port": 9}, "interval_s": 0.1, "retries": 2},
            },
            "wait until healthy",
        ),
        (
            "exec check fails",
            {"command": ["sleep", "1000"], "healthcheck": {"exec": ["false"], "interval_s": 0.1}},
            "wait until healthy",
        ),
    ],
)
async def test_a_failing_install_rolls_back_fully(
    edge: EdgeApi, client: httpx.AsyncClient, what: str, service: dict[str, Any], step: str
) -> None:
    body = manifest()
    body["services"] = [{**body["services"][1], "depends_on": [], **service}]
    body.pop("web")
    change = await finished(client, await client.post("/chutes", json=body))
    assert change["state"] == "rolled_back", (what, change)
    failed = [s for s in change["steps"] if s["state"] == "failed"]
    assert [s["name"] for s in failed] == [step]
    assert change["error"]
    assert (await client.get("/chutes/hello")).status_code == 404
    assert (await client.get("/chutes")).json() == []
    assert_empty(edge)


async def test_a_port_already_taken_fails_the_change(
    edge: EdgeApi, client: httpx.AsyncClient
) -> None:
    first = manifest()
    assert (await finished(client, await client.post("/chutes", json=first)))["state"] == "done"
    second = manifest(name="other")
    second["services"][0]["ports"] = first["services"][0]["ports"]
    change = await finished(client, await client.post("/chutes", json=second))
    assert change["state"] == "rolled_back" and "taken by chute 'hello'" in change["error"]
    assert [c["name"] for c in (await client.get("/chutes")).json()] == ["hello"]
    assert {c["id"].split("-")[1] for c in runc_list(edge.node.state_dir)} == {"hello"}


async def test_a_port_in_use_on_the_node_fails_the_change(
    edge: EdgeApi, client: httpx.AsyncClient
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        body = manifest()
        body["services"][0]["ports"] = [{"host": taken.getsockname()[1], "chute": 8080}]
        change = await finished(client, await client.post("/chutes", json=body))
    assert change["state"] == "rolled_back" and "in use on this node" in change["error"]
    assert [s["state"] for s in change["steps"]][:2] == ["failed", "pending"]
    assert_empty(edge)


async def test_a_service_that_dies_shows_the_chute_failed(
    edge: EdgeApi, client: httpx.AsyncClient
) -> None:
    body = manifest()
    assert (await finished(client, await client.post("/chutes", json=body)))["state"] == "done"
    chute = (await client.get("/chutes/hello")).json()
    side = next(s for s in chute["services"] if s["name"] == "side")
    runc = find_runc()
    assert runc is not None
    argv = [runc, "--root", str(edge.node.state_dir), "kill", side["container"], "KILL"]
    await asyncio.to_thread(subprocess.run, argv, check=True)

    async def failed() -> dict[str, Any]:
        while True:
            found: dict[str, Any] = (await client.get("/chutes/hello")).json()
            if found["state"] == "failed":
                return found
            await asyncio.sleep(0.05)

    found = await asyncio.wait_for(failed(), 10)
    states = {s["name"]: (s["state"], s["healthy"]) for s in found["services"]}
    assert states == {"web": ("running", True), "side": ("stopped", False)}
    # a restart brings it back
    assert (await finished(client, await client.post("/chutes/hello/restart")))["state"] == "done"
    assert (await client.get("/chutes/hello")).json()["state"] == "running"


async def test_update_replaces_only_once_healthy(edge: EdgeApi, client: httpx.AsyncClient) -> None:
    body = manifest()
    assert (await finished(client, await client.post("/chutes", json=body)))["state"] == "done"
    before = (await client.get("/chutes/hello")).json()

    broken = {**body, "version": "2.0"}
    broken["services"] = [dict(s) for s in body["services"]]
    broken["services"][0]["command"] = ["sh", "-c", "exit 1"]
    change = await finished(client, await client.put("/chutes/hello", json=broken))
    assert change["state"] == "rolled_back"
    after = (await client.get("/chutes/hello")).json()
    assert after["version"] == "1.0" and after["state"] == "running"
    assert [s["pid"] for s in after["services"]] == [s["pid"] for s in before["services"]]
    assert len(runc_list(edge.node.state_dir)) == 2

    good = {**body, "version": "2.0"}
    assert (await finished(client, await client.put("/chutes/hello", json=good)))["state"] == "done"
    after = (await client.get("/chutes/hello")).json()
    assert after["version"] == "2.0" and after["state"] == "running"
    assert {s["container"] for s in after["services"]} == {
        c["id"] for c in runc_list(edge.node.state_dir)
    }
