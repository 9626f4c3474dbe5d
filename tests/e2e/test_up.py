"""As a user would: `edgeplane up` and separate role processes, driven by the CLI, HTTP and
the Python client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from edgeplane import Client
from edgeplane.model import Task
from registry_fixtures import RegistryProcess

pytestmark = pytest.mark.timeout(120)

EDGEPLANE = [sys.executable, "-m", "edgeplane"]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGEPLANE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_healthy(url: str, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"process exited early: {proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=1).json()["broker"]:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def wait_until(condition: Callable[[], T | None], what: str, timeout: float = 20) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`edgeplane up` in a subprocess with its own data dir; yields (url, env for the CLI)."""
    port = free_port()
    env = {**os.environ, "EDGEPLANE_DATA_DIR": str(tmp_path)}
    env.pop("EDGEPLANE_URL", None)
    env.pop("EDGEPLANE_TOKEN", None)
    proc = subprocess.Popen(
        [
            *EDGEPLANE,
            "up",
            "--data-dir",
            str(tmp_path),
            "--port",
            str(port),
            "--heartbeat-s",
            "0.5",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url, env
    finally:
        stop(proc)


def test_first_task_through_the_cli(up: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    _, env = up
    token = tmp_path / "admin-token"
    assert token.stat().st_mode & 0o777 == 0o600
    add = tmp_path / "examples" / "add.wasm"
    for _ in range(50):  # `up` writes the examples right after it is healthy
        if add.exists():
            break
        time.sleep(0.1)
    done = cli("task", "run", str(add), "add", "2", "3", "--wait", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "5"
    listed = cli("task", "list", "--output", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    workers = cli("worker", "list", env=env)
    assert workers.returncode == 0 and "local-1" in workers.stdout


def test_task_run_takes_an_oci_reference(
    up: tuple[str, dict[str, str]], tmp_path: Path, oci_registry: RegistryProcess
) -> None:
    """The DESIGN contract: `task run` accepts an oci:// reference in place of a file."""
    _, env = up
    add = tmp_path / "examples" / "add.wasm"
    wait_until(add.exists, "the examples")
    ref = f"oci://{oci_registry.address}/demo/add:1"
    pushed = cli("artifact", "push", str(add), ref, env=env)
    assert pushed.returncode == 0, pushed.stderr
    done = cli("task", "run", ref, "add", "2", "3", "--wait", env=env)
    assert (done.returncode, done.stdout.strip()) == (0, "5"), done.stderr
    unknown = cli("task", "run", ref.replace(":1", ":nope"), "add", "2", "3", env=env)
    assert unknown.returncode == 2 and "artifact_not_found" in unknown.stderr, unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_cli_errors_have_exit_codes(up: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    _, env = up
    add = tmp_path / "examples" / "add.wasm"
    missing_export = cli("task", "run", str(add), "nope", "1", env=env)
    assert missing_export.returncode == 2
    assert "Traceback" not in missing_export.stderr
    no_file = cli("task", "run", str(tmp_path / "none.wasm"), "add", "1", "2", env=env)
    assert no_file.returncode == 2
    unknown = cli("task", "get", "no-such-task", env=env)
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    down = cli("task", "list", "--url", f"http://127.0.0.1:{free_port()}", env=env)
    assert down.returncode == 3
    bad_token = cli("task", "list", "--token", "wrong", env=env)
    assert bad_token.returncode == 2


def test_python_client(up: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, _ = up
    token = (tmp_path / "admin-token").read_text().strip()
    with Client(url, token) as client:
        task = client.submit(tmp_path / "examples" / "add.wasm", name="add", inputs=[20, 22])
        assert client.result(task.id, timeout=30) == [42]


def test_manager_and_worker_processes_survive_a_killed_worker(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    """kill -9 of a worker mid-task: retried elsewhere (retries=1) or failed worker_lost."""
    port = free_port()
    token = "e2e-token"
    env = {
        **os.environ,
        "EDGEPLANE_ADMIN_TOKEN": token,
        "EDGEPLANE_DOMAIN": unique_domain,
        "EDGEPLANE_HEARTBEAT_S": "0.5",
    }
    manager = subprocess.Popen(
        [
            *EDGEPLANE,
            "manager",
            "--broker",
            fast_broker_url,
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "manager"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workers = {
        name: subprocess.Popen(
            [
                *EDGEPLANE,
                "worker",
                "--manager",
                fast_broker_url,
                "--worker-id",
                name,
                "--allow-host",
                "--data-dir",
                str(tmp_path / name),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("wa", "wb")
    }
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, manager)
        with Client(url, token) as client:
            wait_until(
                lambda: len([w for w in client.workers().items if w.state == "online"]) == 2,
                "both workers to register",
            )
            slow = {"runtime": "host", "command": ["sh", "-c", "sleep 3; echo done"], "start": True}
            retried = client.create_task({"name": "retried", "retries": 1, **slow})
            doomed = client.create_task({"name": "doomed", "retries": 0, **slow})

            def both_running() -> list[Task] | None:
                found = [client.get(t.id) for t in (retried, doomed)]
                return found if all(t.state == "running" for t in found) else None

            states = wait_until(both_running, "both tasks to run")
            victim = states[0].worker_id
            assert victim in workers
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait()
            first = client.wait(retried.id, timeout=40)
            assert first.state == "completed", first
            assert first.attempt == 2 and first.worker_id != victim
            second = client.wait(doomed.id, timeout=40)
            if second.attempt == 1 and states[1].worker_id == victim:
                assert second.state == "failed" and second.error == "worker_lost"
            else:
                assert second.state == "completed"
    finally:
        for proc in (*workers.values(), manager):
            stop(proc)


def test_workflow_and_job_through_the_cli(up: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    _, env = up
    add = tmp_path / "examples" / "add.wasm"
    for _ in range(50):
        if add.exists():
            break
        time.sleep(0.1)
    spec = tmp_path / "wf.yaml"
    spec.write_text(
        "name: tour\n"
        "tasks:\n"
        f"  - {{name: sum, file: {add}, export: add, inputs: [2, 3]}}\n"
        f"  - {{name: times, file: {add}, export: mul, inputs: [10], depends_on: [sum],\n"
        "     inputs_from: {task: sum, index: 0}}\n"
    )
    applied = cli("workflow", "apply", str(spec), "--wait", "--output", "json", env=env)
    assert applied.returncode == 0, applied.stderr
    run = json.loads(applied.stdout)
    assert run["state"] == "completed"
    assert {t["name"]: t["results"] for t in run["tasks"]} == {"sum": [5], "times": [50]}
    listed = cli("workflow", "list", env=env)
    assert listed.returncode == 0 and run["id"][:8] in listed.stdout
    job = tmp_path / "job.json"
    job.write_text(
        '{"mode": "sequential", "tasks": ['
        f'{{"name": "a", "file": "{add}", "export": "add", "inputs": [1, 1]}},'
        f'{{"name": "b", "file": "{add}", "export": "nope"}}]}}'
    )
    bad = cli("job", "create", str(job), env=env)
    assert bad.returncode == 2 and "tasks[1]" in bad.stderr
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text(
        "tasks:\n"
        f"  - {{name: a, file: {add}, export: noop, depends_on: [b]}}\n"
        f"  - {{name: b, file: {add}, export: noop, depends_on: [a]}}\n"
    )
    rejected = cli("workflow", "apply", str(cycle), env=env)
    assert rejected.returncode == 2 and "cycle" in rejected.stderr
