"""``edgeplane app …`` and ``edgeplane cluster …`` against a mock transport, and the client
calls beneath them."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from edgeplane.cli import apps
from edgeplane.cli.main import app
from edgeplane.cli.output import Session
from edgeplane.client import AsyncClient, Client
from edgeplane.errors import Invalid
from edgeplane.model import ApplicationSpec, ServiceSpec

WASM = b"\x00asm\x01\x00\x00\x00"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("EDGEPLANE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EDGEPLANE_DATA_DIR", str(tmp_path / "data"))


def problem(status: int, detail: str, **extra: Any) -> httpx.Response:
    doc = {"type": "about:blank", "title": "t", "status": status, "detail": detail, **extra}
    return httpx.Response(status, json=doc, headers={"Content-Type": "application/problem+json"})


class AppApi:
    """Just enough of /applications and /clusters.

    Every service gets its replicas as ``pending`` instances of revision ``r<generation>``.
    Each ``GET /applications/{id}`` moves one instance per service forward: a pending one of
    the current revision to running, else an old-revision one away (a rolling update).
    """

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.apps: dict[str, dict[str, Any]] = {}
        self.errors: dict[tuple[str, str], httpx.Response] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/api/v1")
        if (request.method, path) in self.errors:
            return self.errors[(request.method, path)]
        parts = path.strip("/").split("/")
        if parts[0] == "clusters":
            return self._clusters(parts[1:])
        if parts == ["applications"]:
            if request.method == "POST":
                return httpx.Response(201, json=self.create(json.loads(request.content)))
            return self._page(request)
        found = self.apps.get(parts[1])
        if found is None:
            return problem(404, f"no application {parts[1]}")
        if request.method == "DELETE":
            del self.apps[parts[1]]
            return httpx.Response(204)
        if request.method == "PUT":
            self._roll(found, json.loads(request.content))
        else:
            self._step(found)
        return httpx.Response(200, json=self._view(found))

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        app_id = f"a{len(self.apps) + 1}"
        self.apps[app_id] = {"id": app_id, "spec": spec, "generation": 0, "instances": []}
        self._roll(self.apps[app_id], spec)
        return self._view(self.apps[app_id])

    def _roll(self, found: dict[str, Any], spec: dict[str, Any]) -> None:
        found["spec"] = spec
        found["generation"] += 1
        revision = f"r{found['generation']}"
        for service in spec["services"]:
            for index in range(service.get("replicas", 1)):
                instance_id = f"{service['name']}-{revision}-{index}"
                found["instances"].append(
                    {
                        "id": instance_id,
                        "service": service["name"],
                        "index": index,
                        "revision": revision,
                        "task_id": f"t-{instance_id}",
                        "state": "pending",
                        "reason": "waiting for capacity",
                    }
                )

    def _step(self, found: dict[str, Any]) -> None:
        current = f"r{found['generation']}"
        for service in found["spec"]["services"]:
            mine = [i for i in found["instances"] if i["service"] == service["name"]]
            waiting = [i for i in mine if i["revision"] == current and i["state"] == "pending"]
            old = [i for i in mine if i["revision"] != current]
            if waiting:
                endpoint = {"address": "192.0.2.7", "host_port": 20000 + waiting[0]["index"]}
                waiting[0].update(
                    state="running",
                    reason=None,
                    cluster_id="c1",
                    worker_id="w1",
                    restarts=1,
                    endpoints=[{**endpoint, "port": 8000, "name": "http"}],
                )
            elif old:
                found["instances"].remove(old[0])

    def _view(self, found: dict[str, Any]) -> dict[str, Any]:
        current = f"r{found['generation']}"
        services = [
            {
                "name": s["name"],
                "replicas": s.get("replicas", 1),
                "restart": "always",
                "revision": current,
                "instances": [i for i in found["instances"] if i["service"] == s["name"]],
            }
            for s in found["spec"]["services"]
        ]
        return {
            "id": found["id"],
            "name": found["spec"]["name"],
            "state": "deploying",
            "generation": found["generation"],
            "services": services,
            "spec": found["spec"],
            "created_at": 1_700_000_000.0,
            "updated_at": 1_700_000_060.0,
        }

    def _page(self, request: httpx.Request) -> httpx.Response:
        limit = int(request.url.params.get("limit", 100))
        offset = int(request.url.params.get("offset", 0))
        items = [self._view(a) for a in self.apps.values()]
        return httpx.Response(
            200, json={"items": items[offset : offset + limit], "total": len(items)}
        )

    def _clusters(self, parts: list[str]) -> httpx.Response:
        if parts == ["c2"]:
            return httpx.Response(200, json={"id": "c2", "state": "offline"})
        if parts:
            return httpx.Response(200, json=CLUSTER)
        bare = {"id": "c2", "name": "far", "state": "offline"}
        return httpx.Response(200, json={"items": [CLUSTER, bare], "total": 2})

    def calls(self, start: int = 0) -> list[tuple[str, str]]:
        return [(r.method, r.url.path.removeprefix("/api/v1")) for r in self.requests[start:]]

    def sent(self, method: str) -> Any:
        (request,) = [r for r in self.requests if r.method == method]
        return json.loads(request.content)


CLUSTER = {
    "id": "c1",
    "name": "berlin",
    "state": "online",
    "location": {"lat": 52.52, "lon": 13.405},
    "labels": {"site": "b"},
    "active_tasks": 7,
    "last_seen": 1_700_000_000.0,
    "aggregate": {
        "workers": 3,
        "free_slots": 12,
        "max_free_cpu": 3.5,
        "max_free_memory_mb": 4096,
        "groups": [
            {
                "runtime": "wasm",
                "labels": {"gpu": "no"},
                "workers": 2,
                "free_slots": 8,
                "cpu": {"count": 2, "sum": 5.25, "mean": 2.625, "std": 0.875, "max": 3.5},
                "memory_mb": {"count": 2, "sum": 6144, "mean": 3072, "std": 1024, "max": 4096},
            },
            {"runtime": "container", "workers": 1, "free_slots": 4, "tee": 1, "bridge": 1},
        ],
        "bridge": 1,
    },
}


def invoke(api: Any, *args: str) -> Result:
    """Run the CLI with its clients talking to ``api`` through a mock transport."""

    def make_client(url: str | None, token: str | None, ca: Path | None) -> Client:
        return Client(url, token, transport=httpx.MockTransport(api))

    return CliRunner().invoke(app, list(args), obj=Session(make_client=make_client))


def assert_one_line_error(result: Result, text: str) -> None:
    assert text in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output
    assert result.stdout == ""


DESCRIPTOR = """\
name: shop
services:
  - name: web
    file: web.wasm
    replicas: 2
    resources: {cpu: 0.5, memory_mb: 64}
  - name: db
    runtime: container
    image: postgres:16
"""


@pytest.fixture
def descriptor(tmp_path: Path) -> Path:
    """A descriptor in its own directory naming a module next to it."""
    folder = tmp_path / "apps"
    folder.mkdir()
    (folder / "web.wasm").write_bytes(WASM)
    path = folder / "shop.yaml"
    path.write_text(DESCRIPTOR)
    return path


# --- app apply ------------------------------------------------------------------------------


def test_apply_creates_a_new_application_with_its_modules(descriptor: Path) -> None:
    api = AppApi()
    result = invoke(api, "app", "apply", str(descriptor))
    assert (result.exit_code, result.stdout) == (0, "a1\n"), result.output
    assert "created application shop (a1)" in result.stderr
    assert api.calls() == [("GET", "/applications"), ("POST", "/applications")]
    assert api.requests[0].url.params["limit"] == "1000"
    sent = api.sent("POST")
    web, db = sent["services"]
    assert base64.b64decode(web["file"]) == WASM
    assert (web["replicas"], web["resources"]) == (2, {"cpu": 0.5, "memory_mb": 64})
    assert db == {"name": "db", "runtime": "container", "image": "postgres:16"}


def test_apply_of_an_existing_name_updates_it_in_place(descriptor: Path) -> None:
    api = AppApi()
    assert invoke(api, "app", "apply", str(descriptor)).exit_code == 0
    descriptor.write_text(DESCRIPTOR.replace("replicas: 2", "replicas: 3"))
    result = invoke(api, "app", "apply", str(descriptor), "--output", "json")
    assert result.exit_code == 0, result.output
    assert "updated application shop (a1) to generation 2" in result.stderr
    assert api.calls(2) == [("GET", "/applications"), ("PUT", "/applications/a1")]
    assert api.sent("PUT")["services"][0]["replicas"] == 3
    doc = json.loads(result.stdout)
    assert (doc["id"], doc["generation"], len(api.apps)) == ("a1", 2, 1)
    rows = [line.split() for line in invoke(api, "app", "get", "shop").stdout.splitlines()]
    assert ["web", "web-r1-1", "pending", "0", "old", "waiting", "for", "capacity"] in rows
    assert ["web", "web-r2-2", "pending", "0", "current", "waiting", "for", "capacity"] in rows


def test_apply_takes_a_json_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "shop.json"
    path.write_text('{"name": "shop", "services": [{"name": "sh", "runtime": "host"}]}')
    api = AppApi()
    result = invoke(api, "app", "apply", str(path))
    assert result.exit_code == 0, result.output
    assert api.sent("POST")["services"] == [{"name": "sh", "runtime": "host"}]


def test_apply_wait_polls_until_every_service_runs_its_replicas(
    descriptor: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apps, "POLL_S", 0.0)
    api = AppApi()
    result = invoke(api, "app", "apply", str(descriptor), "--wait")
    assert result.exit_code == 0, result.output
    # web needs two steps to run both replicas, db one
    assert api.calls(2) == [("GET", "/applications/a1")] * 2
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("web")]
    http = "http=192.0.2.7:{}->8000/tcp"
    assert rows == [
        ["web", "web-r1-0", "c1", "w1", "running", http.format(20000), "1", "current"],
        ["web", "web-r1-1", "c1", "w1", "running", http.format(20001), "1", "current"],
    ]
    assert "web 2/2, db 1/1" in result.stdout


def test_apply_wait_after_an_update_waits_for_the_new_revision(
    descriptor: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apps, "POLL_S", 0.0)
    api = AppApi()
    assert invoke(api, "app", "apply", str(descriptor), "--wait").exit_code == 0
    before = len(api.requests)
    descriptor.write_text(DESCRIPTOR.replace("postgres:16", "postgres:17"))
    result = invoke(api, "app", "apply", str(descriptor), "--wait", "--output", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    for service in doc["services"]:
        assert {i["revision"] for i in service["instances"]} == {"r2"}
        assert {i["state"] for i in service["instances"]} == {"running"}
    # two steps bring both revisions up, two more stop web's old instances one by one
    assert api.calls(before)[2:] == [("GET", "/applications/a1")] * 4


def test_apply_wait_times_out_with_exit_1_naming_the_services_behind(descriptor: Path) -> None:
    api = AppApi()
    result = invoke(api, "app", "apply", str(descriptor), "--wait", "--timeout", "0")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "error: application shop not ready after 0s (web 0/2 ready; db 0/1 ready); it goes on"
    )
    assert "waiting for capacity" in result.stdout
    assert api.calls()[-1] == ("POST", "/applications")


def test_apply_wait_on_a_terminal_draws_the_tree_live(
    descriptor: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apps, "POLL_S", 0.0)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: stdout is a terminal
    result = invoke(AppApi(), "app", "apply", str(descriptor), "--wait")
    assert result.exit_code == 0, result.output
    assert "\x1b[" in result.stdout
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout)
    assert "application shop (a1)  deploying  generation 1  0/3 ready" in shown
    assert "web  2/2 ready  revision r1" in shown
    assert "web-r1-1  running  on c1/w1  http=192.0.2.7:20001->8000/tcp  restarts 1" in shown


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [shop\n", "shop.yaml: bad YAML at line 2"),
        ("- name: shop\n", "expected a mapping with `name` and `services`, got a list"),
        ("", "expected a mapping with `name` and `services`, got nothing"),
        ("name: shop\n", "services: Field required"),
        (
            "name: shop\nservices:\n  - name: a\n  - name: b\n    replicas: -1\n",
            "services[1].replicas: Input should be greater than or equal to 0",
        ),
        ("name: shop\nservices:\n  - name: a\n    file: gone.wasm\n", "services[0].file: no such"),
        ("name: shop\nservices:\n  - name: a\n  - name: a\n", "service name 'a' is used twice"),
    ],
)
def test_a_bad_descriptor_exits_2_with_one_line_and_sends_nothing(
    descriptor: Path, text: str, message: str
) -> None:
    descriptor.write_text(text)
    api = AppApi()
    result = invoke(api, "app", "apply", str(descriptor))
    assert result.exit_code == 2, result.output
    assert_one_line_error(result, message)
    assert api.requests == []


def test_a_missing_descriptor_exits_2(tmp_path: Path) -> None:
    result = invoke(AppApi(), "app", "apply", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert_one_line_error(result, "cannot read")


def test_a_422_from_the_server_exits_2_naming_the_field(descriptor: Path) -> None:
    api = AppApi()
    field = "services[1].replicas"
    api.errors[("POST", "/applications")] = problem(
        422, f"{field}: no cluster can ever fit 1 replica", field=field
    )
    result = invoke(api, "app", "apply", str(descriptor))
    assert result.exit_code == 2
    assert_one_line_error(result, "error: services[1].replicas: no cluster can ever fit")


def test_apply_refuses_a_name_two_applications_share(descriptor: Path) -> None:
    api = AppApi()
    spec = {"name": "shop", "services": [{"name": "a"}]}
    api.create(spec)
    api.create(spec)
    result = invoke(api, "app", "apply", str(descriptor))
    assert result.exit_code == 2
    assert_one_line_error(result, "2 applications are named 'shop' (a1, a2): use an id")
    assert [r.method for r in api.requests] == ["GET"]


# --- app list / get / delete ----------------------------------------------------------------


@pytest.fixture
def two_apps() -> AppApi:
    api = AppApi()
    api.create({"name": "shop", "services": [{"name": "web", "replicas": 2}, {"name": "db"}]})
    api.create({"name": "blog", "services": [{"name": "site", "replicas": 0}]})
    return api


def test_list_shows_each_application_with_its_ready_count(two_apps: AppApi) -> None:
    result = invoke(two_apps, "app", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATE", "GENERATION", "SERVICES", "READY", "UPDATED"]
    assert lines[2].split()[:7] == ["a1", "shop", "deploying", "1", "web,", "db", "0/3"]
    assert lines[3].split()[:6] == ["a2", "blog", "deploying", "1", "site", "0/0"]
    as_json = invoke(two_apps, "app", "list", "--output", "json", "--limit", "1")
    page = json.loads(as_json.stdout)
    assert ([a["id"] for a in page["items"]], page["total"]) == (["a1"], 2)
    assert "1 of 2 applications shown" in invoke(two_apps, "app", "list", "--limit", "1").stderr


def test_get_by_id_shows_services_and_instances(two_apps: AppApi) -> None:
    result = invoke(two_apps, "app", "get", "a1")  # the fake steps once on a GET
    assert result.exit_code == 0, result.output
    assert "web 1/2, db 1/1" in result.stdout
    header = ["SERVICE", "ID", "CLUSTER", "WORKER", "STATE", "ENDPOINTS", "RESTARTS"]
    rows = [line.split() for line in result.stdout.splitlines()]
    start = rows.index([*header, "REVISION", "REASON"])
    http = "http=192.0.2.7:20000->8000/tcp"  # where the instance's port 8000 is reached
    assert rows[start + 2 :] == [
        ["web", "web-r1-0", "c1", "w1", "running", http, "1", "current"],
        ["web", "web-r1-1", "pending", "0", "current", "waiting", "for", "capacity"],
        ["db", "db-r1-0", "c1", "w1", "running", http, "1", "current"],
    ]
    assert two_apps.calls() == [("GET", "/applications/a1")]


def test_get_by_name_falls_back_to_a_lookup_over_every_page(
    two_apps: AppApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apps, "PAGE", 1)
    result = invoke(two_apps, "app", "get", "blog", "--output", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == "a2"
    assert two_apps.calls() == [("GET", "/applications/blog"), *[("GET", "/applications")] * 2]
    assert [r.url.params["offset"] for r in two_apps.requests[1:]] == ["0", "1"]


def test_get_of_an_unknown_application_exits_2(two_apps: AppApi) -> None:
    result = invoke(two_apps, "app", "get", "nope")
    assert result.exit_code == 2
    assert_one_line_error(result, "no application with id or name 'nope'")


def test_delete_by_name_deletes_by_id(two_apps: AppApi) -> None:
    result = invoke(two_apps, "app", "delete", "shop")
    assert result.exit_code == 0, result.output
    assert "deleted application shop (a1)" in result.stderr
    assert two_apps.calls()[-1] == ("DELETE", "/applications/a1")
    assert list(two_apps.apps) == ["a2"]


# --- cluster list / get ---------------------------------------------------------------------


def test_cluster_list_table() -> None:
    result = invoke(AppApi(), "cluster", "list")
    assert result.exit_code == 0, result.output
    header, _, berlin, far = result.stdout.splitlines()
    assert header.split() == [
        *["ID", "NAME", "STATE", "WORKERS", "FREE", "SLOTS", "MAX", "FREE", "CPU"],
        *["MAX", "FREE", "MEMORY", "MB", "LOCATION", "ACTIVE", "TASKS", "LAST", "SEEN"],
    ]
    cells = berlin.split()
    assert cells[:10] == [
        "c1",
        "berlin",
        "online",
        "3",
        "12",
        "3.5",
        "4096",
        "52.52,",
        "13.405",
        "7",
    ]
    assert far.split() == ["c2", "far", "offline", "0"]


def test_cluster_list_json() -> None:
    api = AppApi()
    result = invoke(api, "--output", "json", "cluster", "list", "--limit", "5")
    assert result.exit_code == 0, result.output
    page = json.loads(result.stdout)
    assert page["total"] == 2
    assert page["items"][0]["aggregate"]["groups"][0]["cpu"]["max"] == 3.5
    assert page["items"][1]["aggregate"] is None
    assert dict(api.requests[0].url.params) == {"limit": "5", "offset": "0"}


def test_cluster_get_shows_fields_and_capacity_groups() -> None:
    api = AppApi()
    result = invoke(api, "cluster", "get", "c1")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["max", "free", "memory", "mb", "4096"] in rows
    assert ["labels", "site=b"] in rows
    assert [
        "wasm",
        "gpu=no",
        "2",
        "8",
        "5.25",
        "2.62±0.88",
        "3.5",
        "6144",
        "4096",
        "0",
        "0",
        "0",
    ] in rows
    assert ["container", "1", "4", "0", "0±0", "0", "0", "0", "1", "0", "1"] in rows
    assert ["bridge", "workers", "1"] in rows
    assert api.calls() == [("GET", "/clusters/c1")]
    bare = invoke(api, "cluster", "get", "c2")
    assert bare.exit_code == 0, bare.output
    assert "RUNTIME" not in bare.stdout
    assert "offline" in bare.stdout


def test_help_lists_app_cluster_and_root() -> None:
    result = invoke(AppApi(), "--help")
    for command in ("app", "cluster", "root"):
        assert f" {command} " in result.stdout


# --- the client calls beneath ---------------------------------------------------------------


def test_create_application_takes_the_pydantic_spec_or_a_mapping_with_paths(
    tmp_path: Path,
) -> None:
    module = tmp_path / "web.wasm"
    module.write_bytes(WASM)
    api = AppApi()
    with Client("http://x", transport=httpx.MockTransport(api)) as client:
        made = client.create_application(
            ApplicationSpec(name="shop", services=[ServiceSpec(name="web", replicas=2)])
        )
        assert (made.id, made.services[0].replicas) == ("a1", 2)
        again = client.update_application(
            "a1", {"name": "shop", "services": [{"name": "web", "file": module}]}
        )
    assert again.generation == 2
    assert api.sent("POST") == {"name": "shop", "services": [{"name": "web", "replicas": 2}]}
    assert base64.b64decode(api.sent("PUT")["services"][0]["file"]) == WASM


async def test_async_client_calls_every_cluster_and_application_route() -> None:
    api = AppApi()
    async with AsyncClient("http://x", transport=httpx.MockTransport(api)) as client:
        made = await client.create_application({"name": "shop", "services": [{"name": "web"}]})
        await client.update_application(made.id, {"name": "shop", "services": [{"name": "w"}]})
        assert (await client.application(made.id)).generation == 2
        page = await client.applications(limit=10, offset=0)
        assert [a.name for a in page.items] == ["shop"]
        assert (await client.clusters()).items[0].aggregate is not None
        assert (await client.cluster("c1")).name == "berlin"
        await client.delete_application(made.id)
        with pytest.raises(Invalid) as caught:
            api.errors[("POST", "/applications")] = problem(422, "x", field="services[0].name")
            await client.create_application({"name": "shop", "services": [{"name": "web"}]})
    assert caught.value.field == "services[0].name"
    assert api.calls() == [
        ("POST", "/applications"),
        ("PUT", "/applications/a1"),
        ("GET", "/applications/a1"),
        ("GET", "/applications"),
        ("GET", "/clusters"),
        ("GET", "/clusters/c1"),
        ("DELETE", "/applications/a1"),
        ("POST", "/applications"),
    ]
