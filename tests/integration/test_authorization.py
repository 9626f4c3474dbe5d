"""Authorization generated over every route of the served API (``app.routes``, walked
into its included routers).

Each route is public only by the explicit allow-list below, or it refuses a caller without
a token (401), a viewer where it mutates (403), and a caller of another project a resource
of ``default`` (404, the answer of a resource that does not exist). A route added without
a place in :data:`KIND` fails the test: it has to be classified to be served.
"""

from __future__ import annotations

import asyncio
import re
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.routing import iter_route_contexts
from typer.testing import CliRunner, Result

from edgeplane.cli.main import app as cli_app
from edgeplane.config import Settings
from edgeplane.roles.up import running_stack

pytestmark = pytest.mark.timeout(120)

TOKEN = "authz-admin-token-0123456789abcdef0123"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PASSWORD = "correct horse battery"
#: Served without a token, on purpose: health, metrics, the API's description, the
#: dashboard page (its API calls need a token), login and refresh (their own credentials).
PUBLIC = {
    "/healthz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/static",
    "/redoc",
    "/",
    "/dashboard",
    "/dashboard/assets/{name}",
    "/api/v1/auth/login",
    "/api/v1/auth/refresh",
}
#: What each /api/v1 route guards: ``project`` (a resource of a project: 404 across
#: projects), ``fleet`` (workers, clusters: not in a project; admin to change), ``admin``
#: (users, join tokens, the audit log), ``own`` (a caller's own tokens), ``stream`` (the
#: event stream: never ends, so only its refusal is called here; tests/integration/
#: test_events.py follows it).
KIND = {
    "/api/v1/events": "stream",
    "/api/v1/tasks": "project",
    "/api/v1/tasks/batch": "project",
    "/api/v1/tasks/counts": "project",
    "/api/v1/tasks/{task_id}": "project",
    "/api/v1/tasks/{task_id}/start": "project",
    "/api/v1/tasks/{task_id}/stop": "project",
    "/api/v1/tasks/{task_id}/retry": "project",
    "/api/v1/tasks/{task_id}/results": "project",
    "/api/v1/tasks/{task_id}/logs": "project",
    "/api/v1/tasks/{task_id}/metrics": "project",
    "/api/v1/jobs": "project",
    "/api/v1/jobs/{run_id}": "project",
    "/api/v1/jobs/{run_id}/stop": "project",
    "/api/v1/workflows": "project",
    "/api/v1/workflows/{run_id}": "project",
    "/api/v1/workflows/{run_id}/stop": "project",
    "/api/v1/schedules": "project",
    "/api/v1/schedules/{schedule_id}": "project",
    "/api/v1/schedules/{schedule_id}/pause": "project",
    "/api/v1/schedules/{schedule_id}/resume": "project",
    "/api/v1/applications": "project",
    "/api/v1/applications/{app_id}": "project",
    "/api/v1/workers": "fleet",
    "/api/v1/workers/{worker_id}": "fleet",
    "/api/v1/workers/{worker_id}/drain": "fleet",
    "/api/v1/workers/{worker_id}/undrain": "fleet",
    "/api/v1/workers/{worker_id}/owner": "fleet",
    "/api/v1/workers/{worker_id}/metrics": "fleet",
    "/api/v1/workers/{worker_id}/chutes": "fleet",
    "/api/v1/workers/{worker_id}/chutes/{name}": "fleet",
    "/api/v1/workers/{worker_id}/chutes/{name}/{action}": "fleet",
    "/api/v1/workers/{worker_id}/chutes/{name}/logs": "fleet",
    "/api/v1/workers/{worker_id}/chutes/{name}/metrics": "fleet",
    "/api/v1/workers/{worker_id}/chutes/{name}/config": "fleet",
    "/api/v1/workers/{worker_id}/changes/{change_id}": "fleet",
    "/api/v1/workers/{worker_id}/changes/{change_id}/stream": "fleet",
    "/api/v1/clusters": "fleet",
    "/api/v1/clusters/{cluster_id}": "fleet",
    "/api/v1/clusters/{cluster_id}/metrics": "fleet",
    "/api/v1/clusters/{cluster_id}/workers/{worker_id}/metrics": "fleet",
    "/api/v1/join-tokens": "admin",
    "/api/v1/join-tokens/{token_id}": "admin",
    "/api/v1/users": "admin",
    "/api/v1/users/{name}": "admin",
    "/api/v1/tokens": "own",
    "/api/v1/tokens/{token_id}": "own",
    "/api/v1/audit": "admin",
    "/api/v1/store/chutes": "project",
    "/api/v1/store/chutes/{name}": "project",
    "/api/v1/store/chutes/{name}/versions/{version}": "project",
    "/api/v1/fl/experiments": "project",
    "/api/v1/fl/experiments/{experiment_id}": "project",
    "/api/v1/fl/experiments/{experiment_id}/stop": "project",
    "/api/v1/fl/experiments/{experiment_id}/model": "project",
    # a training task's own credential (edgeplane.fl.tokens); a user's token is refused
    "/api/v1/fl/experiments/{experiment_id}/rounds/{round_no}/data": "client",
    "/api/v1/fl/experiments/{experiment_id}/rounds/{round_no}/updates": "client",
    "/api/v1/fl/experiments/{experiment_id}/assignment": "client",
}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
HOST = {"runtime": "host", "command": ["true"]}
CHUTE = {"name": "opal", "version": "1", "services": [{"name": "s", "image": "busybox"}]}


@dataclass
class World:
    http: httpx.AsyncClient
    routes: list[tuple[str, str]]
    ids: dict[str, str]
    #: bearer headers by user: vera (viewer, default), otto (operator, other), opal
    #: (operator, default)
    auth: dict[str, dict[str, str]]
    data: Path


async def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


@pytest.fixture
async def world(tmp_path: Path, fast_broker_url: str, unique_domain: str) -> AsyncIterator[World]:
    settings = Settings(
        data_dir=tmp_path,
        broker=fast_broker_url,
        store=f"sqlite:///{tmp_path / 'db.sqlite'}",
        port=0,
        workers=2,
        heartbeat_s=0.3,
        domain=unique_domain,
        admin_token=TOKEN,
        allow_host=True,
    )
    async with (
        running_stack(settings) as stack,
        httpx.AsyncClient(base_url=stack.control.url, timeout=30) as http,
    ):
        await _workers_known(http, len(stack.workers))
        app = stack.control.app
        assert app is not None
        # FastAPI keeps included routers as such in app.routes; this walks into them
        routes = [
            (method, context.path)
            for context in iter_route_contexts(app.routes)
            for method in sorted(context.methods or ())
            if method != "HEAD"
        ]
        auth: dict[str, dict[str, str]] = {}
        for name, role, project in (
            ("vera", "viewer", "default"),
            ("otto", "operator", "other"),
            ("opal", "operator", "default"),
        ):
            body = {"name": name, "password": PASSWORD, "role": role, "projects": [project]}
            await _ok(await http.post("/api/v1/users", json=body, headers=ADMIN), 201)
            login = {"name": name, "password": PASSWORD}
            pair = await _ok(await http.post("/api/v1/auth/login", json=login))
            auth[name] = {"Authorization": f"Bearer {pair['access_token']}"}
        opal = auth["opal"]
        ids = {
            "task_id": (await _ok(await http.post("/api/v1/tasks", json=HOST, headers=opal), 201))[
                "id"
            ],
            "job": (
                await _ok(
                    await http.post(
                        "/api/v1/jobs", json={"tasks": [HOST], "start": False}, headers=opal
                    ),
                    201,
                )
            )["id"],
            "workflow": (
                await _ok(
                    await http.post(
                        "/api/v1/workflows", json={"tasks": [HOST], "start": False}, headers=opal
                    ),
                    201,
                )
            )["id"],
            "schedule_id": (
                await _ok(
                    await http.post(
                        "/api/v1/tasks", json={**HOST, "schedule": "0 0 1 1 *"}, headers=opal
                    ),
                    201,
                )
            )["id"],
            "token_id": (
                await _ok(await http.post("/api/v1/tokens", json={"name": "ci"}, headers=opal), 201)
            )["id"],
            "name": "opal",
            "worker_id": stack.workers[0].id,
            "other_worker": stack.workers[1].id,
            "cluster_id": "c",
            "action": "stop",
            "change_id": "c0ffee",
        }
        fl_body = {"name": "fl", "workload": HOST, "rounds": 1, "clients_per_round": 1}
        created = await http.post("/api/v1/fl/experiments", json=fl_body, headers=opal)
        ids["experiment_id"] = (await _ok(created, 201))["id"]
        ids["round_no"] = "1"
        app_body = {"name": "web", "services": [{"name": "s", **HOST}]}
        created = await http.post("/api/v1/applications", json=app_body, headers=opal)
        ids["app_id"] = (await _ok(created, 201))["id"]
        # a chute in the store named as {name} fills in (opal's, in default)
        created = await http.post("/api/v1/store/chutes", json=CHUTE, headers=opal)
        ids["version"] = (await _ok(created, 201))["version"]
        yield World(http, routes, ids, auth, tmp_path)


async def _workers_known(http: httpx.AsyncClient, count: int) -> None:
    """Until the manager lists ``count`` workers (each registered)."""
    async with asyncio.timeout(30):
        # registration has no event to await here
        while (await _ok(await http.get("/api/v1/workers", headers=ADMIN)))["total"] < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def _url(path: str, ids: dict[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "run_id":
            return ids["job"] if path.startswith("/api/v1/jobs") else ids["workflow"]
        return ids[name]

    return re.sub(r"\{(\w+)\}", fill, path)


def _body(path: str) -> dict[str, Any]:
    """A valid body in project ``default`` for each route that takes one."""
    if path == "/api/v1/tasks/batch":
        return {"tasks": [HOST]}
    if path.startswith(("/api/v1/jobs", "/api/v1/workflows")):
        return {"tasks": [HOST]}
    if path.startswith("/api/v1/applications"):
        return {"name": "web", "services": [{"name": "s", **HOST}]}
    if path.startswith("/api/v1/tokens"):
        return {"name": "mine"}
    if path.startswith("/api/v1/users"):
        return {"name": "mallory", "password": PASSWORD, "role": "admin"}
    if path.endswith("/owner"):
        return {"owner": "vera"}
    if path == "/api/v1/fl/experiments":
        return {"name": "fl", "workload": HOST}
    if path == "/api/v1/store/chutes":
        return {**CHUTE, "version": "2"}
    return dict(HOST) if path == "/api/v1/tasks" else {}


async def _call(world: World, method: str, path: str, who: str | None) -> httpx.Response:
    headers = world.auth[who] if who else {}
    body = _body(path) if method in MUTATING and method != "DELETE" else None
    return await world.http.request(method, _url(path, world.ids), json=body, headers=headers)


async def test_every_route_is_public_by_the_list_or_guarded(world: World) -> None:
    assert len(world.routes) > 30  # the app's routes were read, not an empty list
    for method, path in world.routes:
        if path in PUBLIC:
            continue
        assert path.startswith("/api/v1/"), f"{method} {path}: public but not in PUBLIC"
        assert path in KIND, f"{method} {path}: not classified in KIND"
        response = await _call(world, method, path, None)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["content-type"] == "application/problem+json"


async def test_a_viewer_cannot_change_anything_but_their_own_tokens(world: World) -> None:
    checked = 0
    for method, path in world.routes:
        if path in PUBLIC or method not in MUTATING:
            continue
        response = await _call(world, method, path, "vera")
        # a token of theirs they may make; another's they do not even see
        own = 201 if method == "POST" else 404
        expected = own if KIND[path] == "own" else 403
        assert response.status_code == expected, (method, path, response.text)
        checked += 1
    assert checked > 10
    # reads are theirs: the same project's task is visible
    task = f"/api/v1/tasks/{world.ids['task_id']}"
    await _ok(await world.http.get(task, headers=world.auth["vera"]))


async def test_another_projects_resources_do_not_exist_for_a_caller(world: World) -> None:
    otto = world.auth["otto"]
    checked = 0
    for method, path in world.routes:
        if path in PUBLIC:
            continue
        kind = KIND[path]
        if kind in ("stream", "client"):
            continue
        response = await _call(world, method, path, "otto")
        if kind == "project":
            if "{" in path or method in MUTATING:
                assert response.status_code == 404, (method, path, response.text)
                checked += 1
            elif path == "/api/v1/tasks/counts":  # every state named, each 0 for them
                assert set(response.json().values()) == {0}, response.text
            else:  # a list: theirs only, so none
                assert response.json()["total"] == 0, (method, path, response.text)
        elif kind == "admin" or (kind == "fleet" and method in MUTATING):
            assert response.status_code == 403, (method, path, response.text)
        elif kind == "own" and method == "DELETE":
            assert response.status_code == 404, (method, path, response.text)
    assert checked > 15
    listed = await _ok(await world.http.get("/api/v1/tokens", headers=otto))
    assert all(t["user"] == "otto" for t in listed["items"])
    # the resources are all still there for their project
    opal = world.auth["opal"]
    counts = await _ok(await world.http.get("/api/v1/tasks/counts", headers=opal))
    listed = await _ok(await world.http.get("/api/v1/tasks", headers=opal))
    assert sum(counts.values()) == listed["total"] > 0
    await _ok(await world.http.get(f"/api/v1/tasks/{world.ids['task_id']}", headers=opal))
    await _ok(await world.http.get(f"/api/v1/applications/{world.ids['app_id']}", headers=opal))


async def test_the_store_and_its_log_are_the_owners_only(world: World) -> None:
    assert stat.S_IMODE(world.data.stat().st_mode) == 0o700
    files = sorted(world.data.glob("db.sqlite*"))
    assert [f.name for f in files] == ["db.sqlite", "db.sqlite-shm", "db.sqlite-wal"]
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}


async def test_login_is_rate_limited_per_user(world: World) -> None:
    wrong = {"name": "vera", "password": "not her password"}
    for _ in range(5):
        refused = await world.http.post("/api/v1/auth/login", json=wrong)
        assert refused.status_code == 401, refused.text
    limited = await world.http.post("/api/v1/auth/login", json=wrong)
    assert limited.status_code == 429, limited.text
    assert limited.headers["content-type"] == "application/problem+json"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # the right password waits too: the limit is what stops guessing
    right = {"name": "vera", "password": PASSWORD}
    assert (await world.http.post("/api/v1/auth/login", json=right)).status_code == 429


async def test_refresh_is_used_once_and_revocation_is_at_once(world: World) -> None:
    http = world.http
    login = {"name": "opal", "password": PASSWORD}
    pair = await _ok(await http.post("/api/v1/auth/login", json=login))
    refresh = {"refresh_token": pair["refresh_token"]}
    with_access = {"Authorization": f"Bearer {pair['refresh_token']}"}
    assert (await http.get("/api/v1/tasks", headers=with_access)).status_code == 401
    fresh = await _ok(await http.post("/api/v1/auth/refresh", json=refresh))
    assert (await http.post("/api/v1/auth/refresh", json=refresh)).status_code == 401
    bearer = {"Authorization": f"Bearer {fresh['access_token']}"}
    await _ok(await http.get("/api/v1/tasks", headers=bearer))

    made = await _ok(
        await http.post("/api/v1/tokens", json={"name": "ro", "scopes": ["read"]}, headers=bearer),
        201,
    )
    scoped = {"Authorization": f"Bearer {made['token']}"}
    await _ok(await http.get("/api/v1/tasks", headers=scoped))
    assert (await http.post("/api/v1/tasks", json=HOST, headers=scoped)).status_code == 403
    listed = await _ok(await http.get("/api/v1/tokens", headers=bearer))
    assert made["id"] in {t["id"] for t in listed["items"]}
    assert all("token" not in t for t in listed["items"])  # the secret was shown once
    await _ok(await http.delete(f"/api/v1/tokens/{made['id']}", headers=bearer), 204)
    assert (await http.get("/api/v1/tasks", headers=scoped)).status_code == 401

    await _ok(await http.delete("/api/v1/users/opal", headers=ADMIN), 204)
    assert (await http.get("/api/v1/tasks", headers=bearer)).status_code == 401


async def test_the_cli_manages_users_tokens_and_logs_in(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EDGEPLANE_DATA_DIR", str(tmp_path / "cli"))
    for name in ("EDGEPLANE_TOKEN", "EDGEPLANE_ADMIN_TOKEN", "EDGEPLANE_URL"):
        monkeypatch.delenv(name, raising=False)
    url = str(world.http.base_url)

    async def cli(*args: str, token: str | None = TOKEN, stdin: str | None = None) -> Result:
        given = ["--url", url, *(["--token", token] if token else [])]
        # a thread: the blocking client must not stop this loop, which serves the API
        return await asyncio.to_thread(
            CliRunner().invoke, cli_app, [*given, *args], input=stdin, catch_exceptions=False
        )

    made = await cli(
        "user", "create", "cli-ann", "--role", "operator", "--project", "lab",
        "--password-stdin", stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    listed = await cli("user", "list", "--output", "json")
    assert "cli-ann" in {u["name"] for u in orjson.loads(listed.stdout)}
    assert (await cli("user", "create", "x", "--role", "root", stdin="p\n")).exit_code == 2

    wrong = await cli("login", "cli-ann", "--password-stdin", token=None, stdin="nope\n")
    assert wrong.exit_code == 2
    kept = await cli("login", "cli-ann", "--password-stdin", token=None, stdin=PASSWORD + "\n")
    assert kept.exit_code == 0, kept.output
    token_file = tmp_path / "cli" / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    access = token_file.read_text().strip()
    assert (await cli("token", "list", token=None)).exit_code == 0  # the kept token is used

    created = await cli("token", "create", "--name", "ci", "--scope", "read", token=access)
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    mine = orjson.loads((await cli("token", "list", "--output", "json", token=access)).stdout)
    (ci,) = [t for t in mine if t["name"] == "ci"]
    assert ci["scopes"] == ["read"] and ci["user"] == "cli-ann"
    assert (await cli("task", "list", token=secret)).exit_code == 0
    assert (await cli("token", "revoke", ci["id"], token=access)).exit_code == 0
    assert (await cli("task", "list", token=secret)).exit_code == 2
    run = ("task", "create", "--runtime", "host", "--project")
    mine = await cli(*run, "lab", "--", "true", token=access)
    assert mine.exit_code == 0, mine.output
    assert (await cli("task", "get", mine.stdout.strip(), token=access)).exit_code == 0
    assert (await cli(*run, "default", "--", "true", token=access)).exit_code == 2  # not hers
    assert (await cli("user", "delete", "cli-ann")).exit_code == 0
    assert (await cli("task", "list", token=access)).exit_code == 2


# ---------------------------------------------------------------- node owners


def _worker_routes(world: World) -> list[tuple[str, str]]:
    """Every mutating route on one worker, its delete last (it forgets the worker)."""
    found = [
        (method, path)
        for method, path in world.routes
        if path.startswith("/api/v1/workers/{worker_id}") and method in MUTATING
    ]
    assert len(found) >= 4, found  # drain, undrain, owner, delete at least
    return sorted(found, key=lambda route: route == ("DELETE", "/api/v1/workers/{worker_id}"))


async def test_the_owner_of_a_node_manages_it_whatever_their_role(world: World) -> None:
    http, ids = world.http, world.ids
    mine, other = ids["worker_id"], ids["other_worker"]
    given = await _ok(
        await http.put(f"/api/v1/workers/{mine}/owner", json={"owner": "vera"}, headers=ADMIN)
    )
    assert given["owner"] == "vera"
    assert (await _ok(await http.get(f"/api/v1/workers/{mine}", headers=ADMIN)))["owner"] == "vera"
    listed = await _ok(await http.get("/api/v1/workers", headers=world.auth["vera"]))
    assert {w["id"]: w["owner"] for w in listed["items"]} == {mine: "vera", other: None}
    vera, opal = world.auth["vera"], world.auth["opal"]
    # a read-scoped token of the owner's still cannot change anything
    made = await _ok(
        await http.post("/api/v1/tokens", json={"scopes": ["read"]}, headers=vera), 201
    )
    read_only = {"Authorization": f"Bearer {made['token']}"}
    for method, path in _worker_routes(world):
        url = _url(path, ids)
        body = _body(path) if method != "DELETE" else None
        on_other = url.replace(f"/workers/{mine}", f"/workers/{other}")
        for who, where in ((vera, on_other), (opal, url), (read_only, url)):
            refused = await http.request(method, where, json=body, headers=who)
            assert refused.status_code == 403, (method, where, refused.text)
        answer = await http.request(method, url, json=body, headers=vera)
        if path.endswith("/owner"):  # ownership itself stays an admin's
            assert answer.status_code == 403, answer.text
        elif "/chutes" in path:  # allowed; these workers serve no chutes (no --api)
            assert answer.status_code in (422, 501), (method, path, answer.text)
        else:
            assert answer.status_code in (200, 204), (method, path, answer.text)
            if path.endswith("/drain"):
                assert answer.json()["state"] == "draining"
    # deleted by its owner: gone
    assert (await http.get(f"/api/v1/workers/{mine}", headers=ADMIN)).status_code == 404
    assert (await http.get(f"/api/v1/workers/{other}", headers=ADMIN)).status_code == 200


async def test_only_an_admin_gives_a_node_and_only_to_a_user(world: World) -> None:
    http, node = world.http, world.ids["worker_id"]
    url = f"/api/v1/workers/{node}/owner"
    ghost = await http.put(url, json={"owner": "ghost"}, headers=ADMIN)
    assert ghost.status_code == 404 and ghost.json()["field"] == "owner", ghost.text
    assert (
        await http.put(url, json={"owner": "opal"}, headers=world.auth["opal"])
    ).status_code == 403
    await _ok(await http.put(url, json={"owner": "opal"}, headers=ADMIN))
    drained = await http.post(f"/api/v1/workers/{node}/drain", headers=world.auth["opal"])
    assert drained.status_code == 200, drained.text
    # taken from her: refused at once (the token cache keeps roles, never ownership)
    await _ok(await http.put(url, json={"owner": "vera"}, headers=ADMIN))
    undrain = f"/api/v1/workers/{node}/undrain"
    assert (await http.post(undrain, headers=world.auth["opal"])).status_code == 403
    await _ok(await http.post(undrain, headers=world.auth["vera"]))
    await _ok(await http.put(url, json={"owner": "opal"}, headers=ADMIN))
    # the user goes: so does their ownership (a new "opal" inherits nothing)
    await _ok(await http.delete("/api/v1/users/opal", headers=ADMIN), 204)
    assert (await _ok(await http.get(f"/api/v1/workers/{node}", headers=ADMIN)))["owner"] is None
    await _ok(await http.put(url, json={"owner": None}, headers=ADMIN))


async def test_the_cli_gives_and_shows_a_nodes_owner(world: World) -> None:
    url, node = str(world.http.base_url), world.ids["worker_id"]

    async def cli(*args: str) -> Result:
        given = ["--url", url, "--token", TOKEN]
        return await asyncio.to_thread(
            CliRunner().invoke, cli_app, [*given, *args], catch_exceptions=False
        )

    given = await cli("worker", "owner", node, "vera")
    assert given.exit_code == 0 and given.stdout.strip() == f"{node} owner vera", given.output
    shown = await cli("worker", "get", node)
    assert any(line.split() == ["owner", "vera"] for line in shown.stdout.splitlines()), (
        shown.stdout
    )
    listed = orjson.loads((await cli("worker", "list", "--output", "json")).stdout)
    assert {w["id"]: w["owner"] for w in listed["items"]}[node] == "vera"
    table = (await cli("worker", "list")).stdout
    assert "OWNER" in table.splitlines()[0] and "vera" in table
    assert (await cli("worker", "owner", node)).exit_code == 2  # USER or --none
    assert (await cli("worker", "owner", node, "vera", "--none")).exit_code == 2
    assert (await cli("worker", "owner", node, "ghost")).exit_code == 2
    taken = await cli("worker", "owner", node, "--none")
    assert taken.exit_code == 0 and taken.stdout.strip() == f"{node} owner -", taken.output


async def test_ownership_survives_a_manager_restart(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        broker=fast_broker_url,
        store=f"sqlite:///{tmp_path / 'db.sqlite'}",
        port=0,
        workers=1,
        heartbeat_s=0.3,
        domain=unique_domain,
        admin_token=TOKEN,
    )
    body = {"username": "ann", "password": PASSWORD, "role": "viewer"}
    async with (
        running_stack(settings) as stack,
        httpx.AsyncClient(base_url=stack.control.url, timeout=30) as http,
    ):
        await _workers_known(http, 1)
        node = stack.workers[0].id
        await _ok(await http.post("/api/v1/users", json=body, headers=ADMIN), 201)
        url = f"/api/v1/workers/{node}/owner"
        await _ok(await http.put(url, json={"owner": "ann"}, headers=ADMIN))
    async with (
        running_stack(settings) as stack,
        httpx.AsyncClient(base_url=stack.control.url, timeout=30) as http,
    ):
        await _workers_known(http, 1)
        shown = await _ok(await http.get(f"/api/v1/workers/{node}", headers=ADMIN))
        assert shown["owner"] == "ann", shown
        login = {"username": "ann", "password": PASSWORD}
        ann = (await _ok(await http.post("/api/v1/auth/login", json=login)))["access_token"]
        drained = await http.post(
            f"/api/v1/workers/{node}/drain", headers={"Authorization": f"Bearer {ann}"}
        )
        assert drained.status_code == 200 and drained.json()["owner"] == "ann", drained.text


async def test_outside_clients_field_names_work_beside_ours(world: World) -> None:
    http = world.http
    made = await http.post(
        "/api/v1/users",
        json={"username": "uma", "password": PASSWORD, "role": "operator", "projects": ["lab"]},
        headers=ADMIN,
    )
    user = await _ok(made, 201)
    assert (user["name"], user["role"], user["projects"]) == ("uma", "operator", ["lab"])
    pair = await _ok(
        await http.post("/api/v1/auth/login", json={"username": "uma", "password": PASSWORD})
    )
    assert set(pair) >= {"access_token", "refresh_token", "token_type", "expires_in"}
    assert pair["token_type"] == "bearer" and pair["expires_in"] > 0
    uma = {"Authorization": f"Bearer {pair['access_token']}"}
    for name in ("expires_in_s", "expires_in"):
        body = {"name": "ci", "scopes": ["read"], name: 60}
        token = await _ok(await http.post("/api/v1/tokens", json=body, headers=uma), 201)
        assert token["id"] and token["token"] and token["scopes"] == ["read"]
        assert token["expires_at"] == pytest.approx(token["created_at"] + 60)
        mine = {"Authorization": f"Bearer {token['token']}"}
        await _ok(await http.get("/api/v1/tasks", headers=mine))
    both = [
        ("/api/v1/users", {"name": "a", "username": "a", "password": PASSWORD}, ADMIN, "name"),
        (
            "/api/v1/auth/login",
            {"name": "uma", "username": "uma", "password": PASSWORD},
            {},
            "name",
        ),
        ("/api/v1/tokens", {"expires_in": 5, "expires_in_s": 5}, uma, "expires_in"),
    ]
    for path, body, headers, field in both:
        refused = await http.post(path, json=body, headers=headers)
        assert refused.status_code == 422, (path, refused.text)
        assert refused.json()["field"] == field, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
    # neither name: the field is missing, named by its first name
    missing = await http.post("/api/v1/users", json={"password": PASSWORD}, headers=ADMIN)
    assert missing.status_code == 422 and missing.json()["field"] == "name", missing.text
