"""The dashboard served by the real stack (`running_stack`, what `edgeplane up` runs).

The page loads with no token, `/` leads to it, and every API path its script calls exists
and answers with the fields the script reads: on a single cluster and on a root (where
`/workers` is absent by design and the page says so).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest

from edgeplane.api.dashboard import page
from edgeplane.config import Settings
from edgeplane.model import TaskState
from edgeplane.roles.up import running_stack

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECTIONS = ("clusters", "workers", "tasks", "applications", "workflows")

#: the fields the page's script reads from each list's items
READS: dict[str, set[str]] = {
    "clusters": {"id", "name", "state", "aggregate", "location", "active_tasks"},
    "workers": {"id", "cluster_id", "state", "capabilities", "usage", "active_tasks", "last_seen"},
    "tasks": {"id", "name", "runtime", "state", "worker_id", "cluster_id", "attempt", "error"},
    "applications": {"name", "state", "services"},
    "workflows": {"id", "name", "state", "task_ids", "created_at", "finished_at", "reason"},
}
SERVICE_READS = {"name", "running", "replicas", "instances"}
INSTANCE_READS = {"state", "cluster_id", "worker_id", "restarts"}
SLEEPER = {"runtime": "host", "command": ["sleep", "60"]}


def script_of(html: str) -> str:
    (script,) = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    return str(script)


def api_paths(html: str) -> set[str]:
    return set(re.findall(r"""["'](/api/v1/[a-z/]+)["']""", script_of(html)))


def task_states(html: str) -> tuple[str, ...]:
    (listed,) = re.findall(r"const TASK_STATES = \[([^\]]*)\]", html)
    return tuple(re.findall(r'"([a-z]+)"', listed))


async def start(
    tmp_path: Path, broker: str, domain: str, clusters: int
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        data_dir=tmp_path,
        broker=broker,
        store=f"sqlite:///{tmp_path / 'db.sqlite'}",
        port=0,
        workers=1,
        clusters=clusters,
        heartbeat_s=0.3,
        aggregate_interval_s=0.3,
        domain=domain,
        admin_token=TOKEN,
        allow_host=True,
    )
    async with (
        running_stack(settings) as stack,
        httpx.AsyncClient(base_url=stack.control.url, timeout=30) as http,
    ):
        yield http


@pytest.fixture
async def single(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[httpx.AsyncClient]:
    async for http in start(tmp_path, fast_broker_url, unique_domain, clusters=0):
        yield http


@pytest.fixture
async def rooted(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[httpx.AsyncClient]:
    async for http in start(tmp_path, fast_broker_url, unique_domain, clusters=1):
        yield http


async def get_page(http: httpx.AsyncClient) -> str:
    response = await http.get("/dashboard")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response.text


async def first_instance(http: httpx.AsyncClient, app_id: str) -> dict[str, Any]:
    """The application's first instance once it is placed on a worker."""
    while True:
        doc = (await http.get(f"/api/v1/applications/{app_id}", headers=AUTH)).json()
        placed = [i for s in doc["services"] for i in s["instances"] if i["worker_id"]]
        if placed:
            return dict(placed[0])
        await asyncio.sleep(0.05)


async def test_page_loads_without_a_token(single: httpx.AsyncClient) -> None:
    html = await get_page(single)
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    assert 'id="token-input"' in html
    assert "workers are listed by each cluster's manager" in html

    # the policy allows exactly the page's own script, by hash
    policy = (await single.get("/dashboard")).headers["content-security-policy"]
    digest = base64.b64encode(hashlib.sha256(script_of(html).encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy
    assert "connect-src 'self'" in policy

    root = await single.get("/")
    assert root.is_redirect
    assert root.headers["location"] == "/dashboard"

    # what the page answers by asking for the token again
    assert (await single.get("/api/v1/clusters")).status_code == 401
    assert (await single.get("/api/v1/clusters", headers=AUTH)).status_code == 200


async def test_every_call_of_the_page_answers_on_a_cluster(single: httpx.AsyncClient) -> None:
    html = await get_page(single)
    paths = api_paths(html)
    assert paths == {f"/api/v1/{name}" for name in SECTIONS}
    assert task_states(html) == get_args(TaskState)

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        created = await single.post(f"/api/v1/{path}", json=body, headers=AUTH)
        assert created.status_code == 201, created.text
        return dict(created.json())

    await post("tasks", {"name": "true", "runtime": "host", "command": ["true"], "start": True})
    await post("workflows", {"name": "wf", "tasks": [{"name": "t", **SLEEPER}]})
    app = await post("applications", {"name": "shop", "services": [{"name": "web", **SLEEPER}]})
    instance = await first_instance(single, app["id"])
    assert instance.keys() >= INSTANCE_READS

    for path in sorted(paths):
        # the page asks for up to 1000 items at once, and for the tail of a list by offset
        response = await single.get(path, params={"limit": 1000, "offset": 0}, headers=AUTH)
        assert response.status_code == 200, (path, response.text)
        listed = response.json()
        assert listed["total"] >= 1, path
        for item in listed["items"]:
            assert item.keys() >= READS[path.rsplit("/", 1)[1]], (path, item)
        if path.endswith("/applications"):
            for service in listed["items"][0]["services"]:
                assert service.keys() >= SERVICE_READS

    counts = 0
    for state in task_states(html):
        response = await single.get(
            "/api/v1/tasks", params={"state": state, "limit": 1}, headers=AUTH
        )
        assert response.status_code == 200, (state, response.text)
        counts += response.json()["total"]
    everything = await single.get("/api/v1/tasks", params={"limit": 1}, headers=AUTH)
    assert counts == everything.json()["total"] >= 3  # a task, a workflow's, an instance's


async def test_every_call_answers_on_a_root_but_workers(rooted: httpx.AsyncClient) -> None:
    html = await get_page(rooted)
    for path in sorted(api_paths(html)):
        response = await rooted.get(path, params={"limit": 1}, headers=AUTH)
        expected = 404 if path.endswith("/workers") else 200
        assert response.status_code == expected, (path, response.text)


def test_inline_script_is_valid_javascript(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = tmp_path / "dashboard.js"
    script.write_text(script_of(page().html), encoding="utf-8")
    checked = subprocess.run(
        [node, "--check", str(script)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr
