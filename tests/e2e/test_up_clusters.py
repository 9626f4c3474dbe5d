"""The hierarchy as users run it: `edgeplane up --clusters 2`, and separate `root`,
`manager --root` and `worker` processes with kill -9 of a manager and of the root."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_up import EDGEPLANE, cli, free_port, stop, wait_healthy, wait_until

pytest_plugins = ["broker_fixtures"]
pytestmark = pytest.mark.timeout(180)

TOKEN = "e2e-token"


def popen(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*EDGEPLANE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.fixture
def up_two(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    env = {**os.environ, "EDGEPLANE_DATA_DIR": str(tmp_path), "EDGEPLANE_HEARTBEAT_S": "0.5"}
    env.pop("EDGEPLANE_URL", None)
    env.pop("EDGEPLANE_TOKEN", None)
    proc = popen(
        "up", "--clusters", "2", "--workers", "1", "--port", str(port), "--allow-host", env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url, env
    finally:
        stop(proc)


def test_up_with_two_clusters(up_two: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, env = up_two
    token = (tmp_path / "admin-token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}

    def both_online() -> list[dict[str, Any]] | None:
        items = httpx.get(f"{url}/api/v1/clusters", headers=headers).json()["items"]
        online = [c for c in items if c["state"] == "online" and c["aggregate"]["workers"] == 1]
        return online if len(online) == 2 else None

    clusters = wait_until(both_online, "two clusters to register", timeout=30)
    assert {c["id"] for c in clusters} == {"cluster-1", "cluster-2"}
    assert len({c["broker_url"] for c in clusters}) == 2  # each has its own broker
    # ...and its own identity on the root's, joined with a token `up` minted for it alone
    assert "user edgeplane$root" in (tmp_path / "broker" / "acl").read_text()
    for n in (1, 2):
        kept = tmp_path / "clusters" / f"cluster-{n}" / "uplink" / "credentials.json"
        assert kept.stat().st_mode & 0o777 == 0o600
    tokens = httpx.get(f"{url}/api/v1/join-tokens", headers=headers).json()
    assert sorted(c for t in tokens for c in t["clusters"]) == ["cluster-1", "cluster-2"]
    listed = cli("cluster", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "cluster-1" in listed.stdout and "cluster-2" in listed.stdout

    add = tmp_path / "examples" / "add.wasm"
    wait_until(add.exists, "the examples")
    done = cli("task", "run", str(add), "add", "2", "3", "--wait", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "5"

    descriptor = tmp_path / "app.yaml"
    descriptor.write_text(
        "name: demo\n"
        "services:\n"
        "  - name: sleeper\n"
        "    runtime: host\n"
        "    command: [sleep, '60']\n"
        "    replicas: 2\n"
    )
    applied = cli("app", "apply", str(descriptor), "--wait", "--timeout", "60", env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    shown = cli("app", "get", "demo", "--output", "json", env=env)
    assert shown.returncode == 0, shown.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nservices:\n  - name: a\n    replicas: -2\n")
    refused = cli("app", "apply", str(bad), env=env)
    assert refused.returncode == 2
    assert "services[0].replicas" in refused.stderr + refused.stdout


def _instances(http: httpx.Client, app_id: str) -> list[dict[str, Any]]:
    doc = http.get(f"/applications/{app_id}").json()
    return [i for s in doc["services"] for i in s["instances"]]


def _running(http: httpx.Client, app_id: str, n: int) -> list[dict[str, Any]] | None:
    found = _instances(http, app_id)
    running = [i for i in found if i["state"] == "running"]
    return running if len(running) == n and len(found) == n else None


def test_killed_manager_and_root(tmp_path: Path, fast_broker_url: str, unique_domain: str) -> None:
    """kill -9 a manager: its instances move to the other cluster; when it returns its
    surplus is stopped. kill -9 the root: after a restart nothing is lost."""
    port = free_port()
    env = {
        **os.environ,
        "EDGEPLANE_ADMIN_TOKEN": TOKEN,
        "EDGEPLANE_DOMAIN": unique_domain,
        "EDGEPLANE_HEARTBEAT_S": "0.5",
    }
    root_args = (
        "root",
        "--broker",
        fast_broker_url,
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "root"),
    )

    def manager(name: str) -> subprocess.Popen[str]:
        return popen(
            "manager",
            "--cluster-id",
            name,
            "--root",
            fast_broker_url,
            "--broker",
            fast_broker_url,
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / name),
            env=env,
        )

    def worker(cluster: str) -> subprocess.Popen[str]:
        return popen(
            "worker",
            "--cluster-id",
            cluster,
            "--manager",
            fast_broker_url,
            "--worker-id",
            f"{cluster}-w",
            "--allow-host",
            "--data-dir",
            str(tmp_path / f"{cluster}-w"),
            env=env,
        )

    procs: dict[str, subprocess.Popen[str]] = {"root": popen(*root_args, env=env)}
    for name in ("east", "west"):
        procs[name] = manager(name)
        procs[f"{name}-w"] = worker(name)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, procs["root"])
        http = httpx.Client(
            base_url=url + "/api/v1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )

        def online() -> set[str]:
            items = http.get("/clusters").json()["items"]
            return {
                c["id"]
                for c in items
                if c["state"] == "online" and c["aggregate"] and c["aggregate"]["workers"]
            }

        wait_until(lambda: online() == {"east", "west"}, "both clusters", timeout=30)
        app = {
            "name": "svc",
            "services": [
                {"name": "s", "runtime": "host", "command": ["sleep", "120"], "replicas": 4}
            ],
        }
        app_id = http.post("/applications", json=app).json()["id"]
        running = wait_until(lambda: _running(http, app_id, 4), "4 instances", timeout=30)
        assert {i["cluster_id"] for i in running} == {"east", "west"}

        procs["east"].send_signal(signal.SIGKILL)
        stop(procs["east"])
        moved = wait_until(
            lambda: (
                (r := _running(http, app_id, 4)) and {i["cluster_id"] for i in r} == {"west"} and r
            ),
            "instances to move to west",
            timeout=40,
        )
        assert http.get("/clusters/east").json()["state"] == "offline"

        procs["east"] = manager("east")  # back: its leftovers are surplus
        wait_until(lambda: online() == {"east", "west"}, "east to return", timeout=30)

        def east_idle() -> bool:
            tasks = http.get("/tasks", params={"state": "running", "limit": 1000}).json()
            return all(t["cluster_id"] == "west" for t in tasks["items"])

        wait_until(east_idle, "no instance left on east", timeout=30)
        final = _running(http, app_id, 4)
        assert final is not None and {i["id"] for i in final} == {i["id"] for i in moved}

        procs["root"].send_signal(signal.SIGKILL)
        stop(procs["root"])
        procs["root"] = popen(*root_args, env=env)
        wait_healthy(url, procs["root"])
        wait_until(lambda: online() == {"east", "west"}, "clusters after root restart", 30)
        after = wait_until(lambda: _running(http, app_id, 4), "instances after restart", 30)
        assert {i["id"] for i in after} == {i["id"] for i in moved}
        http.close()
    finally:
        for proc in procs.values():
            stop(proc)
