"""The MQTT fallback of federated learning updates (docs/fl.md), on real brokers:

- on the Mosquitto ``edgeplane up`` starts and locks down, each training task gets a
  broker identity that may publish its own round's update and nothing else; what it
  publishes is checked as over HTTP, and forged, duplicate, malformed, oversized,
  NaN-holding and wrongly shaped updates are refused and counted;
- on a broker edgeplane does not secure, the example client whose API is unreachable
  gets its updates aggregated over MQTT, and an update for a worker the round did not
  select is refused and counted.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgeplane.fl import client as fl_client
from edgeplane.fl import mqtt, tokens, updates
from edgeplane.fl.model import initial
from edgeplane.protocol import Topics
from edgeplane.protocol.topics import fl_ack_of
from edgeplane.roles.up import Stack
from edgeplane.transport import free_port, parse_broker_url
from stack_fixtures import start_stack

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120)]

pytest.importorskip("sklearn")

SRC = Path(__file__).parents[2] / "src"
WAIT_S = 60.0
#: writes what the task was given to DIR/WORKER.env (its topic's last level; whole, by a
#: rename), then waits
SLEEPER = 'env > "$0/.$$" && mv "$0/.$$" "$0/$(basename "$FL_MQTT_TOPIC").env"; exec sleep 120'


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not await condition():  # noqa: ASYNC110 -- the API has nothing to wait on
            await asyncio.sleep(0.1)


def spec(workload: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "name": "mqtt",
        "workload": workload,
        "rounds": 1,
        "clients_per_round": 2,
        "min_clients": 2,
        "round_timeout_s": 120,
        "hyperparams": {"lr": 0.5, "epochs": 2},
        **fields,
    }


def sleepers(directory: Path) -> dict[str, Any]:
    return {"runtime": "host", "command": ["sh", "-c", SLEEPER, str(directory)]}


async def task_envs(directory: Path, n: int) -> dict[str, dict[str, str]]:
    """worker → the env its training task was given, once ``n`` tasks wrote theirs."""

    def read() -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for path in directory.glob("*.env"):
            lines = path.read_text().splitlines()
            found[path.stem] = dict(line.split("=", 1) for line in lines if "=" in line)
        return found

    async def written() -> bool:
        return len(await asyncio.to_thread(read)) >= n

    await until(written, f"{n} training tasks start")
    return await asyncio.to_thread(read)


async def experiment(http: httpx.AsyncClient, exp_id: str) -> dict[str, Any]:
    got = await http.get(f"/fl/experiments/{exp_id}")
    assert got.status_code == 200, got.text
    body: dict[str, Any] = got.json()
    return body


async def mqtt_outcomes(stack: Stack) -> dict[str, float]:
    """``edgeplane_fl_mqtt_updates`` of ``/metrics``, by outcome."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{stack.control.url}/metrics")).text
    found = {}
    for line in text.splitlines():
        if line.startswith("edgeplane_fl_mqtt_updates_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            found[outcome] = float(line.rsplit(" ", 1)[1])
    return found


async def publish(
    stack: Stack, env: dict[str, str], topic: str, payload: bytes
) -> tuple[bool | None, str]:
    """What the example client does to publish, with ``env``'s identity."""
    broker = parse_broker_url(stack.broker_url)
    return await asyncio.to_thread(fl_client.publish, broker, env, topic, payload)


GOOD = updates.encode_raw(initial(), num_samples=10, metrics={"accuracy": 0.5})
NAN = updates.encode_raw(
    {"w": np.full((64, 10), np.nan, np.float32), "b": np.zeros(10, np.float32)}, num_samples=1
)
SMALL = updates.encode_raw({"w": np.zeros((8, 10), np.float32)}, num_samples=1)


class Eavesdropper:
    """A client with a training task's identity subscribed to ``filters``: the topics of
    what the broker delivers it."""

    def __init__(self, url: str, env: dict[str, str], filters: list[str]) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        broker = parse_broker_url(url)
        self.topics: set[str] = set()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.username_pw_set(env["FL_MQTT_USERNAME"], env["FL_MQTT_PASSWORD"])
        self.client.on_message = lambda _c, _u, message: self.topics.add(message.topic)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_connect = lambda client, *_: client.subscribe([(f, 1) for f in filters])
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
async def secured(
    tmp_path: Path, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    """``up`` on its own locked-down Mosquitto, two workers."""
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for pair in start_stack(tmp_path / "up", "", store, unique_domain):
        yield pair


async def test_a_task_publishes_only_its_own_update_and_bad_ones_are_counted(
    secured: tuple[Stack, httpx.AsyncClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, http = secured
    auth = stack.control.auth
    assert auth is not None
    created = await http.post("/fl/experiments", json=spec(sleepers(tmp_path)))
    assert created.status_code == 201, created.text
    exp_id = created.json()["id"]
    envs = await task_envs(tmp_path, 2)
    (w1, e1), (_, e2) = sorted(envs.items())
    assert e1["FL_MQTT_URL"] == stack.broker_url and e1["FL_MQTT_USERNAME"].startswith("fl/")
    assert e1["FL_MQTT_TOPIC"] == Topics(stack.control.settings.domain).fl_update(exp_id, 1, w1)
    t1, t2 = e1["FL_MQTT_TOPIC"], e2["FL_MQTT_TOPIC"]

    # the broker: each identity its own topic only
    assert await publish(stack, e1, t1, mqtt.frame(e1["FL_TOKEN"], GOOD)) == (True, "")
    taken, why = await publish(stack, e1, t2, mqtt.frame("forged-by-w1", GOOD))
    assert taken is False and "authori" in why.lower(), why
    worker_topic = Topics(stack.control.settings.domain).events(w1)
    taken, why = await publish(stack, e1, worker_topic, b"{}")
    assert taken is False, why
    wrong = {**e2, "FL_MQTT_PASSWORD": "not-it"}
    taken, why = await publish(stack, wrong, t2, mqtt.frame(e2["FL_TOKEN"], GOOD))
    assert taken is False, why

    # w1's identity reads the answers to its own updates, never w2's
    domain = stack.control.settings.domain
    ack1, ack2 = fl_ack_of(t1), fl_ack_of(t2)
    spy = Eavesdropper(stack.broker_url, e1, [Topics(domain).fl_ack("+", "+", "+"), ack1])

    # the coordinator: what the broker let through is checked as over HTTP
    monkeypatch.setattr(mqtt, "MAX_UPDATE", 64 * 1024)
    forged = e2["FL_TOKEN"][:-4] + ("AAAA" if not e2["FL_TOKEN"].endswith("AAAA") else "BBBB")
    # and answered on the update's acks topic: the client is told why
    cases = [
        # the same update again: on record, so the client is done
        (e1, t1, mqtt.frame(e1["FL_TOKEN"], GOOD), "duplicate"),
        (e2, t2, b"garbage", "malformed"),
        (e2, t2, mqtt.frame(forged, GOOD), "unauthorized"),
        # w1's credential on w2's topic: the same
        (e2, t2, mqtt.frame(e1["FL_TOKEN"], GOOD), "unauthorized"),
        (e2, t2, mqtt.frame(e2["FL_TOKEN"], b"x" * 100_000), "oversize"),
        (e2, t2, mqtt.frame(e2["FL_TOKEN"], NAN), "nonfinite"),
        (e2, t2, mqtt.frame(e2["FL_TOKEN"], SMALL), "shape"),
    ]
    for env, topic, payload, outcome in cases:
        taken, why = await publish(stack, env, topic, payload)
        if outcome == "duplicate":
            assert (taken, why) == (True, "")
        else:
            assert taken is False and why.startswith(f"{fl_client.ANSWERED}: {outcome}:"), why

    async def all_refused() -> bool:
        return sum((await mqtt_outcomes(stack)).values()) >= 8

    await until(all_refused, "the coordinator judges 8 updates")
    spy.close()
    assert ack1 in spy.topics and ack2 not in spy.topics, spy.topics
    assert await mqtt_outcomes(stack) == {
        "accepted": 1,
        "duplicate": 1,
        "malformed": 1,
        "unauthorized": 2,
        "oversize": 1,
        "nonfinite": 1,
        "shape": 1,
    }
    got = await experiment(http, exp_id)
    assert got["rounds"][0]["updates"] == 1
    assert got["rounds"][0]["rejected"] == {
        "duplicate": 1,
        "malformed": 1,
        "unauthorized": 2,
        "oversize": 1,
        "nonfinite": 1,
        "shape": 1,
    }

    # w2's own update closes the round; the identities end with it
    assert await publish(stack, e2, t2, mqtt.frame(e2["FL_TOKEN"], GOOD)) == (True, "")

    async def completed() -> bool:
        return bool((await experiment(http, exp_id))["state"] == "completed")

    await until(completed, "the round closes with both updates")
    got = await experiment(http, exp_id)
    assert got["model_version"] == 1 and got["rounds"][0]["updates"] == 2
    assert auth.fl_clients() == {}
    taken, why = await publish(stack, e2, t2, mqtt.frame(e2["FL_TOKEN"], GOOD))
    assert taken is False, why  # its credentials are gone


@pytest.fixture
async def open_broker(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    """``up`` on a broker it does not secure, three workers."""
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for pair in start_stack(tmp_path, fast_broker_url, store, unique_domain, workers=3):
        yield pair


async def test_updates_over_mqtt_are_aggregated_when_the_api_is_unreachable(
    open_broker: tuple[Stack, httpx.AsyncClient],
) -> None:
    stack, http = open_broker
    dead = f"http://127.0.0.1:{free_port()}/unreachable"
    # the client's COORDINATOR_URL points where nothing listens: it fetches its model and
    # shard over HTTP, then has to post over MQTT
    command = f'COORDINATOR_URL={dead} exec "$0" -m edgeplane.fl.client'
    workload = {
        "runtime": "host",
        "command": ["sh", "-c", command, sys.executable],
        "env": {"PYTHONPATH": str(SRC), "PATH": os.environ.get("PATH", "")},
    }
    created = await http.post("/fl/experiments", json=spec(workload, rounds=2))
    assert created.status_code == 201, created.text
    exp_id = created.json()["id"]

    async def ended() -> bool:
        return bool((await experiment(http, exp_id))["state"] != "running")

    await until(ended, "the experiment ends")
    got = await experiment(http, exp_id)
    assert got["state"] == "completed", got
    assert [(r["round"], r["updates"]) for r in got["rounds"]] == [(1, 2), (2, 2)]
    assert got["rounds"][-1]["metrics"]["accuracy"] > 0.8
    assert (await mqtt_outcomes(stack)) == {"accepted": 4}
    ended_tasks: list[dict[str, Any]] = []

    async def clients_ended() -> bool:
        """(the last round's clients may still be exiting when the experiment completes)"""
        tasks = (await http.get("/tasks", params={"limit": 100})).json()["items"]
        ended_tasks[:] = [t for t in tasks if t["name"] == "fl-mqtt"]
        terminal = ("completed", "failed", "cancelled")
        return len(ended_tasks) == 4 and all(t["state"] in terminal for t in ended_tasks)

    await until(clients_ended, "the 4 clients end")
    # each client ends on its own once the broker has its update (a round stops only the
    # tasks that sent none), saying it went over MQTT
    assert all(t["state"] == "completed" for t in ended_tasks), ended_tasks
    assert all("over MQTT" in t.get("stderr", "") for t in ended_tasks), ended_tasks


async def test_an_unselected_workers_update_over_mqtt_is_refused_and_counted(
    open_broker: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    """On a broker nobody locked down anyone may publish anywhere: the coordinator's
    checks are what stands. A credential made with the experiment's own key for a worker
    the round did not pick, on that worker's topic: unselected."""
    stack, http = open_broker
    created = await http.post("/fl/experiments", json=spec(sleepers(tmp_path)))
    exp_id = created.json()["id"]
    envs = await task_envs(tmp_path, 2)
    stored = await stack.control.store.get_fl_experiment(exp_id)
    assert stored is not None
    record = stored.rounds[0]
    online = {w["id"] for w in (await http.get("/workers")).json()["items"]}
    (unpicked,) = online - set(record.clients)
    picked = record.clients[0]
    grant = tokens.Grant(exp_id, 1, unpicked, record.tasks[picked])
    token = tokens.issue(bytes.fromhex(stored.secret), grant)
    topic = Topics(stack.control.settings.domain).fl_update(exp_id, 1, unpicked)
    anonymous = {k: v for k, v in envs[picked].items() if not k.startswith("FL_MQTT_USER")}
    taken, why = await publish(stack, anonymous, topic, mqtt.frame(token, GOOD))
    assert taken is False and why.startswith(f"{fl_client.ANSWERED}: unselected:"), why
    assert (await mqtt_outcomes(stack)).get("unselected") == 1
    got = await experiment(http, exp_id)
    assert got["rounds"][0]["rejected"] == {"unselected": 1}
    assert got["rounds"][0]["updates"] == 0
    await http.post(f"/fl/experiments/{exp_id}/stop")
