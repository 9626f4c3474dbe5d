"""The CLI against a mock transport: output formats, exit codes, messages, role hand-off."""

from __future__ import annotations

import base64
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from edgeplane.cli.main import app
from edgeplane.cli.output import Session
from edgeplane.client import Client
from edgeplane.clock import ManualClock
from edgeplane.config import Settings
from edgeplane.errors import Invalid
from edgeplane.security import joining

WASM = b"\x00asm\x01\x00\x00\x00"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("EDGEPLANE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EDGEPLANE_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def wasm(tmp_path: Path) -> Path:
    path = tmp_path / "add.wasm"
    path.write_bytes(WASM)
    return path


class FakeApi:
    """Just enough of the REST API: tasks finish as ``outcome`` says on the first wait."""

    def __init__(self, **outcome: Any) -> None:
        self.outcome = {"state": "completed", "results": [5], **outcome}
        self.requests: list[httpx.Request] = []
        self.tasks: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, httpx.Response] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/api/v1")
        if path in self.errors:
            return self.errors[path]
        if (request.method, path) == ("POST", "/tasks"):
            spec = json.loads(request.content)
            task_id = f"t{len(self.tasks) + 1}"
            self.tasks[task_id] = {
                **{k: v for k, v in spec.items() if k not in ("file", "start")},
                "id": task_id,
                "state": "pending",
                "started": spec.get("start", False),
            }
            if "wait" in request.url.params:
                self.tasks[task_id].update(self.outcome)
            return httpx.Response(201, json=self.tasks[task_id])
        if path == "/tasks":
            items = list(self.tasks.values())
            return httpx.Response(200, json={"items": items, "total": len(items) + 10})
        if path.startswith("/tasks/"):
            return self._task(request, path.split("/")[2:])
        if path.startswith("/workers"):
            return self._workers(request, path.split("/")[2:])
        return httpx.Response(404, json={"status": 404, "detail": f"no route {path}"})

    def _task(self, request: httpx.Request, parts: list[str]) -> httpx.Response:
        task = self.tasks.get(parts[0])
        if task is None:
            return httpx.Response(404, json={"status": 404, "detail": f"no task {parts[0]}"})
        if parts[1:] == [] and "wait" in request.url.params:
            task.update(self.outcome)
        if parts[1:] == ["start"]:
            task["state"] = "scheduled"
        if parts[1:] == ["results"]:
            keys = ("state", "results", "error", "exit_code")
            return httpx.Response(200, json={"task_id": task["id"], **_pick(task, keys)})
        if parts[1:] == ["logs"]:
            return httpx.Response(200, json={"task_id": task["id"], "stdout": "o\n", "stderr": "e"})
        return httpx.Response(200, json=task)

    def _workers(self, request: httpx.Request, parts: list[str]) -> httpx.Response:
        worker = {
            "id": "w1",
            "state": "draining" if parts[1:] == ["drain"] else "online",
            "capabilities": {"cpus": 4, "memory_mb": 2048, "runtimes": ["wasm", "host"]},
        }
        if request.method == "DELETE":
            return httpx.Response(204)
        if not parts:
            return httpx.Response(200, json={"items": [worker], "total": 1})
        return httpx.Response(200, json=worker)

    def sent(self, index: int = 0) -> Any:
        return json.loads(self.requests[index].content)


def _pick(doc: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: doc.get(k) for k in keys}


def invoke(api: Any, *args: str, clock: ManualClock | None = None) -> Result:
    """Run the CLI with its clients talking to ``api`` (a handler) through a mock transport."""

    def make_client(url: str | None, token: str | None, ca: Path | None) -> Client:
        return Client(url, token, transport=httpx.MockTransport(api), clock=clock)

    return CliRunner().invoke(app, list(args), obj=Session(make_client=make_client))


def assert_one_line_error(result: Result, text: str) -> None:
    assert text in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


# --- task run / create ----------------------------------------------------------------------


def test_run_prints_function_results(wasm: Path) -> None:
    api = FakeApi()
    result = invoke(api, "task", "run", str(wasm), "add", "2", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == "5\n"
    spec = api.sent()
    assert base64.b64decode(spec["file"]) == WASM
    assert spec | {"file": ""} == {
        "file": "",
        "runtime": "wasm",
        "mode": "function",
        "name": "add",
        "inputs": [2, 3],
        "env": {},
        "limits": {},
        "start": True,
    }
    # created and waited for in one request, held briefly first so that a task that
    # cannot be placed shows its reason within seconds
    (created,) = api.requests
    assert (created.method, created.url.params["wait"]) == ("POST", "2.0")


def test_run_takes_negative_numbers_and_all_task_options(wasm: Path) -> None:
    api = FakeApi(results=[-1, 2.5, "x"])
    result = invoke(
        api,
        "task",
        "run",
        str(wasm),
        "add",
        "-3",
        "2",
        "--export",
        "sum",
        "--env",
        "A=1",
        "--label",
        "site=a",
        "--fuel",
        "1000",
        "--memory-mb",
        "16",
        "--time-limit",
        "2",
        "--retries",
        "1",
        "--priority",
        "90",
        "--worker",
        "w1",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "-1 2.5 x\n"
    spec = api.sent()
    assert spec["inputs"] == [-3, 2]
    assert spec["export"] == "sum"
    assert spec["env"] == {"A": "1"}
    assert spec["constraints"] == {"labels": {"site": "a"}}
    assert spec["limits"] == {"fuel": 1000, "memory_mb": 16, "timeout_s": 2.0}
    assert (spec["retries"], spec["priority"], spec["worker_id"]) == (1, 90, "w1")


def test_secret_env_from_the_command_line_or_from_this_shell(
    wasm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROM_SHELL", "shell-value")
    api = FakeApi(results=[5])
    args = ("--secret-env", "TOKEN=t0k", "--secret-env", "FROM_SHELL", "--env", "A=1")
    result = invoke(api, "task", "run", str(wasm), "add", "1", *args)
    assert result.exit_code == 0, result.output
    spec = api.sent()
    assert spec["secret_env"] == {"TOKEN": "t0k", "FROM_SHELL": "shell-value"}
    assert spec["env"] == {"A": "1"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--secret-env", "NOT_SET_ANYWHERE_X"), "$NOT_SET_ANYWHERE_X is not set"),
        (("--secret-env", "=v"), "expected K=V or K"),
        (("--env", "K=1", "--secret-env", "K=2"), "in both env and secret_env"),
    ],
)
def test_bad_secret_env_exits_2(wasm: Path, args: tuple[str, ...], message: str) -> None:
    api = FakeApi()
    result = invoke(api, "task", "create", str(wasm), "add", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert api.requests == []


def test_run_json_prints_the_whole_task_with_either_output_flag(wasm: Path) -> None:
    for args in (
        ("--output", "json", "task", "run", str(wasm), "add", "1"),
        ("task", "run", str(wasm), "add", "1", "--output", "json"),
    ):
        result = invoke(FakeApi(), *args)
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert (doc["id"], doc["state"], doc["results"]) == ("t1", "completed", [5])


def test_run_wasi_passes_args_and_prints_stdout(wasm: Path) -> None:
    api = FakeApi(results={"stdout": "hello\n", "exit_code": 0}, stderr="warn\n")
    result = invoke(api, "task", "run", str(wasm), "main", "--mode", "wasi", "a", "-v")
    assert result.exit_code == 0, result.output
    assert result.stdout == "hello\n"
    assert result.stderr == "warn\n"
    assert api.sent()["cli_args"] == ["a", "-v"]


def test_run_host_command_after_double_dash() -> None:
    api = FakeApi(results={"stdout": "hi\n", "exit_code": 0})
    result = invoke(api, "task", "run", "--runtime", "host", "--", "sh", "-c", "echo hi")
    assert result.exit_code == 0, result.output
    assert result.stdout == "hi\n"
    spec = api.sent()
    assert (spec["runtime"], spec["name"], spec["command"]) == (
        "host",
        "sh",
        ["sh", "-c", "echo hi"],
    )


def test_run_container_with_its_image() -> None:
    api = FakeApi(results={"stdout": "hi\n", "exit_code": 0})
    result = invoke(
        api, "task", "run", "--runtime", "container", "--image", "busybox:1.36", "--", "echo", "hi"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "hi\n"
    spec = api.sent()
    assert (spec["runtime"], spec["name"], spec["image"], spec["command"]) == (
        "container",
        "busybox",
        "busybox:1.36",
        ["echo", "hi"],
    )
    default = FakeApi()
    invoke(default, "task", "create", "--runtime", "container", "--image", "busybox")
    assert "command" not in default.sent()  # the image's own Cmd


def test_a_failed_task_exits_1_with_its_error(wasm: Path) -> None:
    api = FakeApi(state="failed", results=None, error="wasm trap: unreachable")
    result = invoke(api, "task", "run", str(wasm), "add")
    assert result.exit_code == 1
    assert_one_line_error(result, "task t1 failed: wasm trap: unreachable")


def test_wait_timeout_exits_1_and_leaves_the_task(wasm: Path) -> None:
    api = FakeApi(state="running")
    result = invoke(api, "task", "run", str(wasm), "add", "--timeout", "0", clock=ManualClock())
    assert result.exit_code == 1
    assert_one_line_error(result, "task t1 still pending")
    assert "edgeplane task stop t1" in result.stderr
    # no time to hold the create for, and none left to poll with
    assert [r.method for r in api.requests] == ["POST"]
    assert "wait" not in api.requests[0].url.params


def test_no_wait_prints_the_id(wasm: Path) -> None:
    api = FakeApi()
    result = invoke(api, "task", "run", "--no-wait", str(wasm), "add")
    assert (result.exit_code, result.stdout) == (0, "t1\n")
    assert len(api.requests) == 1


def test_create_does_not_start_and_prints_the_id(wasm: Path) -> None:
    api = FakeApi()
    result = invoke(api, "task", "create", str(wasm), "add", "7")
    assert (result.exit_code, result.stdout) == (0, "t1\n")
    assert api.sent()["start"] is False


def test_an_oci_reference_is_sent_as_image_url() -> None:
    api = FakeApi()
    result = invoke(api, "task", "create", "oci://reg/add:1", "add")
    assert result.exit_code == 0, result.output
    assert api.sent()["image_url"] == "oci://reg/add:1"
    assert "file" not in api.sent()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("task", "run", "missing.wasm", "add"), "cannot read missing.wasm"),
        (("task", "run", "x.wasm"), "give FILE.wasm and NAME"),
        (("task", "run", "--runtime", "host"), "give the command after --"),
        (("task", "run", "--runtime", "container"), "a container task needs it"),
        (("task", "run", "--image", "busybox", "x.wasm", "add"), "only with --runtime container"),
        (("task", "run", "x.wasm", "add", "--env", "NOEQUALS"), "expected K=V"),
        (("task", "run", "x.wasm", "add", "--wiat"), "no such option: --wiat"),
        (("task", "frobnicate"), "No such command"),
    ],
)
def test_bad_input_exits_2_without_traceback(args: tuple[str, ...], message: str) -> None:
    api = FakeApi()
    result = invoke(api, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert api.requests == []


# --- other task commands --------------------------------------------------------------------


def created(api: FakeApi, wasm: Path) -> None:
    assert invoke(api, "task", "create", str(wasm), "add").exit_code == 0


def test_start_stop_get_and_list(wasm: Path) -> None:
    api = FakeApi()
    created(api, wasm)
    assert invoke(api, "task", "start", "t1").stdout == "t1 scheduled\n"
    got = invoke(api, "task", "get", "t1")
    assert got.exit_code == 0
    assert "scheduled" in got.stdout
    assert "add" in got.stdout
    assert json.loads(invoke(api, "--output", "json", "task", "get", "t1").stdout)["id"] == "t1"
    listed = invoke(api, "task", "list", "--state", "scheduled", "--limit", "5")
    assert listed.exit_code == 0
    assert "t1" in listed.stdout
    assert "1 of 11 tasks shown" in listed.stderr
    assert dict(api.requests[-1].url.params) == {"state": "scheduled", "limit": "5", "offset": "0"}
    page = json.loads(invoke(api, "task", "list", "--output", "json").stdout)
    assert page["total"] == 11
    assert invoke(api, "task", "stop", "t1").exit_code == 0
    assert api.requests[-1].url.path == "/api/v1/tasks/t1/stop"


def test_results_logs_wait_and_delete(wasm: Path) -> None:
    api = FakeApi()
    created(api, wasm)
    pending = invoke(api, "task", "results", "t1")
    assert (pending.exit_code, pending.stdout) == (0, "")
    assert "no results yet" in pending.stderr
    waited = invoke(api, "task", "wait", "t1")
    assert (waited.exit_code, waited.stdout) == (0, "5\n")
    assert invoke(api, "task", "results", "t1").stdout == "5\n"
    logs = invoke(api, "task", "logs", "t1")
    assert (logs.stdout, logs.stderr) == ("o\n", "e\n")
    deleted = invoke(api, "task", "delete", "t1")
    assert deleted.exit_code == 0
    assert api.requests[-1].method == "DELETE"


def test_results_of_a_failed_task_exit_1(wasm: Path) -> None:
    api = FakeApi(state="failed", results=None, error="out of fuel")
    created(api, wasm)
    invoke(api, "task", "wait", "t1")
    result = invoke(api, "task", "results", "t1")
    assert result.exit_code == 1
    assert "out of fuel" in result.stderr


# --- errors from the server -----------------------------------------------------------------


def problem(status: int, detail: str, **extra: Any) -> httpx.Response:
    doc = {"type": "about:blank", "title": "t", "status": status, "detail": detail, **extra}
    return httpx.Response(status, json=doc, headers={"Content-Type": "application/problem+json"})


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (401, 2, "unauthorized: check --token / EDGEPLANE_TOKEN"),
        (403, 2, "unauthorized: check --token / EDGEPLANE_TOKEN"),
        (404, 2, "error: no such task"),
        (409, 1, "no such task"),
        (422, 2, "priority: no such task"),
        (503, 3, "no such task"),
        (500, 1, "HTTP 500: no such task"),
    ],
)
def test_server_errors_map_to_exit_codes(status: int, code: int, message: str) -> None:
    api = FakeApi()
    api.errors["/tasks/t9"] = problem(status, "no such task", field="priority")
    result = invoke(api, "task", "get", "t9")
    assert result.exit_code == code
    assert_one_line_error(result, message)


def test_unreachable_server_exits_3_naming_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    result = invoke(refuse, "--url", "http://127.0.0.1:9", "worker", "list")
    assert result.exit_code == 3
    assert_one_line_error(result, "cannot reach edgeplane at http://127.0.0.1:9")


def test_url_and_token_come_from_flags_env_or_the_up_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = FakeApi()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "endpoint").write_text("http://from-file:7070\n")
    (tmp_path / "data" / "admin-token").write_text("file-token\n")
    invoke(api, "worker", "list")
    monkeypatch.setenv("EDGEPLANE_TOKEN", "env-token")
    invoke(api, "worker", "list")
    invoke(api, "--url", "http://flag:1", "--token", "flag-token", "worker", "list")
    seen = [
        (f"{r.url.scheme}://{r.url.netloc.decode()}", r.headers["Authorization"])
        for r in api.requests
    ]
    assert seen == [
        ("http://from-file:7070", "Bearer file-token"),
        ("http://from-file:7070", "Bearer env-token"),
        ("http://flag:1", "Bearer flag-token"),
    ]


def test_output_format_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPLANE_OUTPUT", "json")
    result = invoke(FakeApi(), "worker", "list")
    assert json.loads(result.stdout)["items"][0]["id"] == "w1"


# --- workers --------------------------------------------------------------------------------


def test_worker_commands() -> None:
    api = FakeApi()
    listed = invoke(api, "worker", "list")
    assert listed.exit_code == 0
    assert "w1" in listed.stdout
    assert "wasm, host" in listed.stdout
    got = invoke(api, "worker", "get", "w1")
    assert "2048" in got.stdout
    assert invoke(api, "worker", "drain", "w1").stdout == "w1 draining\n"
    assert invoke(api, "worker", "delete", "w1").exit_code == 0
    assert [(r.method, r.url.path) for r in api.requests] == [
        ("GET", "/api/v1/workers"),
        ("GET", "/api/v1/workers/w1"),
        ("POST", "/api/v1/workers/w1/drain"),
        ("DELETE", "/api/v1/workers/w1"),
    ]


# --- roles ----------------------------------------------------------------------------------


@pytest.fixture
def roles(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Stand-ins for ``edgeplane.roles.*`` that record what the CLI handed them."""
    calls: dict[str, Any] = {}

    async def run_up(settings: Settings) -> None:
        calls["up"] = settings

    async def run_manager(settings: Settings) -> None:
        calls["manager"] = settings

    async def run_worker(settings: Settings, *, worker_id: str | None, labels: Any) -> None:
        calls["worker"] = (settings, worker_id, labels)

    package = types.ModuleType("edgeplane.roles")
    monkeypatch.setitem(sys.modules, "edgeplane.roles", package)
    for name, function in (("up", run_up), ("manager", run_manager), ("worker", run_worker)):
        module = types.ModuleType(f"edgeplane.roles.{name}")
        setattr(module, function.__name__, function)
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return calls


def test_up_builds_settings_from_flags(roles: dict[str, Any], tmp_path: Path) -> None:
    result = invoke(
        FakeApi(), "up", "--port", "8080", "--workers", "3", "--data-dir", str(tmp_path)
    )
    assert result.exit_code == 0, result.output
    settings = roles["up"]
    assert (settings.port, settings.workers, settings.data_dir) == (8080, 3, tmp_path)
    assert settings.allow_host is False
    invoke(FakeApi(), "up", "--allow-host", "--scheduler", "resource-fit")
    assert (roles["up"].allow_host, roles["up"].scheduler) == (True, "resource-fit")


def test_up_reads_the_config_file_below_flags(roles: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "edgeplane.yaml"
    config.write_text("port: 9000\nheartbeat-s: 1.5\n")
    result = invoke(FakeApi(), "up", "--config", str(config), "--port", "9100")
    assert result.exit_code == 0, result.output
    assert (roles["up"].port, roles["up"].heartbeat_s) == (9100, 1.5)


def test_the_grace_period_of_lost_workers(roles: dict[str, Any]) -> None:
    assert invoke(FakeApi(), "manager", "--lost-grace-s", "40").exit_code == 0
    assert roles["manager"].lost_grace_s == 40
    assert invoke(FakeApi(), "up", "--lost-grace-s", "0").exit_code == 0
    assert roles["up"].lost_grace_s == 0
    refused = invoke(FakeApi(), "manager", "--lost-grace-s", "-1")
    assert refused.exit_code == 2
    assert "--lost-grace-s" in refused.stderr


def test_manager_role_flags(roles: dict[str, Any]) -> None:
    reserved = invoke(FakeApi(), "manager", "--cluster-id", "clusters")
    assert reserved.exit_code == 2
    assert "reserved" in reserved.stderr
    bad_location = invoke(FakeApi(), "manager", "--location", "north")
    assert bad_location.exit_code == 2
    assert "lat,lon" in bad_location.stderr
    result = invoke(
        FakeApi(),
        "manager",
        "--broker",
        "mqtt://b:1883",
        "--cluster-id",
        "c1",
        "--root",
        "mqtt://r:1883",
        "--label",
        "region=eu",
        "--location",
        "52.5,13.4",
    )
    assert result.exit_code == 0, result.output
    settings = roles["manager"]
    assert (settings.broker, settings.cluster_id, settings.root) == (
        "mqtt://b:1883",
        "c1",
        "mqtt://r:1883",
    )
    assert settings.labels == {"region": "eu"}
    assert settings.location == "52.5,13.4"


def test_manager_through_a_bridge(
    roles: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--root-via-bridge`` needs the site's broker; ``--print-bridge-config`` needs the
    root's address and an identity, prints the config and starts nothing."""
    monkeypatch.delenv("EDGEPLANE_JOIN_TOKEN", raising=False)
    alone = invoke(FakeApi(), "manager", "--root-via-bridge")
    assert alone.exit_code == 2
    assert "--broker" in alone.stderr
    result = invoke(FakeApi(), "manager", "--broker", "mqtt://site:1883", "--root-via-bridge")
    assert result.exit_code == 0, result.output
    assert (roles["manager"].root_via_bridge, roles["manager"].root) == (True, "")
    roles.clear()

    data = ["--data-dir", str(tmp_path), "--cluster-id", "berlin"]
    no_root = invoke(FakeApi(), "manager", "--print-bridge-config", *data)
    assert (no_root.exit_code, "--root" in no_root.stderr) == (2, True)
    never_joined = invoke(
        FakeApi(), "manager", "--print-bridge-config", "--root", "mqtt://r:1883", *data
    )
    assert (never_joined.exit_code, "--join" in never_joined.stderr) == (2, True)
    joining.save(tmp_path / "uplink", joining.Identity("berlin", "berlin", "pw", b"k" * 32))
    printed = invoke(
        FakeApi(), "manager", "--print-bridge-config", "--root", "mqtt://r:1883", *data
    )
    assert printed.exit_code == 0, printed.output
    assert "remote_password pw\n" in printed.stdout
    assert roles == {}  # nothing started


def test_worker_role_gets_id_and_labels(roles: dict[str, Any]) -> None:
    result = invoke(
        FakeApi(),
        "worker",
        "--manager",
        "mqtt://m:1883",
        "--worker-id",
        "w7",
        "--label",
        "site=a",
        "--allow-host",
        "--slots",
        "4",
    )
    assert result.exit_code == 0, result.output
    settings, worker_id, labels = roles["worker"]
    assert (settings.broker, settings.allow_host, settings.slots) == ("mqtt://m:1883", True, 4)
    assert (worker_id, labels) == ("w7", {"site": "a"})


def test_host_user_is_a_flag_of_up_and_worker_checked_before_it_runs(
    roles: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEPLANE_HOST_USER", raising=False)
    worker = ("worker", "--manager", "mqtt://m:1883", "--allow-host")
    assert invoke(FakeApi(), *worker, "--host-user", "root").exit_code == 0
    assert roles["worker"][0].host_user == "root"
    assert invoke(FakeApi(), "up", "--allow-host").exit_code == 0
    assert roles["up"].host_user is None  # the role picks the unprivileged default
    monkeypatch.setenv("EDGEPLANE_HOST_USER", "root")
    assert invoke(FakeApi(), "up", "--allow-host").exit_code == 0
    assert roles["up"].host_user == "root"
    roles.clear()
    for argv in (worker, ("up", "--allow-host"), ("up",)):
        refused = invoke(FakeApi(), *argv, "--host-user", "no-such-user-here")
        assert refused.exit_code == 2, refused.output
        assert "host_user: no such user 'no-such-user-here'" in refused.stderr
    assert roles == {}  # no role was started


def test_wasm_defaults_are_flags_of_up_and_worker(
    roles: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEPLANE_WASM_MEMORY_MB", raising=False)
    monkeypatch.delenv("EDGEPLANE_WASM_TIMEOUT_S", raising=False)
    assert invoke(FakeApi(), "up").exit_code == 0
    assert (roles["up"].wasm_memory_mb, roles["up"].wasm_timeout_s) == (64, 60.0)
    raised = ("--wasm-memory-mb", "512", "--wasm-timeout-s", "600")
    assert invoke(FakeApi(), "up", *raised).exit_code == 0
    assert (roles["up"].wasm_memory_mb, roles["up"].wasm_timeout_s) == (512, 600.0)
    assert invoke(FakeApi(), "worker", "--manager", "mqtt://m:1", *raised).exit_code == 0
    assert (roles["worker"][0].wasm_memory_mb, roles["worker"][0].wasm_timeout_s) == (512, 600)
    monkeypatch.setenv("EDGEPLANE_WASM_TIMEOUT_S", "90")
    assert invoke(FakeApi(), "up").exit_code == 0
    assert roles["up"].wasm_timeout_s == 90.0
    too_much = invoke(FakeApi(), "up", "--wasm-memory-mb", str(2**53))
    assert too_much.exit_code == 2
    assert "--wasm-memory-mb" in too_much.stderr


def test_worker_without_manager_or_with_a_subcommand_is_usage(roles: dict[str, Any]) -> None:
    assert invoke(FakeApi(), "worker").exit_code == 2
    mixed = invoke(FakeApi(), "worker", "--manager", "mqtt://m:1", "list")
    assert mixed.exit_code == 2
    assert "worker" not in roles


def test_a_crashing_role_prints_one_line(
    roles: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run_manager(settings: Settings) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(sys.modules["edgeplane.roles.manager"], "run_manager", run_manager)
    result = invoke(FakeApi(), "manager", "--broker", "mqtt://b:1")
    assert result.exit_code == 1
    assert_one_line_error(result, "unexpected RuntimeError: boom")


def test_version_and_help() -> None:
    assert invoke(FakeApi(), "--version").stdout.startswith("edgeplane ")
    result = invoke(FakeApi(), "--help")
    assert result.exit_code == 0
    for command in ("up", "manager", "worker", "task"):
        assert command in result.stdout


# --- jobs, workflows and schedules -----------------------------------------------------------


class RunApi:
    """Just enough of /jobs, /workflows, /schedules and scheduled /tasks.

    A run ends as ``outcome`` says (task name -> state, results, error) on its
    ``finish_after``-th long-poll.
    """

    def __init__(self, state: str = "completed", finish_after: int = 1, **outcome: Any) -> None:
        self.state = state
        self.finish_after = finish_after
        self.outcome: dict[str, dict[str, Any]] = outcome
        self.requests: list[httpx.Request] = []
        self.runs: dict[str, dict[str, Any]] = {}
        self.polls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/api/v1")
        parts = path.strip("/").split("/")
        if request.method == "POST" and len(parts) == 1:
            spec = json.loads(request.content)
            if "schedule" in spec:
                return httpx.Response(201, json=self._schedule(spec, parts[0]))
            return httpx.Response(201, json=self._create(spec, parts[0]))
        if parts[0] == "schedules":
            if request.method == "DELETE":
                return httpx.Response(204)
            page = {"items": [self._schedule({"schedule": "@daily"}, "jobs")], "total": 1}
            return httpx.Response(200, json=page)
        if len(parts) == 1:
            items = [{**r, "tasks": []} for r in self.runs.values()]
            return httpx.Response(200, json={"items": items, "total": len(items)})
        run = self.runs[parts[1]]
        if parts[2:] == ["stop"]:
            run["state"] = "cancelled"
        elif "wait" in request.url.params:
            self.polls += 1
            if self.polls >= self.finish_after:
                self._finish(run)
        return httpx.Response(200, json=run)

    def _create(self, spec: dict[str, Any], collection: str) -> dict[str, Any]:
        run_id = f"{collection[0]}{len(self.runs) + 1}"
        tasks = [
            {"id": f"t{i + 1}", "name": t.get("name", ""), "state": "pending", **_deps(t)}
            for i, t in enumerate(spec["tasks"])
        ]
        self.runs[run_id] = {
            "id": run_id,
            "kind": collection.removesuffix("s"),
            "name": spec.get("name", ""),
            "mode": spec.get("mode", "dag"),
            "state": "running",
            "task_ids": [t["id"] for t in tasks],
            "names": {t["name"]: t["id"] for t in tasks},
            "tasks": tasks,
        }
        return self.runs[run_id]

    def _finish(self, run: dict[str, Any]) -> None:
        run["state"] = self.state
        for task in run["tasks"]:
            task.update({"state": "completed", **self.outcome.get(task["name"], {})})

    def _schedule(self, spec: dict[str, Any], collection: str) -> dict[str, Any]:
        return {
            "id": "s1",
            "kind": "task" if collection == "tasks" else "job",
            "name": spec.get("name", ""),
            "cron": spec["schedule"],
            "timezone": spec.get("timezone", "UTC"),
            "next_run": 1_700_000_000.0,
            "runs": 4,
        }

    def sent(self, index: int = 0) -> Any:
        return json.loads(self.requests[index].content)


def _deps(task: dict[str, Any]) -> dict[str, Any]:
    """depends_on as the server stores it: task ids (t<n> by position in the fake)."""
    return {"depends_on": task["depends_on"]} if "depends_on" in task else {}


SPEC = """\
name: nightly
mode: dag
tasks:
  - name: fetch
    file: add.wasm
    inputs: [1, 2]
  - name: train
    file: {inline}
    depends_on: [fetch]
    inputs_from: {{task: fetch, index: 0}}
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    """A spec in its own directory naming a module next to it, and one inline."""
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "add.wasm").write_bytes(WASM)
    path = folder / "nightly.yaml"
    path.write_text(SPEC.format(inline=base64.b64encode(b"inline").decode()))
    return path


def test_job_create_reads_the_spec_and_prints_the_id(spec: Path) -> None:
    api = RunApi()
    result = invoke(api, "job", "create", str(spec))
    assert (result.exit_code, result.stdout) == (0, "j1\n"), result.output
    (request,) = api.requests
    assert (request.method, request.url.path) == ("POST", "/api/v1/jobs")
    sent = api.sent()
    assert (sent["name"], sent["mode"]) == ("nightly", "dag")
    fetch, train = sent["tasks"]
    assert base64.b64decode(fetch["file"]) == WASM
    assert base64.b64decode(train["file"]) == b"inline"
    assert train["inputs_from"] == {"task": "fetch", "index": 0}


def test_job_create_wait_prints_the_tree_and_exits_1_when_it_failed(spec: Path) -> None:
    api = RunApi(
        state="failed",
        fetch={"worker_id": "w1", "results": [3]},
        train={"state": "failed", "error": "wasm trap: unreachable"},
    )
    result = invoke(api, "job", "create", str(spec), "--wait")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert "job j1 nightly (dag)  failed  2/2 done" in lines[0]
    assert lines[1].split()[1:] == ["fetch", "completed", "on", "w1", "→", "[3]"]
    assert "train  failed     after fetch  wasm trap: unreachable" in lines[2]
    assert result.stderr == "error: job j1 failed: train: wasm trap: unreachable\n"
    assert [r.url.params.get("wait") for r in api.requests] == [None, "30.0"]


def test_workflow_apply_wait_json_prints_the_final_document(spec: Path) -> None:
    api = RunApi(fetch={"results": [3]})
    result = invoke(api, "workflow", "apply", str(spec), "--wait", "--output", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["id"], doc["kind"], doc["state"]) == ("w1", "workflow", "completed")
    assert doc["tasks"][0]["results"] == [3]
    assert api.requests[0].url.path == "/api/v1/workflows"


def test_watch_on_a_terminal_redraws_from_short_long_polls(
    spec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = RunApi(finish_after=3)
    assert invoke(api, "workflow", "apply", str(spec)).exit_code == 0
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: stdout is a terminal
    result = invoke(api, "workflow", "get", "w1", "--watch")
    assert result.exit_code == 0, result.output
    assert "completed" in result.stdout
    assert "fetch" in result.stdout
    polls = [r.url.params.get("wait") for r in api.requests[1:]]
    assert polls == [None, "2.0", "2.0", "2.0"]


def test_waiting_too_long_exits_1_and_leaves_the_run(spec: Path) -> None:
    api = RunApi(finish_after=99)
    result = invoke(
        api, "job", "create", str(spec), "--wait", "--timeout", "0", clock=ManualClock()
    )
    assert result.exit_code == 1
    assert_one_line_error(result, "job j1 still running after 0s")
    assert "edgeplane job stop j1" in result.stderr


def test_a_spec_with_a_schedule_prints_the_schedule(spec: Path) -> None:
    spec.write_text(spec.read_text() + "schedule: '0 3 * * *'\ntimezone: Europe/Berlin\n")
    api = RunApi()
    result = invoke(api, "job", "create", str(spec))
    assert (result.exit_code, result.stdout) == (0, "s1\n"), result.output
    assert "next run 2023-11-14 23:13:20+01:00" in result.stderr
    assert api.sent()["schedule"] == "0 3 * * *"
    as_json = invoke(api, "--output", "json", "workflow", "apply", str(spec))
    assert json.loads(as_json.stdout)["cron"] == "0 3 * * *"


def test_task_run_with_a_schedule_makes_one(wasm: Path) -> None:
    api = RunApi()
    result = invoke(
        api,
        "task",
        "run",
        str(wasm),
        "add",
        "1",
        "--schedule",
        "*/5 * * * *",
        "--timezone",
        "Europe/Berlin",
    )
    assert (result.exit_code, result.stdout) == (0, "s1\n"), result.output
    assert "next run" in result.stderr
    (request,) = api.requests
    assert request.url.path == "/api/v1/tasks"
    sent = api.sent()
    assert (sent["schedule"], sent["timezone"], sent["inputs"]) == (
        "*/5 * * * *",
        "Europe/Berlin",
        [1],
    )
    alone = invoke(api, "task", "run", str(wasm), "add", "--timezone", "UTC")
    assert alone.exit_code == 2
    assert "only with --schedule" in alone.stderr


def test_job_and_workflow_list_get_and_stop(spec: Path) -> None:
    api = RunApi()
    invoke(api, "job", "create", str(spec))
    invoke(api, "workflow", "apply", str(spec))
    jobs = invoke(api, "job", "list")
    assert jobs.exit_code == 0
    assert "MODE" in jobs.stdout
    assert "j1" in jobs.stdout
    workflows = invoke(api, "workflow", "list", "--output", "json")
    assert [r["id"] for r in json.loads(workflows.stdout)["items"]] == ["j1", "w2"]
    got = invoke(api, "job", "get", "j1")
    assert got.stdout.splitlines()[0] == "job j1 nightly (dag)  running  0/2 done"
    assert invoke(api, "job", "stop", "j1").stdout == "j1 cancelled\n"
    assert invoke(api, "workflow", "stop", "w2").stdout == "w2 cancelled\n"
    assert [(r.method, r.url.path) for r in api.requests[2:]] == [
        ("GET", "/api/v1/jobs"),
        ("GET", "/api/v1/workflows"),
        ("GET", "/api/v1/jobs/j1"),
        ("POST", "/api/v1/jobs/j1/stop"),
        ("POST", "/api/v1/workflows/w2/stop"),
    ]


def test_schedule_list_and_delete() -> None:
    api = RunApi()
    listed = invoke(api, "schedule", "list")
    assert listed.exit_code == 0
    assert "@daily" in listed.stdout
    assert "2023-11-14 22:13:20+00:00" in listed.stdout
    deleted = invoke(api, "schedule", "delete", "s1")
    assert deleted.exit_code == 0
    assert "deleted schedule s1" in deleted.stderr
    assert api.requests[-1].method == "DELETE"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tasks: [a\nname: x\n", "nightly.yaml: bad YAML at line 2"),
        ("tasks:\n  - name: a\n  - file: gone.wasm\n", "tasks[1].file: no such file: "),
        ("tasks:\n  - name: a\n    run_if: sometimes\n", "tasks[0].run_if: Input should be"),
        ("tasks: []\n", "tasks: List should have at least 1 item"),
        ("- name: a\n", "expected a mapping with `tasks`, got a list"),
        ("", "expected a mapping with `tasks`, got nothing"),
    ],
)
def test_a_bad_spec_exits_2_with_one_line(spec: Path, text: str, message: str) -> None:
    spec.write_text(text)
    api = RunApi()
    result = invoke(api, "job", "create", str(spec))
    assert result.exit_code == 2, result.output
    assert_one_line_error(result, message)
    assert len(result.stderr.splitlines()) == 1
    assert api.requests == []


def test_a_missing_spec_exits_2(tmp_path: Path) -> None:
    result = invoke(RunApi(), "workflow", "apply", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert_one_line_error(result, "cannot read")


def test_json_specs_by_suffix_or_by_their_first_character(tmp_path: Path) -> None:
    from edgeplane.cli.specfile import field_path, load_spec

    (tmp_path / "add.wasm").write_bytes(WASM)
    for name in ("job.json", "job.spec"):
        path = tmp_path / name
        path.write_text('{"mode": "sequential", "tasks": [{"name": "a", "file": "add.wasm"}]}')
        doc = load_spec(path, "job")
        assert doc["mode"] == "sequential"
        assert base64.b64decode(doc["tasks"][0]["file"]) == WASM
    broken = tmp_path / "broken.json"
    broken.write_text('{"tasks": [\n  {"name": }\n]}')
    with pytest.raises(Invalid, match=r"broken\.json: bad JSON at line 2, column 12"):
        load_spec(broken, "workflow")
    assert field_path(("tasks", 3, "limits", "fuel")) == "tasks[3].limits.fuel"


def test_help_lists_job_workflow_and_schedule() -> None:
    result = invoke(FakeApi(), "--help")
    for command in ("job", "workflow", "schedule"):
        assert command in result.stdout


def test_a_task_that_waits_says_why() -> None:
    """A task no worker can run is not a silent wait: its reason is on stderr while the
    CLI waits, and in the message when it stops waiting."""
    why = "no worker offers runtime 'host'"
    api = FakeApi(state="pending", reason=why, results=None)
    clock = _Ticking()
    result = invoke(
        api, "task", "run", "--timeout", "5", "--runtime", "host", "--", "true", clock=clock
    )
    assert result.exit_code == 1, result.output
    assert f"waiting for the task: pending: {why}" in result.stderr
    assert f"still pending after 5s: {why}" in result.stderr


class _Ticking(ManualClock):
    """Each reading of the monotonic clock is 3 s after the one before: waits run out."""

    def monotonic(self) -> float:
        self.advance(3)
        return super().monotonic()


def test_worker_list_shows_labels_and_leaves_out_long_gone_workers() -> None:
    now = time.time()
    workers = [
        {
            "id": "w1",
            "state": "online",
            "last_seen": now,
            "capabilities": {"cpus": 2, "labels": {"site": "a"}},
        },
        {"id": "old", "state": "offline", "last_seen": now - 3 * 24 * 3600},
    ]

    def api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": workers, "total": 2})

    listed = invoke(api, "worker", "list")
    assert listed.exit_code == 0, listed.output
    assert "site=a" in listed.stdout
    assert "old" not in listed.stdout
    assert "1 workers offline for more than a day not shown" in listed.stderr
    everything = invoke(api, "worker", "list", "--all")
    assert "old" in everything.stdout


def test_task_run_can_pin_a_cluster(wasm: Path) -> None:
    api = FakeApi()
    assert invoke(api, "task", "run", str(wasm), "add", "--cluster", "berlin").exit_code == 0
    assert api.sent()["cluster_id"] == "berlin"


def test_workers_manages_and_worker_keeps_its_old_spellings_hidden() -> None:
    api = FakeApi()
    assert "w1" in invoke(api, "workers", "list").stdout
    assert "w1" in invoke(api, "worker", "list").stdout  # the old spelling still works
    shown = CliRunner().invoke(app, ["worker", "--help"], obj=Session())
    assert "--manager" in shown.stdout
    assert "drain" not in shown.stdout


def test_ids_and_domains_that_are_no_topic_level_are_usage(roles: dict[str, Any]) -> None:
    """'.' works on Mosquitto and gets the client dropped by NATS: refused everywhere."""
    cases = [
        (("worker", "--manager", "mqtt://m:1", "--worker-id", "edge1.example"), "worker_id"),
        (("worker", "--manager", "mqtt://m:1", "--cluster-id", "eu.west"), "cluster_id"),
        (("manager", "--cluster-id", "eu.west"), "cluster_id"),
        (("up", "--domain", "acme.io"), "domain"),
    ]
    for argv, field in cases:
        refused = invoke(FakeApi(), *argv)
        assert refused.exit_code == 2, refused.output
        assert field in refused.stderr
    assert roles == {}  # no role was started
