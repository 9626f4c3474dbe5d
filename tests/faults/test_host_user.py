"""Host tasks run as an unprivileged user by default (`--host-user`), tried from inside:
a real `edgeplane worker` running as root, joined to a manager with its own locked-down
Mosquitto (so it keeps broker credentials and a command key), runs host tasks that try
to be root and to read what the worker keeps."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import EDGEPLANE, Api, Lab, Role

from edgeplane.runtimes.taskuser import resolve
from edgeplane.transport import free_port

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the worker must be root to switch users"),
]


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every user may pass through, for the workers' data dirs: under the
    test's own (0700, root's) directory a task could read nothing whatever the worker did,
    and the test would prove nothing."""
    path = Path(tempfile.mkdtemp(prefix="edgeplane-host-user-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def manager(lab: Lab) -> tuple[Role, Api, str]:
    port = free_port()
    role = lab.role(
        "manager",
        ["manager", "--store", lab.store, "--port", str(port),
         "--data-dir", str(lab.root / "manager")],
    )  # fmt: skip
    role.start()
    api = lab.api(port)
    api.wait_healthy(role)
    broker = f"mqtt://127.0.0.1:{(lab.root / 'manager' / 'broker' / 'port').read_text().strip()}"
    return role, api, broker


def joined_worker(lab: Lab, api: Api, broker: str, worker_id: str, data: Path, *flags: str) -> Role:
    token = api.http.post("/join-tokens", json={"ttl_s": 600})
    assert token.status_code == 201, token.text
    role = lab.role(
        worker_id,
        ["worker", "--manager", broker, "--worker-id", worker_id, "--allow-host",
         "--no-containers", "--data-dir", str(data), *flags],
        lab.env(EDGEPLANE_JOIN_TOKEN=token.json()["token"]),
    )  # fmt: skip
    role.start()
    return role


def run_on(api: Api, worker_id: str, script: str) -> dict[str, Any]:
    body = {"runtime": "host", "command": ["sh", "-c", script], "worker_id": worker_id}
    created = api.http.post("/tasks", params={"wait": 30}, json={**body, "start": True})
    assert created.status_code == 201, created.text
    task: dict[str, Any] = created.json()
    assert task["state"] in ("completed", "failed"), task
    return task


def test_a_root_worker_runs_host_tasks_unprivileged_unless_told(lab: Lab, shared: Path) -> None:
    control, api, broker = manager(lab)
    data = shared / "edge"
    mine = data / "worker"
    mine.mkdir(parents=True)
    mine.chmod(0o755)  # as an older version, or an operator's mkdir, left it
    edge = joined_worker(lab, api, broker, "edge", data)
    api.wait_workers({"edge"}, watch=[edge, control])
    # Not root, none of the worker's groups, its own HOME and USER.
    who = run_on(api, "edge", 'id -u; id -G; echo "$HOME $USER"')
    assert who["stdout"].split("\n")[0] not in ("0", ""), who
    expected = resolve(None)  # edgeplane-task, else nobody
    assert who["stdout"] == f"{expected.uid}\n{expected.gid}\n{expected.home} {expected.name}\n"
    assert api.worker("edge")["capabilities"]["host_user"] == expected.name  # type: ignore[index]

    # What the worker keeps is its own: 0700 and 0600, root's.
    credentials = mine / "credentials.json"
    password = credentials.read_text()
    assert (mine.stat().st_mode & 0o777, mine.stat().st_uid) == (0o700, 0)
    assert (credentials.stat().st_mode & 0o777, credentials.stat().st_uid) == (0o600, 0)
    thief = run_on(
        api,
        "edge",
        f"cat {credentials}; ls {mine}; ls {mine / 'handles'}; cat {mine / 'worker-id'}; "
        "env | grep EDGEPLANE_; exit 0",
    )
    said = thief["stdout"] + thief["stderr"]
    assert thief["stdout"] == "", thief  # nothing read, no EDGEPLANE_* variable either
    assert thief["stderr"].count("Permission denied") == 4, thief["stderr"]
    assert password not in said and "token" not in said.lower()

    # Root only when the operator says so, with a warning.
    boss = joined_worker(lab, api, broker, "boss", shared / "boss", "--host-user", "root")
    api.wait_workers({"boss"}, watch=[boss, control])
    assert run_on(api, "boss", "id -u")["stdout"] == "0\n"
    assert "host tasks run as root" in boss.tail()
    assert api.worker("boss")["capabilities"]["host_user"] == "root"  # type: ignore[index]


@pytest.mark.parametrize("role", ["worker", "up"])
def test_an_unknown_host_user_is_refused_at_start(lab: Lab, role: str) -> None:
    argv = {
        "worker": ["worker", "--manager", "mqtt://127.0.0.1:1", "--allow-host"],
        "up": ["up", "--allow-host", "--port", str(free_port())],
    }[role]
    data = lab.root / role
    said = subprocess.run(
        [*EDGEPLANE, *argv, "--host-user", "no-such-user-here", "--data-dir", str(data)],
        env=lab.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert said.returncode == 2, said
    assert "host_user: no such user 'no-such-user-here'" in said.stderr
    assert "Traceback" not in said.stderr
    assert not data.exists()  # refused before it started anything


def test_the_workers_of_up_run_host_tasks_unprivileged_too(lab: Lab, shared: Path) -> None:
    """`edgeplane up` runs its workers on uvloop, in the process that holds the admin
    token and the store: its host tasks are no more root than a worker's."""
    port = free_port()
    data = shared / "up"
    up = lab.role(
        "up",
        ["up", "--data-dir", str(data), "--port", str(port), "--workers", "1",
         "--allow-host", "--no-containers"],
    ).start()  # fmt: skip
    api = lab.api(port)
    api.wait_healthy(up)
    api.wait_workers(["local-1"], watch=[up])
    who = run_on(api, "local-1", "id -u")
    assert who["stdout"] == f"{resolve(None).uid}\n", who
    store = data / "edgeplane.db"
    thief = run_on(api, "local-1", f"cat {store}; ls {data}; env | grep EDGEPLANE_; exit 0")
    assert thief["stdout"] == "", thief
    assert thief["stderr"].count("Permission denied") == 2, thief["stderr"]
