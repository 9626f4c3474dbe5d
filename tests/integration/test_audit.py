"""The audit log over the served API (docs/security.md, "Audit log").

Every mutating route of the app (walked like test_authorization does, so a route added
without a record fails here) is called and must leave a record naming its route template,
method, status and caller; refused calls (401, 403, a failed login) are records too; only
admins read the log; records survive a restart of the manager.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.routing import iter_route_contexts
from typer.testing import CliRunner, Result

from edgeplane.cli.main import app as cli_app
from edgeplane.client import AsyncClient, Client
from edgeplane.config import Settings
from edgeplane.roles.up import Stack, running_stack

pytestmark = pytest.mark.timeout(120)

TOKEN = "audit-admin-token-0123456789abcdef0123"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PASSWORD = "correct horse battery"
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
HOST = {"runtime": "host", "command": ["true"]}


def settings(tmp_path: Path, broker: str, domain: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "broker": broker,
        "store": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "port": 0,
        "workers": 1,
        "heartbeat_s": 0.3,
        "domain": domain,
        "admin_token": TOKEN,
        "allow_host": True,
    }
    return Settings(**{**values, **overrides})


@pytest.fixture
async def served(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    async with (
        running_stack(settings(tmp_path, fast_broker_url, unique_domain)) as stack,
        httpx.AsyncClient(base_url=stack.control.url, timeout=30) as http,
    ):
        yield stack, http


async def records(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    answer = await http.get("/api/v1/audit", params={"limit": 1000, **params}, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def login(http: httpx.AsyncClient, name: str, role: str) -> dict[str, str]:
    body = {"name": name, "password": PASSWORD, "role": role}
    made = await http.post("/api/v1/users", json=body, headers=ADMIN)
    assert made.status_code == 201, made.text
    pair = await http.post("/api/v1/auth/login", json={"name": name, "password": PASSWORD})
    assert pair.status_code == 200, pair.text
    return {"Authorization": f"Bearer {pair.json()['access_token']}"}


async def test_every_mutating_route_leaves_a_record(
    served: tuple[Stack, httpx.AsyncClient],
) -> None:
    stack, http = served
    app = stack.control.app
    assert app is not None
    routes = sorted(
        (method, context.path)
        for context in iter_route_contexts(app.routes)
        for method in context.methods or ()
        if method in MUTATING
    )
    assert len(routes) > 20  # the app's routes were read
    answered: dict[str, tuple[str, str, int]] = {}
    for n, (method, path) in enumerate(routes):
        assert path.startswith("/api/v1/"), f"{method} {path}: mutating outside /api/v1"
        url = re.sub(r"\{\w+\}", "nope", path)  # no such resource: nothing is changed
        body: dict[str, Any] = {}
        if path == "/api/v1/auth/login":
            body = {"name": "ghost", "password": "not the password"}
        request_id = f"walk-{n}"
        headers = {**ADMIN, "X-Request-ID": request_id}
        response = await http.request(method, url, json=body, headers=headers)
        assert response.status_code < 500, (method, path, response.text)
        answered[request_id] = (method, path, response.status_code)

    found = {r["request_id"]: r for r in await records(http) if r["request_id"]}
    for request_id, (method, path, status) in answered.items():
        assert request_id in found, f"{method} {path}: no audit record"
        record = found[request_id]
        assert (record["action"], record["route"], record["status"]) == (method, path, status)
        assert record["client"] == "127.0.0.1"
        if path == "/api/v1/auth/login":  # a failed login names who tried
            assert (record["actor"], record["status"], record["token_id"]) == ("ghost", 401, None)
        elif path == "/api/v1/auth/refresh":
            assert record["actor"] == "anonymous"
        else:
            assert (record["actor"], record["token_id"]) == ("admin", "admin")
        if path.endswith("/versions/{version}"):  # a version in the chute store
            assert record["resource_id"] == "nope@nope"
        elif "{" in path:
            assert record["resource_id"] == "nope"


async def test_calls_are_recorded_without_bodies_or_secrets(
    served: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = served
    vera = await login(http, "vera", "viewer")
    # the fast path: who, what, the created task's id and project
    body = {**HOST, "env": {"K": "s3cret-env"}}
    created = await http.post("/api/v1/tasks", json=body, headers=ADMIN)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    token = await http.post("/api/v1/tokens", json={"name": "ci"}, headers=ADMIN)
    secret = token.json()["token"]
    pair = (
        await http.post("/api/v1/auth/login", json={"name": "vera", "password": PASSWORD})
    ).json()
    refreshed = await http.post(
        "/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
    )
    assert refreshed.status_code == 200
    wrong = await http.post("/api/v1/auth/login", json={"name": "vera", "password": "guess123"})
    assert wrong.status_code == 401
    anonymous = await http.post("/api/v1/tasks", json=HOST)
    assert anonymous.status_code == 401
    refused = await http.post("/api/v1/tasks", json=HOST, headers=vera)
    assert refused.status_code == 403
    batch = await http.post("/api/v1/tasks/batch", json={"tasks": [HOST] * 3}, headers=ADMIN)
    assert batch.status_code == 201, batch.text

    log = await records(http)
    text = orjson.dumps(log).decode()
    for hidden in (secret, PASSWORD, "guess123", "s3cret-env", pair["refresh_token"], TOKEN):
        assert hidden not in text
    (task,) = [r for r in log if r["resource_id"] == task_id]
    assert task["route"] == "/api/v1/tasks" and task["resource"] == "task"
    assert (task["actor"], task["project"], task["status"]) == ("admin", "default", 201)
    (batched,) = [r for r in log if r["route"] == "/api/v1/tasks/batch"]
    assert (batched["resource_id"], batched["project"]) == ("batch of 3", "default")
    (made,) = [r for r in log if r["route"] == "/api/v1/tokens"]
    assert made["resource_id"] == token.json()["id"] and made["resource"] == "token"
    logins = [(r["actor"], r["status"]) for r in log if r["route"] == "/api/v1/auth/login"]
    assert logins == [("vera", 401), ("vera", 200), ("vera", 200)]  # newest first
    (refresh,) = [r for r in log if r["route"] == "/api/v1/auth/refresh"]
    assert (refresh["actor"], refresh["status"]) == ("vera", 200)
    assert [r["status"] for r in log if r["actor"] == "anonymous"] == [401]
    veras = [(r["path"], r["status"]) for r in log if r["actor"] == "vera"]
    assert ("/api/v1/tasks", 403) in veras
    metrics = (await http.get("/metrics")).text
    assert f"edgeplane_audit_written_total {float(len(log))}" in metrics
    assert "edgeplane_audit_dropped_total 0.0" in metrics


async def test_only_admins_read_the_log_and_filters_page_it(
    served: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = served
    vera = await login(http, "vera", "viewer")
    opal = await login(http, "opal", "operator")
    for who in (vera, opal):
        refused = await http.get("/api/v1/audit", headers=who)
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
    assert (await http.get("/api/v1/audit")).status_code == 401

    ids = []
    for _ in range(5):
        made = await http.post("/api/v1/tasks", json=HOST, headers=opal)
        ids.append(made.json()["id"])
    await http.delete(f"/api/v1/tasks/{ids[0]}", headers=opal)

    mine = await records(http, actor="opal", resource="task")
    assert [r["resource_id"] for r in mine] == [ids[0], *reversed(ids)]
    assert [r["resource_id"] for r in await records(http, method="delete")] == [ids[0]]
    assert [r["resource_id"] for r in await records(http, action="Delete")] == [ids[0]]
    assert [r["resource_id"] for r in await records(http, resource=f"task/{ids[2]}")] == [ids[2]]
    # cursor paging: newest first, pages that neither skip nor repeat
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"actor": "opal", "resource": "task", "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await http.get("/api/v1/audit", params=params, headers=ADMIN)).json()
        seen += [r["resource_id"] for r in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [r["resource_id"] for r in mine]
    newest = mine[0]["at"]
    assert await records(http, actor="opal", since=newest + 1) == []
    assert len(await records(http, actor="opal", resource="task", until=newest)) == 5
    bad_ones: list[dict[str, Any]] = [
        {"limit": 0},
        {"limit": 5000},
        {"cursor": 0},
        {"cursor": 2**64},  # past what a store can hold: refused, not a 500
        {"since": "soon"},
        {"until": "inf"},
        {"actor": "a" * 300},
    ]
    for bad in bad_ones:
        answer = await http.get("/api/v1/audit", params=bad, headers=ADMIN)
        assert answer.status_code == 422, (bad, answer.text)
    both = {"action": "POST", "method": "DELETE"}
    mixed = await http.get("/api/v1/audit", params=both, headers=ADMIN)
    assert mixed.status_code == 422


@pytest.mark.skipif(
    __import__("shutil").which("mosquitto") is None, reason="mosquitto is not installed"
)
async def test_records_survive_a_restart(tmp_path: Path, unique_domain: str) -> None:
    """Calls and identity changes written by one manager process are read by the next
    (the in-process worker's credentials: issued, then rotated at the second start)."""
    up = settings(tmp_path, "", unique_domain)  # its own Mosquitto: identities are managed
    async with running_stack(up) as stack, httpx.AsyncClient(base_url=stack.control.url) as http:
        made = await http.post("/api/v1/tasks", json=HOST, headers=ADMIN)
        assert made.status_code == 201
        task_id = made.json()["id"]
    async with running_stack(up) as stack, httpx.AsyncClient(base_url=stack.control.url) as http:
        log = await records(http)
    assert [r["action"] for r in log if r["resource_id"] == task_id] == ["POST"]
    worker = stack.workers[0].id
    changes = [r["action"] for r in log if r["resource"] == "worker" and r["resource_id"] == worker]
    assert changes == ["worker.credentials_rotated", "worker.credentials_issued"]
    assert {r["actor"] for r in log if r["resource"] == "worker"} == {"system"}


async def test_the_cli_and_the_clients_read_the_log(
    served: tuple[Stack, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, http = served
    monkeypatch.setenv("EDGEPLANE_DATA_DIR", str(tmp_path / "cli"))
    for name in ("EDGEPLANE_TOKEN", "EDGEPLANE_ADMIN_TOKEN", "EDGEPLANE_URL", "EDGEPLANE_OUTPUT"):
        monkeypatch.delenv(name, raising=False)
    url = str(http.base_url)
    ids = [(await http.post("/api/v1/tasks", json=HOST, headers=ADMIN)).json()["id"] for _ in "ab"]

    async def cli(*args: str) -> Result:
        given = ["--url", url, "--token", TOKEN]
        return await asyncio.to_thread(
            CliRunner().invoke, cli_app, [*given, "audit", *args], catch_exceptions=False
        )

    shown = await cli("--actor", "admin", "--resource", "task", "--since", "1h", "--json")
    assert shown.exit_code == 0, shown.output
    page = orjson.loads(shown.stdout)
    assert [r["resource_id"] for r in page["items"]] == ids[::-1] and page["next"] is None
    first = await cli("--resource", "task", "--limit", "1", "--output", "json")
    assert [r["resource_id"] for r in orjson.loads(first.stdout)["items"]] == [ids[1]]
    table = await cli("--resource", "task", "--limit", "1")
    assert table.exit_code == 0 and "/api/v1/tasks" in table.stdout and ids[1] in table.stdout
    assert "--cursor" in table.stderr  # how to go on
    for bad in (["--since", "yesterday"], ["--until", "-5"], ["--limit", "0"], ["--cursor", "0"]):
        refused = await cli(*bad)
        assert refused.exit_code == 2, (bad, refused.output)

    def blocking() -> None:  # on a thread: this loop serves the API
        with Client(url, TOKEN) as client:
            assert [r.resource_id for r in client.audit(resource="task").items] == ids[::-1]
            older = client.audit(resource="task", limit=1)
            assert older.next is not None
            rest = client.audit(resource="task", cursor=older.next)
            assert [r.resource_id for r in rest.items] == [ids[0]]

    await asyncio.to_thread(blocking)
    async with AsyncClient(url, TOKEN) as aclient:
        found = await aclient.audit(actor="admin", action="POST", resource=f"task/{ids[0]}")
        assert [r.resource_id for r in found.items] == [ids[0]]
