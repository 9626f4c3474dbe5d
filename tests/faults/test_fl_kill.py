"""kill -9 of the manager during a federated learning experiment, with real processes: an
``edgeplane manager`` and two ``edgeplane worker``s running the digits example's client.

The manager is killed once between rounds (round 1 aggregated, round 2 not started: the
second worker is drained, so too few are eligible) and once in the middle of round 2 (one
update in, the other client still training). The second client of round 2 finds the API
gone and posts its update over MQTT; the broker keeps it for the coordinator's persistent
session, and the client sends it again until the manager answers it. Started again on
the same store and data directory, the manager goes on: the experiment completes with
each of its 3 rounds aggregated exactly once, the resent copies counted nowhere.

Each client waits at two gates, before it trains and before it posts (a file the test
creates and one client renames away), so the test decides when each update is sent.

It runs twice: with a training task per client and round (``client_tasks: per_round``),
and with one long-lived client task per worker for the whole experiment
(``persistent``), which goes on through both kills: it asks the restarted manager for
its next round.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from faults.procs import TERMINAL, Lab, wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(240)]

pytest.importorskip("sklearn")

SRC = Path(__file__).parents[2] / "src"
#: The example client with two gates: before it trains (``go``) and before it posts
#: (``post``). A gate is a file the test creates and one waiting client renames away.
GATED_CLIENT = """
import os, sys, time
from pathlib import Path
from edgeplane.fl import client

gates, round_no = Path(sys.argv[1]), os.environ["ROUND_ID"]

over_mqtt = client.post_over_mqtt


def falls_back(*args, **kwargs):
    (gates / f"mqtt-{os.getpid()}").touch()  # the test restarts the manager then
    return over_mqtt(*args, **kwargs)


client.post_over_mqtt = falls_back


def wait(gate):
    while True:
        try:
            taken = gates / f"taken-{gate}-{round_no}-{os.getpid()}"
            (gates / f"{gate}-{round_no}").rename(taken)
            return
        except FileNotFoundError:
            time.sleep(0.05)


wait("go")
update = client.train_update(os.environ)
wait("post")
code = client.send_update(os.environ, update)
(gates / f"done-{round_no}-{os.getpid()}").touch()
sys.exit(code)
"""
#: The same gates around a long-lived client's rounds (``client.Session``'s steps).
GATED_SESSION = """
import os, sys, time
from pathlib import Path
from edgeplane.fl import client

gates = Path(sys.argv[1])

over_mqtt = client.post_over_mqtt


def falls_back(*args, **kwargs):
    (gates / f"mqtt-{os.getpid()}").touch()  # the test restarts the manager then
    return over_mqtt(*args, **kwargs)


client.post_over_mqtt = falls_back


def wait(gate, round_no):
    while True:
        try:
            taken = gates / f"taken-{gate}-{round_no}-{os.getpid()}"
            (gates / f"{gate}-{round_no}").rename(taken)
            return
        except FileNotFoundError:
            time.sleep(0.05)


session = client.Session(os.environ)
while (work := session.next()) is not None:
    wait("go", work.round)
    update = session.train(work)
    wait("post", work.round)
    session.send(work, update)
    (gates / f"done-{work.round}-{os.getpid()}").touch()
sys.exit(0)
"""


def fl_outcomes(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        if line.startswith("edgeplane_fl_mqtt_updates_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            found[outcome] = float(line.rsplit(" ", 1)[1])
    return found


@pytest.mark.parametrize("client_tasks", ["per_round", "persistent"])
def test_a_manager_killed_between_rounds_and_mid_round_aggregates_each_round_once(
    lab: Lab, client_tasks: str
) -> None:
    manager, workers, api = lab.manager_and_workers()
    every = [manager, *workers]
    gates = lab.root / "gates"
    gates.mkdir()
    spec = {
        "name": "killed",
        "workload": {
            "runtime": "host",
            "command": [
                sys.executable,
                "-c",
                GATED_SESSION if client_tasks == "persistent" else GATED_CLIENT,
                str(gates),
            ],
            "env": {"PYTHONPATH": str(SRC), "PATH": os.environ.get("PATH", "")},
        },
        "rounds": 3,
        "clients_per_round": 2,
        "min_clients": 2,
        # far past the test: a round is never cut short by its deadline here
        "round_timeout_s": 3600,
        "hyperparams": {"lr": 0.5, "epochs": 5},
        "client_tasks": client_tasks,
    }
    created = api.http.post("/fl/experiments", json=spec)
    assert created.status_code == 201, created.text
    exp_id = created.json()["id"]

    def experiment() -> dict[str, Any]:
        got: dict[str, Any] = api.http.get(f"/fl/experiments/{exp_id}").json()
        return got

    def release(gate: str, round_no: int) -> None:
        """Let one waiting client of ``round_no`` through ``gate`` (go: train, post)."""
        path = gates / f"{gate}-{round_no}"
        path.touch()
        wait_until(lambda: not path.exists(), f"a client of round {round_no} passes {gate}")

    def run(round_no: int) -> None:
        """Both clients of ``round_no`` train and post."""
        for gate in ("go", "go", "post", "post"):
            release(gate, round_no)

    def ended(round_no: int) -> int:
        return len(list(gates.glob(f"done-{round_no}-*")))

    # round 1 on both workers; w2 drained meanwhile, so round 2 cannot start after it
    wait_until(lambda: api.count("running") == 2, "round 1's clients run", watch=every)
    assert api.http.post("/workers/w2/drain").status_code == 200
    run(1)
    wait_until(lambda: experiment()["model_version"] == 1, "round 1 closes", watch=every)
    got = experiment()
    assert [(r["round"], r["state"]) for r in got["rounds"]] == [(1, "closed")], got

    manager.kill9()  # between rounds
    manager.start()
    api.wait_healthy(manager)
    api.wait_workers(["w1"], watch=every)
    got = experiment()
    assert (got["state"], got["model_version"], len(got["rounds"])) == ("running", 1, 1), got
    # (the drain outlived the kill: a restarted manager had forgotten it, and started
    # round 2 at once)
    assert api.worker("w2")["state"] == "draining"  # type: ignore[index]
    assert api.http.post("/workers/w2/undrain").status_code == 200

    wait_until(
        lambda: len(experiment()["rounds"]) == 2 and api.count("running") == 2,
        "round 2's clients run",
        watch=every,
    )
    release("go", 2)
    release("go", 2)
    release("post", 2)
    wait_until(lambda: experiment()["rounds"][-1]["updates"] == 1, "round 2's first update")

    manager.kill9()  # mid-round: one update in, one client trained and still to post
    release("post", 2)
    wait_until(
        lambda: list(gates.glob("mqtt-*")),
        "round 2's second client falls back to MQTT",
        watch=workers,
    )
    manager.start()
    api.wait_healthy(manager)
    wait_until(
        lambda: experiment()["model_version"] == 2,
        "round 2 closes with the update the broker kept",
        watch=every,
    )
    # and the client that sent it over MQTT was answered: done
    wait_until(lambda: ended(2) == 2, "round 2's second client is answered", watch=every)
    wait_until(lambda: len(experiment()["rounds"]) == 3, "round 3 opens", watch=every)
    run(3)
    wait_until(lambda: experiment()["state"] != "running", "the experiment ends", watch=every)

    got = experiment()
    assert got["state"] == "completed", got
    assert got["model_version"] == 3
    # each round once, in its first attempt, with both updates: none was aggregated twice
    rounds = [(r["round"], r["attempt"], r["state"], r["updates"]) for r in got["rounds"]]
    assert rounds == [(1, 0, "closed", 2), (2, 0, "closed", 2), (3, 0, "closed", 2)]
    assert got["rounds"][-1]["metrics"]["accuracy"] >= 0.9
    assert all(not r["rejected"] for r in got["rounds"]), got["rounds"]
    # this process: round 2's second update, and the copies the client sent before the
    # manager was back, if it had them yet when it took the first
    outcomes = fl_outcomes(api.url)
    assert outcomes.pop("accepted") == 1 and set(outcomes) <= {"resent"}, outcomes

    # per round: a task per client and round; persistent: one per worker, all 3 rounds
    tasks = 6 if client_tasks == "per_round" else 2
    if client_tasks == "persistent":
        assert got["rounds"][0]["tasks"] == got["rounds"][1]["tasks"] == got["rounds"][2]["tasks"]

    def clients() -> list[dict[str, Any]] | None:
        """The training tasks, once all ended (the last round's may still be exiting when
        the experiment completes; a long-lived client exits once told it completed)."""
        found = [t for t in api.tasks() if t["name"] == "fl-killed"]
        return found if len(found) == tasks and all(t["state"] in TERMINAL for t in found) else None

    ran = wait_until(clients, "every training task ends", watch=every)
    assert all(t["state"] == "completed" for t in ran), [(t["state"], t["error"]) for t in ran]
    over_mqtt = [t for t in ran if "over MQTT" in t.get("stderr", "")]
    assert len(over_mqtt) == 1, [t["stderr"] for t in ran]
    assert over_mqtt[0]["state"] == "completed"
