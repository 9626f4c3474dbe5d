"""The dashboard served by the real stack (`running_stack`, what `edgeplane up` runs).

The page and its files load with no token, `/` leads to it, nothing inline runs under
its policy, and every list its script reads exists and answers with the fields the script
reads: on a single cluster and on a root (where `/workers` is absent by design and the
page says so). The pages themselves, in a browser: tests/browser.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest

from edgeplane.api.dashboard import read
from edgeplane.config import Settings
from edgeplane.model import TaskState
from edgeplane.roles.up import running_stack

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECTIONS = ("clusters", "workers", "tasks", "applications", "workflows", "jobs", "schedules")

#: the fields the page's script reads from each list's items
READS: dict[str, set[str]] = {
    "clusters": {"id", "name", "state", "aggregate", "location", "active_tasks"},
    "workers": {"id", "cluster_id", "state", "capabilities", "usage", "active_tasks", "last_seen"},
    "tasks": {"id", "name", "runtime", "state", "worker_id", "cluster_id", "attempt", "error"},
    "applications": {"name", "state", "services"},
    "workflows": {"id", "name", "state", "task_ids", "created_at", "finished_at", "reason"},
    "jobs": {"id", "name", "state", "task_ids", "created_at", "finished_at", "reason"},
    "schedules": {
        "id",
        "name",
        "kind",
        "cron",
        "timezone",
        "catch_up",
        "paused",
        "next_run",
        "runs",
    },
}
SERVICE_READS = {"name", "running", "replicas", "instances"}
INSTANCE_READS = {"state", "cluster_id", "worker_id", "restarts"}
SLEEPER = {"runtime": "host", "command": ["sleep", "60"]}


def script() -> str:
    return read("app.js")


def api_paths(js: str) -> set[str]:
    """The lists the script reads (``api("/tasks", ...)``, ``newestPage("/jobs", ...)``)."""
    found = re.findall(r"""(?:api|newestPage)\(["'](/[a-z]+)["']""", js)
    return {f"/api/v1{path}" for path in found} | {"/api/v1/jobs", "/api/v1/workflows"}


def task_states(js: str) -> tuple[str, ...]:
    (listed,) = re.findall(r"const TASK_STATES = \[([^\]]*)\]", js)
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
    assert 'id="token-input"' in html and 'id="password-form"' in html
    # nothing inline: the policy allows the page's own files and nothing else
    assert not re.search(r"<script>|<style>|\son[a-z]+=|style=", html)
    policy = (await single.get("/dashboard")).headers["content-security-policy"]
    assert "script-src 'self';" in policy and "style-src 'self';" in policy
    assert "connect-src 'self'" in policy and "unsafe" not in policy
    for name, media_type in (("app.js", "text/javascript"), ("app.css", "text/css")):
        served = await single.get(f"/dashboard/assets/{name}")
        assert served.status_code == 200, name
        assert served.headers["content-type"].startswith(media_type)
        assert f"/dashboard/assets/{name}" in html
    assert (await single.get("/dashboard/assets/index.py")).status_code == 404
    assert (await single.get("/dashboard/assets/..%2Fdashboard.py")).status_code == 404
    assert "workers are listed by each cluster's manager" in script()

    root = await single.get("/")
    assert root.is_redirect
    assert root.headers["location"] == "/dashboard"

    # what the page answers by asking for the token again
    assert (await single.get("/api/v1/clusters")).status_code == 401
    assert (await single.get("/api/v1/events")).status_code == 401
    assert (await single.get("/api/v1/clusters", headers=AUTH)).status_code == 200


async def test_every_call_of_the_page_answers_on_a_cluster(single: httpx.AsyncClient) -> None:
    paths = api_paths(script())
    assert paths == {f"/api/v1/{name}" for name in SECTIONS}
    assert task_states(script()) == get_args(TaskState)

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        created = await single.post(f"/api/v1/{path}", json=body, headers=AUTH)
        assert created.status_code == 201, created.text
        return dict(created.json())

    await post("tasks", {"name": "true", "runtime": "host", "command": ["true"], "start": True})
    await post(
        "tasks", {"name": "cron", "runtime": "host", "command": ["true"], "schedule": "0 0 * * *"}
    )
    await post("workflows", {"name": "wf", "tasks": [{"name": "t", **SLEEPER}]})
    await post("jobs", {"name": "job", "tasks": [{"name": "t", **SLEEPER}]})
    app = await post("applications", {"name": "shop", "services": [{"name": "web", **SLEEPER}]})
    instance = await first_instance(single, app["id"])
    assert instance.keys() >= INSTANCE_READS

    for path in sorted(paths):
        # the page reads the tail of a list by offset
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
    for state in task_states(script()):
        response = await single.get(
            "/api/v1/tasks", params={"state": state, "limit": 1}, headers=AUTH
        )
        assert response.status_code == 200, (state, response.text)
        counts += response.json()["total"]
    everything = await single.get("/api/v1/tasks", params={"limit": 1}, headers=AUTH)
    assert counts == everything.json()["total"] >= 3  # a task, a workflow's, an instance's


async def test_every_call_answers_on_a_root_but_workers(rooted: httpx.AsyncClient) -> None:
    for path in sorted(api_paths(script())):
        response = await rooted.get(path, params={"limit": 1}, headers=AUTH)
        expected = 404 if path.endswith("/workers") else 200
        assert response.status_code == expected, (path, response.text)


def test_the_script_is_valid_javascript(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    path = tmp_path / "dashboard.mjs"
    path.write_text(script(), encoding="utf-8")
    checked = subprocess.run(
        [node, "--check", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr
