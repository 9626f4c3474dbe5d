"""kill -9 of the leading manager during a federated learning experiment, with a standby
on the same PostgreSQL store and a data directory of its own: the standby takes over,
closes the round the leader had taken an update for (reading that update from the store:
it never saw it), runs the last round, and serves every model version, those the dead
leader made included. Real processes: two ``edgeplane manager``s, two ``edgeplane
worker``s running the digits example's client.

Round 2 is the one cut: both clients train, then wait at a gate. One is let through and
posts its update to the leader; the leader is killed; the other is let through then, finds
the leader gone and sends its update over MQTT while no manager reads the updates topic:
it sends it again until the new leader answers, which closes the round with both.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane.transport import free_port
from faults.procs import TERMINAL, Api, Lab, Role, wait_until
from faults.test_leader import standby_of

pytestmark = [pytest.mark.mosquitto, pytest.mark.postgres, pytest.mark.timeout(240)]

pytest.importorskip("sklearn")

SRC = Path(__file__).parents[2] / "src"
#: The example client; in round 2 each trains, says so (a file ``at-PID``), then waits
#: at a gate (a file the test creates and one waiting client renames away) before it
#: sends its update.
GATED_CLIENT = """
import os, sys, time
from pathlib import Path
from edgeplane.fl import client

gates = Path(sys.argv[1])
send = client.send_update

def gated(env, body):
    if os.environ["ROUND_ID"] == "2":
        (gates / f"at-{os.getpid()}").touch()
        while True:
            try:
                (gates / "go").rename(gates / f"taken-{os.getpid()}")
                break
            except FileNotFoundError:
                time.sleep(0.05)
    return send(env, body)

client.send_update = gated
sys.exit(client.main())
"""
#: Round 2's deadline: far beyond the failover, so it closes at its 2 updates (at the
#: deadline, with the one, if the update over MQTT were lost).
ROUND_TIMEOUT_S = 120
#: The production default (the heartbeat): the clients' training on the 2 cores deposed
#: a leader on test_leader's 1.5 s lease before the kill, and the test was of a flip.
LEASE_S = "5"


@pytest.fixture
def store_url(postgres_url: str) -> str:
    return postgres_url


def models(api: Api, exp_id: str, newest: int) -> list[bytes]:
    """Every model version 0..``newest`` of the experiment, as ``api`` serves them."""
    found = []
    for version in range(newest + 1):
        got = api.http.get(f"/fl/experiments/{exp_id}/model", params={"version": version})
        assert got.status_code == 200, (version, got.text)
        assert got.headers["x-model-version"] == str(version)
        found.append(got.content)
    return found


def leader_and_standby(lab: Lab) -> tuple[Role, Api, Role, Api, list[Role]]:
    """m1 leads, m2 stands by (each with a data directory of its own), w1 and w2 online."""
    first, second = free_port(), free_port()
    one = lab.manager(first, "--lease-s", LEASE_S, name="m1").start()
    api_one = lab.api(first)
    api_one.wait_healthy(one)
    two = lab.manager(second, "--lease-s", LEASE_S, name="m2").start()
    api_two = lab.api(second)
    wait_until(lambda: standby_of(api_two), "m2 to stand by", watch=[two])
    workers = [lab.worker(f"w{n}").start() for n in (1, 2)]
    api_one.wait_workers(["w1", "w2"], watch=[one, *workers])
    return one, api_one, two, api_two, workers


def test_the_standby_finishes_an_experiment_and_serves_every_version(
    lab: Lab, store_url: str
) -> None:
    one, api_one, two, api_two, workers = leader_and_standby(lab)
    gates = lab.root / "gates"
    gates.mkdir()
    spec = {
        "name": "failover",
        "workload": {
            "runtime": "host",
            "command": [sys.executable, "-c", GATED_CLIENT, str(gates)],
            "env": {"PYTHONPATH": str(SRC), "PATH": os.environ.get("PATH", "")},
        },
        "rounds": 3,
        "clients_per_round": 2,
        "min_clients": 1,
        "round_timeout_s": ROUND_TIMEOUT_S,
        "hyperparams": {"lr": 0.5, "epochs": 5},
    }
    created = api_one.http.post("/fl/experiments", json=spec)
    assert created.status_code == 201, created.text
    exp_id = created.json()["id"]

    def experiment(api: Api) -> dict[str, Any]:
        got: dict[str, Any] = api.http.get(f"/fl/experiments/{exp_id}").json()
        return got

    # round 1 runs through on the leader; round 2 opens there
    wait_until(
        lambda: len(experiment(api_one)["rounds"]) == 2, "round 2 opens", watch=[one, *workers]
    )
    before = models(api_one, exp_id, 1)
    wait_until(
        lambda: len(list(gates.glob("at-*"))) == 2,
        "both clients of round 2 trained",
        watch=[one, *workers],
        timeout=60,
    )
    (gates / "go").touch()  # one client of round 2 posts to the leader
    wait_until(
        lambda: experiment(api_one)["rounds"][-1]["updates"] == 1,
        "round 2's first update",
        watch=[one, *workers],
    )
    sent = experiment(api_one)["rounds"][-1]
    assert sent["state"] == "open", sent

    one.kill9()
    # the other finds no leader: over MQTT, before the standby has taken over
    (gates / "go").touch()
    api_two.wait_healthy(two)
    got = wait_until(
        lambda: (e := experiment(api_two))["state"] != "running" and e,
        "the new leader ends the experiment",
        watch=[two, *workers],
        timeout=ROUND_TIMEOUT_S + 60,
    )
    assert got["state"] == "completed", got
    assert got["model_version"] == 3
    rounds = [(r["round"], r["attempt"], r["state"]) for r in got["rounds"]]
    assert rounds == [(1, 0, "closed"), (2, 0, "closed"), (3, 0, "closed")], got["rounds"]
    cut = got["rounds"][1]
    # round 2 closed on the new leader with the update the dead one took (from the
    # store) and the one sent over MQTT meanwhile
    assert cut["updates"] == 2 and cut["rejected"] == {}, cut
    assert cut["tasks"] == sent["tasks"]
    outcomes = mqtt_outcomes(api_two)
    assert outcomes.pop("accepted") == 1 and set(outcomes) <= {"resent"}, outcomes
    assert got["rounds"][-1]["metrics"]["accuracy"] >= 0.85

    # every version from the new leader; those the dead one made are the same bytes
    after = models(api_two, exp_id, 3)
    assert after[:2] == before
    assert len({hashlib.sha256(m).digest() for m in after}) == 4  # each round changed it
    # the new leader kept nothing of them in its data directory: all in the store
    assert not (lab.root / "m2" / "fl" / "blobs").exists()

    def clients() -> list[dict[str, Any]] | None:
        found = [t for t in api_two.tasks() if t["name"] == "fl-failover"]
        return found if len(found) == 6 and all(t["state"] in TERMINAL for t in found) else None

    ran = wait_until(clients, "every training task ends", watch=[two, *workers])
    assert all(t["state"] == "completed" for t in ran), ran
    by_id = {t["id"]: t for t in ran}
    over_mqtt = [t for t in got["rounds"][1]["tasks"].values() if "over MQTT" in by_id[t]["stderr"]]
    assert len(over_mqtt) == 1, [by_id[t]["stderr"] for t in got["rounds"][1]["tasks"].values()]
    # sent while no manager read the topic, so sent again
    assert "sending it again" in by_id[over_mqtt[0]]["stderr"], by_id[over_mqtt[0]]["stderr"]


def mqtt_outcomes(api: Api) -> dict[str, float]:
    """``edgeplane_fl_mqtt_updates_total`` by outcome, from ``api``'s ``/metrics``."""
    found = {}
    for line in httpx.get(f"{api.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("edgeplane_fl_mqtt_updates_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            found[outcome] = float(line.rsplit(" ", 1)[1])
    return found
