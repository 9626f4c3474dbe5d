"""kill -9 of a role that started its own Mosquitto leaves no Mosquitto behind
(lifeline.py: the kernel kills it when its parent dies)."""

from __future__ import annotations

import shutil

import pytest

from edgeplane.transport import free_port
from faults.procs import Lab, alive, wait_until

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed"),
]


@pytest.mark.parametrize(
    "role",
    [
        ["up", "--workers", "0"],
        ["root"],
        ["manager"],
    ],
    ids=["up", "root", "manager"],
)
def test_kill_9_of_a_role_takes_its_mosquitto_with_it(lab: Lab, role: list[str]) -> None:
    port = free_port()
    # no --broker: the role starts a Mosquitto of its own
    started = lab.role(
        role[0],
        [*role, "--port", str(port)],
        lab.env(EDGEPLANE_DATA_DIR=str(lab.root / "data")),
    ).start()
    lab.api(port).wait_healthy(started)
    children = started.process().children(recursive=True)
    [mosquitto] = [c for c in children if c.name() == "mosquitto"]
    started.kill9()
    wait_until(lambda: not alive(mosquitto), f"mosquitto {mosquitto.pid} to be gone")
