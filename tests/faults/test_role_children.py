"""kill -9 of a role that started its own Mosquitto leaves no Mosquitto behind
(lifeline.py: the kernel kills it when its parent dies)."""

from __future__ import annotations

import shutil
from pathlib import Path

import psutil
import pytest
from fault_procs import free_port, processes, wait_healthy, wait_until

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed"),
]


def alive(process: psutil.Process) -> bool:
    """Still this process (not a later one with its pid), and not a zombie."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.parametrize(
    "role",
    [
        ["up", "--workers", "0"],
        ["root"],
        ["manager"],
    ],
    ids=["up", "root", "manager"],
)
def test_kill_9_of_a_role_takes_its_mosquitto_with_it(tmp_path: Path, role: list[str]) -> None:
    port = free_port()
    with processes(tmp_path, EDGEPLANE_DATA_DIR=str(tmp_path / "data")) as procs:
        proc = procs.start(role[0], *role, "--port", str(port))
        wait_healthy(f"http://127.0.0.1:{port}", proc, procs, role[0])
        children = psutil.Process(proc.pid).children(recursive=True)
        [mosquitto] = [c for c in children if c.name() == "mosquitto"]
        procs.kill9(proc)
        wait_until(lambda: not alive(mosquitto), f"mosquitto {mosquitto.pid} to be gone")
