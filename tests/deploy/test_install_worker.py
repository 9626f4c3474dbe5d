"""deploy/install-worker.sh: one command makes a device a worker. Its --dry-run prints
every step and file and changes nothing; bad input is exit 2 before anything happens."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from deploy_fixtures import DEPLOY, accepts_flags, env_file, tool, written
from edgeplane.config import ENV_PREFIX, Settings

SCRIPT = DEPLOY / "install-worker.sh"
TOKEN = "epj_0123abcd_s3cretpart"


def install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("bash"), str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    return path


def test_dry_run_shows_every_step_and_changes_nothing(ca: Path) -> None:
    before = Path("/etc/edgeplane/worker.env").exists()
    done = install(
        "--manager", "mqtts://m.example:8883", "--join", TOKEN, "--ca", str(ca),
        "--cluster-id", "berlin", "--label", "site=a", "--label", "gpu=no", "--allow-host",
        "--dry-run",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert TOKEN not in out + done.stderr  # the secret is never printed
    steps = [line[2:] for line in out.splitlines() if line.startswith("+ ")]
    assert steps[-2:] == [
        "systemctl daemon-reload",
        "systemctl enable --now edgeplane-worker.service",
    ]
    assert f"install -D -m 0644 {ca} /etc/edgeplane/ca.pem" in steps
    assert "write /etc/edgeplane/worker.env (mode 0600):" in steps
    assert "/opt/edgeplane/bin/pip install --quiet " + str(DEPLOY.parent) in steps
    assert "+ write /etc/systemd/system/edgeplane-worker.service.d" not in out
    assert written(out, "/etc/systemd/system/edgeplane-worker.service") == (
        (DEPLOY / "systemd" / "edgeplane-worker.service").read_text().rstrip("\n")
    )
    env = env_file(written(out, "/etc/edgeplane/worker.env"))
    assert env == {
        "EDGEPLANE_BROKER": "mqtts://m.example:8883",
        "EDGEPLANE_CLUSTER_ID": "berlin",
        "EDGEPLANE_JOIN_TOKEN": "<hidden>",
        "EDGEPLANE_ALLOW_HOST": "true",
        "EDGEPLANE_CONTAINERS": "false",
        "EDGEPLANE_CA": "/etc/edgeplane/ca.pem",
        "WORKER_ARGS": "--label site=a --label gpu=no",
    }
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert set(env) - fields == {"WORKER_ARGS"}
    done = accepts_flags(["worker", *shlex.split(env["WORKER_ARGS"])])
    assert done.exit_code == 0, done.output
    assert Path("/etc/edgeplane/worker.env").exists() == before


def test_containers_add_the_drop_in_and_the_token_may_come_from_the_environment(
    ca: Path,
) -> None:
    done = install(
        "--manager", "mqtt://10.0.0.5:1883", "--containers", "--dry-run",
        env={"PATH": "/usr/bin:/bin", "EDGEPLANE_JOIN_TOKEN": TOKEN},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    conf = written(done.stdout, "/etc/systemd/system/edgeplane-worker.service.d/containers.conf")
    assert "User=root" in conf
    env = env_file(written(done.stdout, "/etc/edgeplane/worker.env"))
    assert env["EDGEPLANE_CONTAINERS"] == "true"
    assert "EDGEPLANE_CA" not in env


def test_a_clustered_brokers_nodes_go_to_the_env_file_as_one_list() -> None:
    nodes = "mqtt://n1:1883,mqtt://n2:1883,mqtt://n3:1883"
    done = install("--manager", nodes, "--join", TOKEN, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert env_file(written(done.stdout, "/etc/edgeplane/worker.env"))["EDGEPLANE_BROKER"] == nodes


def test_task_user_adds_its_user_and_the_host_user_drop_in() -> None:
    done = install(
        "--manager", "mqtt://h:1883", "--join", TOKEN, "--allow-host", "--task-user", "--dry-run"
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    if subprocess.run(["getent", "passwd", "edgeplane-task"], check=False).returncode != 0:
        assert "+ useradd --system --no-create-home --shell /usr/sbin/nologin edgeplane-task" in (
            done.stdout
        )
    conf = written(done.stdout, "/etc/systemd/system/edgeplane-worker.service.d/host-user.conf")
    assert "User=root" in conf and "CapabilityBoundingSet=CAP_SETUID" in conf
    assert "+ write /etc/systemd/system/edgeplane-worker.service.d/containers.conf" not in (
        done.stdout
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--join", TOKEN], "--manager must be"),
        (["--manager", "mqtt://h:1883\nEDGEPLANE_ALLOW_HOST=true", "--join", TOKEN], "--manager"),
        (["--manager", "http://h:1883", "--join", TOKEN], "--manager"),
        (["--manager", "mqtt://h:1883"], "--join"),
        (["--manager", "mqtt://h:1883", "--join", "a b"], "--join"),
        (["--manager", "mqtt://h:1883", "--join", "x\nEDGEPLANE_ALLOW_HOST=true"], "--join"),
        (["--manager", "mqtt://h:1883", "--join", TOKEN, "--label", "a=b c"], "--label"),
        (["--manager", "mqtt://h:1883", "--join", TOKEN, "--cluster-id", "a/b"], "--cluster-id"),
        (["--manager", "mqtt://h:1883", "--join", TOKEN, "--cluster-id", "a.b"], "--cluster-id"),
        (["--manager", "mqtt://a:1883,", "--join", TOKEN], "--manager"),
        (["--manager", "mqtt://a:1883,mqtts://b:8883", "--join", TOKEN], "--ca"),
        (["--manager", "mqtts://h:8883", "--join", TOKEN], "--ca"),
        (["--manager", "mqtts://h:8883", "--join", TOKEN, "--ca", "/nonexistent"], "--ca"),
        (["--manager", "mqtt://h:1883", "--join", TOKEN, "--bogus"], "unknown option"),
    ],
)
def test_bad_input_is_exit_2_before_any_step(args: list[str], says: str) -> None:
    """Nothing reaches the env file that could add a line to it (a newline, a space)."""
    done = install(*args, "--dry-run", env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stdout
    assert says in done.stderr
    assert "+ " not in done.stdout


def test_without_dry_run_it_needs_root(ca: Path) -> None:
    """As root (this test's own user may be root) it would install: run it as nobody."""
    args = ["--manager", "mqtt://h:1883", "--join", TOKEN]
    runuser = tool("setpriv")
    done = subprocess.run(
        [runuser, "--reuid=65534", "--regid=65534", "--clear-groups", tool("bash"), str(SCRIPT),
         *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout
    assert "run as root" in done.stderr
