"""deploy/systemd: the units pass `systemd-analyze verify` (no warning either), keep their
hardening (`systemd-analyze security`), the drop-ins relax what they say, and the env
files and command lines are settings and flags edgeplane has."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_fixtures import DEPLOY, accepts_flags, env_file, tool
from edgeplane.config import ENV_PREFIX, Settings

SYSTEMD = DEPLOY / "systemd"
ROLES = ("worker", "manager", "root")
INSTALLED = "/opt/edgeplane/bin/edgeplane"


def unit_dir(tmp_path: Path, *drop_ins: str) -> Path:
    """The units, and the worker's drop-ins named, with ExecStart on this test's
    `edgeplane` (verify needs the binary to exist)."""
    edgeplane = Path(sys.executable).with_name("edgeplane")
    assert edgeplane.exists(), f"no {edgeplane}: install edgeplane into this venv (make deps)"
    units = tmp_path / "units"
    units.mkdir()
    for role in ROLES:
        text = (SYSTEMD / f"edgeplane-{role}.service").read_text()
        assert f"ExecStart={INSTALLED} {role} " in text
        (units / f"edgeplane-{role}.service").write_text(text.replace(INSTALLED, str(edgeplane)))
    if drop_ins:
        (units / "edgeplane-worker.service.d").mkdir()
        for name in drop_ins:
            conf = SYSTEMD / "edgeplane-worker.service.d" / name
            (units / "edgeplane-worker.service.d" / name).write_text(conf.read_text())
    return units


def analyze(units: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("systemd-analyze"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        # the units' own directory, then the system's (for the targets they name)
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:", "SYSTEMD_LOG_COLOR": "0"},
        check=False,
    )


@pytest.mark.parametrize("drop_ins", [(), ("containers.conf",), ("host-user.conf",)])
def test_units_verify_without_a_word(tmp_path: Path, drop_ins: tuple[str, ...]) -> None:
    units = unit_dir(tmp_path, *drop_ins)
    done = analyze(units, "verify", *(str(units / f"edgeplane-{r}.service") for r in ROLES))
    # verify exits 0 on unknown keys and bad values too: they are only printed
    assert (done.returncode, done.stderr, done.stdout) == (0, "", ""), done.stderr


def test_verify_does_fail_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing binary are reported."""
    units = unit_dir(tmp_path)
    unit = units / "edgeplane-worker.service"
    unit.write_text(unit.read_text().replace("ProtectHome=", "ProtectHomes="))
    assert "Unknown key 'ProtectHomes'" in analyze(units, "verify", str(unit)).stderr
    unit.write_text(unit.read_text().replace(str(Path(sys.executable).parent), "/nowhere"))
    assert analyze(units, "verify", str(unit)).returncode != 0


@pytest.mark.parametrize("role", ROLES)
def test_units_stay_hardened(tmp_path: Path, role: str) -> None:
    """Exposure at most 2.0 ("OK") by systemd's own measure; the score is 1.7 today."""
    units = unit_dir(tmp_path)
    done = analyze(
        units, "security", "--offline=true", "--threshold=20", f"edgeplane-{role}.service"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert "Service runs as root user" not in done.stdout


def test_the_container_drop_in_relaxes_only_what_runc_needs(tmp_path: Path) -> None:
    units = unit_dir(tmp_path, "containers.conf")
    done = analyze(units, "security", "--offline=true", "edgeplane-worker.service")
    assert "Service runs as root user" in done.stdout
    assert "Service may create user namespaces" in done.stdout
    # what runc does not need stays
    for kept in ("NoNewPrivileges=", "ProtectSystem=", "ProtectHome=", "PrivateTmp="):
        assert not any(line.startswith(f"✗ {kept}") for line in done.stdout.splitlines()), kept
    conf = (SYSTEMD / "edgeplane-worker.service.d" / "containers.conf").read_text()
    assert "EDGEPLANE_CONTAINERS=true" in conf


def test_the_host_user_drop_in_is_root_with_only_the_capabilities_to_switch(
    tmp_path: Path,
) -> None:
    units = unit_dir(tmp_path, "host-user.conf")
    done = analyze(units, "security", "--offline=true", "edgeplane-worker.service")
    failed = [line for line in done.stdout.splitlines() if line.startswith("✗")]
    assert any("Service runs as root user" in line for line in failed)
    for absent in ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_MODULE"):
        assert not any(absent in line for line in failed), absent
    assert any("CAP_SET(UID|GID|PCAP)" in line for line in failed)  # the one it needs
    assert not any("RestrictNamespaces" in line for line in failed)  # the rest stays


def test_the_worker_survives_its_tasks_crash_policy() -> None:
    """Host and container tasks outlive a crashed worker (it re-attaches): systemd must not
    kill the cgroup when the worker dies; a refused join token (exit 2) is not retried."""
    unit = (SYSTEMD / "edgeplane-worker.service").read_text()
    assert "\nKillMode=process\n" in unit
    assert "\nRestartPreventExitStatus=2\n" in unit
    assert "MemoryDenyWriteExecute=yes" not in unit  # wasmtime's compiled code


@pytest.mark.parametrize("role", ROLES)
def test_env_files_hold_only_settings_and_load(role: str, monkeypatch: pytest.MonkeyPatch) -> None:
    values = env_file((SYSTEMD / f"{role}.env").read_text())
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    unknown = {k for k in values if k.startswith(ENV_PREFIX) and k not in fields}
    assert not unknown, f"not settings: {unknown}"
    assert set(values) - fields == {f"{role.upper()}_ARGS"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    Settings()  # every value is one the setting takes
    # and the settings shown commented out, to be filled in, are settings too
    shown = re.findall(r"^#(EDGEPLANE_[A-Z_]+)=", (SYSTEMD / f"{role}.env").read_text(), re.M)
    assert set(shown) <= fields, set(shown) - fields
    if role == "manager":  # a manager under a root joins it with a token (docs/deploy.md)
        assert {"EDGEPLANE_ROOT", "EDGEPLANE_JOIN_TOKEN"} <= set(shown)


@pytest.mark.parametrize("role", ROLES)
def test_exec_start_is_a_command_edgeplane_has(role: str) -> None:
    unit = (SYSTEMD / f"edgeplane-{role}.service").read_text()
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[:2] == [INSTALLED, role]
    example = {"worker": "--label site=a", "manager": "--label region=eu", "root": ""}[role]
    args = [a for a in argv[1:] if not a.startswith("$")] + example.split()
    done = accepts_flags(args)
    assert done.exit_code == 0, done.output
