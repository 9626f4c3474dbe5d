"""The chute store through the real API and CLI of a running stack (``edgeplane up`` in
process, SQLite, a real broker): publish, list, show, read, delete, conflicts, bad input,
projects, an install by ``NAME@VERSION`` resolved by the manager, and the root's store.

Chutes really running from the store on a real worker: tests/faults/test_chutes_remote.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner, Result

from edgeplane.cli.main import app as cli_app
from edgeplane.config import Settings
from edgeplane.roles.control import ControlPlane
from edgeplane.roles.up import running_stack

pytestmark = pytest.mark.timeout(120)

TOKEN = "store-admin-token-0123456789abcdef0123"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PASSWORD = "correct horse battery"
PROBLEM = "application/problem+json"


def hello(version: str = "1.0", **fields: Any) -> dict[str, Any]:
    return {
        "name": "hello",
        "version": version,
        "description": f"hello {version}",
        "services": [{"name": "main", "image": "busybox", "command": ["sleep", "1000"]}],
        **fields,
    }


#: hello 1.0 again, as YAML, its defaults spelt out and its keys in another order
HELLO_YAML = """
services:
  - command: [sleep, "1000"]
    image: busybox
    name: main
    env: {}
    ports: []
version: "1.0"
resources: {cpu_shares: 1024, disk_mb: 1024}
name: hello
description: hello 1.0
"""


@dataclass
class World:
    http: httpx.AsyncClient
    url: str
    worker: str
    auth: dict[str, dict[str, str]]

    async def call(
        self, method: str, path: str, who: str = "admin", **kwargs: Any
    ) -> httpx.Response:
        headers = {**(ADMIN if who == "admin" else self.auth[who]), **kwargs.pop("headers", {})}
        return await self.http.request(method, f"/api/v1{path}", headers=headers, **kwargs)


@pytest.fixture
async def world(tmp_path: Path, fast_broker_url: str, unique_domain: str) -> AsyncIterator[World]:
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
    async with (
        running_stack(settings) as stack,
        httpx.AsyncClient(base_url=stack.control.url, timeout=30) as http,
    ):
        auth: dict[str, dict[str, str]] = {}
        for name, role, project in (
            ("ann", "operator", "default"),
            ("vic", "viewer", "default"),
            ("otto", "operator", "other"),
        ):
            body = {"name": name, "password": PASSWORD, "role": role, "projects": [project]}
            assert (await http.post("/api/v1/users", json=body, headers=ADMIN)).status_code == 201
            login = {"name": name, "password": PASSWORD}
            pair = (await http.post("/api/v1/auth/login", json=login)).json()
            auth[name] = {"Authorization": f"Bearer {pair['access_token']}"}
        yield World(http, stack.control.url, stack.workers[0].id, auth)


def problem(answer: httpx.Response, status: int, field: str | None) -> str:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    body = answer.json()
    assert body.get("field") == field, body
    assert "Traceback" not in answer.text
    return str(body["detail"])


async def test_publish_list_show_read_and_delete(world: World) -> None:
    made = await world.call("POST", "/store/chutes", "ann", json=hello())
    assert made.status_code == 201, made.text
    first = made.json()
    assert {k: first[k] for k in ("name", "version", "project", "published_by")} == {
        "name": "hello", "version": "1.0", "project": "default", "published_by": "ann",
    }  # fmt: skip
    assert first["digest"].startswith("sha256:")
    # the same content, as YAML with its defaults spelt out: a no-op (200, the first one)
    again = await world.call(
        "POST", "/store/chutes", "ann", content=HELLO_YAML,
        headers={"content-type": "application/yaml"},
    )  # fmt: skip
    assert again.status_code == 200, again.text
    assert again.json() == first
    # other content under a published version: refused, the version unchanged
    changed = await world.call("POST", "/store/chutes", "ann", json=hello(description="new"))
    assert "never changes" in problem(changed, 409, "version")
    for version in ("1.9", "1.10", "1.0-rc.1"):
        created = await world.call("POST", "/store/chutes", "ann", json=hello(version))
        assert created.status_code == 201, created.text

    shown = (await world.call("GET", "/store/chutes/hello", "vic")).json()
    assert shown["latest"] == "1.10" and shown["description"] == "hello 1.10"
    assert [v["version"] for v in shown["versions"]] == ["1.10", "1.9", "1.0", "1.0-rc.1"]
    read = (await world.call("GET", "/store/chutes/hello/versions/1.0", "vic")).json()
    assert read["digest"] == first["digest"]
    assert read["manifest"] == hello()  # canonical: exactly what was given (no defaults)

    for name in ("zeta", "alpha"):
        await world.call("POST", "/store/chutes", "ann", json=hello(name=name))
    page = (await world.call("GET", "/store/chutes", "vic", params={"limit": 2})).json()
    assert page["total"] == 3 and [c["name"] for c in page["items"]] == ["alpha", "hello"]
    assert page["items"][1]["latest"] == "1.10" and page["items"][1]["versions"] == 4
    rest = await world.call("GET", "/store/chutes", params={"limit": 2, "offset": 2})
    assert [c["name"] for c in rest.json()["items"]] == ["zeta"]
    problem(await world.call("GET", "/store/chutes", params={"limit": 0}), 422, "limit")

    gone = await world.call("DELETE", "/store/chutes/hello/versions/1.10", "ann")
    assert gone.status_code == 204, gone.text
    problem(await world.call("GET", "/store/chutes/hello/versions/1.10"), 404, "version")
    assert (await world.call("GET", "/store/chutes/hello")).json()["latest"] == "1.9"
    problem(await world.call("DELETE", "/store/chutes/hello/versions/1.10"), 404, "version")
    # a deleted version is never published again with other content; the same comes back
    reused = await world.call("POST", "/store/chutes", "ann", json=hello("1.10", config={"a": 1}))
    assert "deleted" in problem(reused, 409, "version")
    back = await world.call("POST", "/store/chutes", "ann", json=hello("1.10"))
    assert back.status_code == 201, back.text

    records = (await world.call("GET", "/audit", params={"resource": "store-chute"})).json()
    ids = {(r["action"], r["resource_id"], r["status"]) for r in records["items"]}
    assert ("POST", "hello@1.0", 201) in ids and ("DELETE", "hello@1.10", 204) in ids
    assert ("POST", "hello@1.0", 200) in ids


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (hello(bogus=1), "bogus"),
        (hello(services=[{"name": "main", "image": "busybox", "bogus": 1}]), "services.0.bogus"),
        (hello(version="1 0"), "version"),
        (hello(name="Hello"), "name"),
        (hello(description="a\x00b"), "description"),
        (hello(description="a\ud800b"), "description"),  # a lone surrogate: not text
        (hello(services=[]), "services"),
        ([1, 2], "body"),
        # canonical JSON over 64 KiB: bounded before it is stored
        (hello(services=[{"name": "m", "image": "busybox",
                          "env": {f"K{n}": "x" * 4000 for n in range(20)}}]), "body"),
    ],
)  # fmt: skip
async def test_an_invalid_manifest_is_422_naming_the_field(
    world: World, body: Any, field: str
) -> None:
    # JSON as the stdlib writes it (a lone surrogate escaped), which httpx would refuse to
    sent = json.dumps(body).encode()
    problem(await world.call("POST", "/store/chutes", content=sent), 422, field)
    assert (await world.call("GET", "/store/chutes")).json()["total"] == 0


async def test_other_bad_input_is_refused_naming_the_field(world: World) -> None:
    call = world.call
    problem(await call("POST", "/store/chutes", content=b"{nope"), 422, "body")
    yaml = {"content-type": "application/yaml"}
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\n" + "d: [*c, *c, *c]\n" * 50
    problem(await call("POST", "/store/chutes", content=bomb, headers=yaml), 422, "body")
    problem(await call("POST", "/store/chutes", content=b" " * (1 << 20) + b"{}"), 422, "body")
    problem(await call("POST", "/store/chutes", params={"project": "Bad!"}, json=hello()), 422,
            "project")  # fmt: skip
    problem(await call("GET", "/store/chutes/Bad"), 422, "name")
    problem(await call("GET", "/store/chutes/hello/versions/1%200"), 422, "version")
    problem(await call("GET", "/store/chutes/nope"), 404, "name")
    problem(await call("DELETE", "/store/chutes/hello/versions/-1"), 422, "version")


async def test_a_chute_is_its_projects(world: World) -> None:
    call = world.call
    assert (await call("POST", "/store/chutes", "ann", json=hello())).status_code == 201
    # viewers read, operators publish and delete (docs/security.md)
    assert (await call("POST", "/store/chutes", "vic", json=hello("2"))).status_code == 403
    assert (await call("DELETE", "/store/chutes/hello/versions/1.0", "vic")).status_code == 403
    assert (await call("GET", "/store/chutes", "vic")).json()["total"] == 1
    # another project's chute does not exist for otto
    assert (await call("GET", "/store/chutes", "otto")).json() == {"items": [], "total": 0}
    problem(await call("GET", "/store/chutes/hello", "otto"), 404, "name")
    problem(await call("GET", "/store/chutes/hello/versions/1.0", "otto"), 404, "version")
    problem(await call("DELETE", "/store/chutes/hello/versions/1.0", "otto"), 404, "version")
    problem(await call("POST", "/store/chutes", "otto", json=hello("2")), 404, "project")
    # the name is one project's: in his own project it is taken, saying no more
    taken = await call("POST", "/store/chutes", "otto", params={"project": "other"},
                       json=hello("2"))  # fmt: skip
    assert "another project" in problem(taken, 409, "name")
    mine = await call("POST", "/store/chutes", "otto", params={"project": "other"},
                      json=hello(name="mine"))  # fmt: skip
    assert mine.status_code == 201 and mine.json()["project"] == "other"
    problem(await call("GET", "/store/chutes/mine", "ann"), 404, "name")
    # a later version without a project goes to its chute's; an admin sees where it is
    later = await call("POST", "/store/chutes", "ann", json=hello("2"))
    assert later.status_code == 201 and later.json()["project"] == "default"
    moved = await call("POST", "/store/chutes", params={"project": "other"}, json=hello("3"))
    assert "'default'" in problem(moved, 409, "project")
    assert (await call("GET", "/store/chutes")).json()["total"] == 2


async def test_an_install_names_a_store_version_the_manager_resolves(world: World) -> None:
    call, worker = world.call, world.worker
    await call("POST", "/store/chutes", "ann", json=hello())
    await call("POST", "/store/chutes", "ann", json=hello("1.1"))
    chutes = f"/workers/{worker}/chutes"
    # resolved, then sent: this worker serves no chutes (no --api), so it answers 501
    for ref in ("hello@1.0", "hello"):
        sent = await call("POST", chutes, json={"store": ref})
        assert sent.status_code == 501, sent.text
    records = (await call("GET", "/audit", params={"resource": f"worker/{worker}"})).json()
    details = [r["detail"] for r in records["items"] if r["route"].endswith("/chutes")]
    assert any(d and d.startswith("from the store: hello@1.1 (sha256:") for d in details)
    assert any(d and d.startswith("from the store: hello@1.0 (sha256:") for d in details)
    problem(await call("POST", chutes, json={"store": "hello@9"}), 404, "store")
    problem(await call("POST", chutes, json={"store": "nope"}), 404, "store")
    problem(await call("POST", chutes, json={"store": "Hello@1"}), 422, "store")
    problem(await call("POST", chutes, json={"store": 7}), 422, "store")
    problem(await call("POST", chutes, json={"store": "hello", "version": "1"}), 422, "version")
    update = f"{chutes}/other"
    problem(await call("PUT", update, json={"store": "hello@1.0"}), 422, "name")
    assert (await call("PUT", f"{chutes}/hello", json={"store": "hello"})).status_code == 501
    # an owner installs from the store only what their projects see
    owner = await call("PUT", f"/workers/{worker}/owner", json={"owner": "otto"})
    assert owner.status_code == 200, owner.text
    problem(await call("POST", chutes, "otto", json={"store": "hello@1.0"}), 404, "store")
    await call("POST", "/store/chutes", "otto", params={"project": "other"},
               json=hello(name="mine"))  # fmt: skip
    assert (await call("POST", chutes, "otto", json={"store": "mine"})).status_code == 501


async def test_the_cli_publishes_lists_shows_and_installs(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEPLANE_DATA_DIR", str(tmp_path / "cli"))
    for name in ("EDGEPLANE_TOKEN", "EDGEPLANE_ADMIN_TOKEN", "EDGEPLANE_URL", "EDGEPLANE_NODE"):
        monkeypatch.delenv(name, raising=False)

    async def cli(*args: str) -> Result:
        given = ["--url", world.url, "--token", TOKEN, *args]
        # a thread: the blocking client must not stop this loop, which serves the API
        return await asyncio.to_thread(CliRunner().invoke, cli_app, given, catch_exceptions=False)

    spec = tmp_path / "chute.yaml"
    spec.write_text(HELLO_YAML)
    published = await cli("store", "publish", str(spec))
    assert published.exit_code == 0, published.output
    assert published.stdout.strip() == "hello@1.0" and "published" in published.stderr
    again = await cli("store", "publish", str(spec))
    assert again.exit_code == 0 and "already published" in again.stderr
    spec.write_text(HELLO_YAML.replace("hello 1.0", "changed"))
    conflict = await cli("store", "publish", str(spec))
    assert conflict.exit_code == 1 and "never changes" in conflict.stderr
    spec.write_text(HELLO_YAML.replace('"1.0"', '"2.0"'))
    assert (await cli("store", "publish", str(spec), "--project", "default")).exit_code == 0

    listed = await cli("store", "list")
    assert listed.exit_code == 0 and "hello" in listed.stdout and "2.0" in listed.stdout
    as_json = orjson.loads((await cli("store", "list", "--output", "json")).stdout)
    assert as_json["total"] == 1 and as_json["items"][0]["latest"] == "2.0"
    shown = await cli("store", "show", "hello")
    assert shown.exit_code == 0 and "1.0" in shown.stdout and "2.0" in shown.stdout
    manifest = await cli("store", "show", "hello", "--version", "1.0")
    assert manifest.exit_code == 0, manifest.output
    saved = tmp_path / "saved.yaml"
    saved.write_text(manifest.stdout)  # YAML, ready to publish or install again
    assert (await cli("store", "publish", str(saved))).stderr.startswith("already published")
    same = orjson.loads((await cli("store", "show", "hello@1.0", "--output", "json")).stdout)
    assert same["version"] == "1.0" and same["manifest"]["name"] == "hello"

    # bad input: exit 2 with the field named, no request made for a bad manifest
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: hello\nversion: '3'\nservices: [{name: m, image: b, bogus: 1}]\n")
    refused = await cli("store", "publish", str(bad))
    assert refused.exit_code == 2 and "services.0.bogus" in refused.stderr
    for args in (
        ("store", "show", "Hello"),
        ("store", "show", "hello@1.0", "--version", "2.0"),
        ("store", "show", "nope"),
        ("store", "delete", "hello"),
        ("store", "publish", str(tmp_path / "missing.yaml")),
        ("chute", "install", "no/such/file.yaml", "--worker", world.worker),
        ("chute", "install", "hello@1.0", "--node", "http://127.0.0.1:9"),
    ):
        result = await cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
    # resolved by the manager and sent: this worker serves no chutes (501, exit 1)
    installed = await cli("chute", "install", "hello@1.0", "--worker", world.worker)
    assert installed.exit_code == 1 and "chutes" in installed.stderr, installed.output
    missing = await cli("chute", "install", "hello@7", "--worker", world.worker)
    assert missing.exit_code == 2 and "hello@7" in missing.stderr

    assert (await cli("store", "delete", "hello@2.0")).exit_code == 0
    assert (
        orjson.loads((await cli("store", "show", "hello", "--output", "json")).stdout)["latest"]
        == "1.0"
    )


async def test_the_root_serves_a_store_too(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        broker=fast_broker_url,
        store=f"sqlite:///{tmp_path / 'root.db'}",
        port=0,
        heartbeat_s=0.3,
        domain=unique_domain,
        admin_token=TOKEN,
    )
    root = ControlPlane(settings, fast_broker_url, root=True)
    await root.start()
    try:
        async with httpx.AsyncClient(base_url=root.url, headers=ADMIN, timeout=30) as http:
            made = await http.post("/api/v1/store/chutes", json=hello())
            assert made.status_code == 201, made.text
            listed = (await http.get("/api/v1/store/chutes")).json()
            assert [c["name"] for c in listed["items"]] == ["hello"]
            read = await http.get("/api/v1/store/chutes/hello/versions/1.0")
            assert read.json()["manifest"] == hello()
    finally:
        await root.stop()
