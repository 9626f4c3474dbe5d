"""kill -9 of a role that started its own Mosquitto leaves no Mosquitto behind
(lifeline.py: the kernel kills it when its parent dies)."""

from __future__ import annotations

import base64
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


def test_a_killed_broker_is_started_again_and_the_role_works_on(lab: Lab) -> None:
    """kill -9 of the Mosquitto `up` started: `up` starts it again on the same port, its
    workers reconnect, and a task submitted afterwards runs."""
    port = free_port()
    up = lab.role(
        "up", ["up", "--workers", "1", "--port", str(port), "--no-containers"],
        lab.env(EDGEPLANE_DATA_DIR=str(lab.root / "data")),
    ).start()  # fmt: skip
    api = lab.api(port)
    api.wait_healthy(up)
    api.wait_workers(["local-1"], watch=[up])
    [first] = [c for c in up.process().children(recursive=True) if c.name() == "mosquitto"]
    first.kill()
    wait_until(lambda: not alive(first), "the first mosquitto to be gone")

    def again() -> bool:
        found = [c for c in up.process().children(recursive=True) if c.name() == "mosquitto"]
        return bool(found) and found[0].pid != first.pid

    wait_until(again, "up to start its broker again", watch=[up])
    add = lab.root / "data" / "examples" / "add.wasm"
    spec = {"name": "add", "file": base64.b64encode(add.read_bytes()).decode(),
            "export": "add", "inputs": [40, 2], "start": True}  # fmt: skip
    [task_id] = api.submit([spec])
    done = wait_until(
        lambda: (doc := api.http.get(f"/tasks/{task_id}").json())["finished_at"] and doc,
        "the task to end",
        watch=[up],
    )
    assert (done["state"], done["results"]) == ("completed", [42]), done
