"""Chute events through a cut: a real ``edgeplane worker --api`` whose way to the broker
goes through a TCP proxy the test cuts. While it is cut off its chutes keep running, the
manager answers for them with their last known state (marked stale), and what happens to
them meanwhile (a service killed) is kept on the node, across a kill -9 of the worker,
then delivered once, in order, when the way is back (docs/chutes.md, "Chute events")."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgeplane.errors import Invalid
from edgeplane.protocol import Topics, decode
from edgeplane.transport import free_port, parse_broker_url
from faults.procs import Api, Lab, alive, wait_until
from faults.proxy import TcpProxy
from faults.test_chute_worker import Node, chute, running_node
from oci_fixtures import busybox_containers_unavailable

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
    ),
]


class Recorder:
    """A plain MQTT client on the lab's (anonymous) broker: records what passes on some
    topics, and replays it, as anyone on that broker could."""

    def __init__(self, url: str, topics: list[str]) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        address = parse_broker_url(url)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"recorder-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_connect = lambda client, *_: (
            client.subscribe([(topic, 1) for topic in topics]),
            subscribed.set(),
        )
        self.client.connect(address.host, address.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _: Any, __: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((message.topic, message.payload))

    def of_type(self, topic: str, type_: str) -> list[bytes]:
        with self._lock:
            found = list(self.got)
        return [p for t, p in found if t == topic and _type(p) == type_]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _type(payload: bytes) -> str:
    try:
        return decode(payload).type
    except Invalid:
        return ""


class CutStack:
    """A manager on the lab's broker; the node reaches that broker through ``proxy``."""

    def __init__(self, lab: Lab, node: Node, proxy: TcpProxy) -> None:
        port = free_port()
        self.manager = lab.manager(port).start()
        self.api: Api = lab.api(port)
        self.api.wait_healthy(self.manager)
        self.node = node
        self.proxy = proxy
        node.start()
        self.api.wait_workers(["n1"], watch=[self.manager, node.role])

    def kept(self) -> dict[str, Any]:
        """The manager's view of n1's chutes, from its events (``GET /workers/n1``)."""
        found = self.api.worker("n1")
        return (found or {}).get("chutes") or {}

    def kept_chute(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.kept().get("items", []) if c["name"] == name), None)


@pytest.fixture
def cut(lab: Lab) -> Iterator[CutStack]:
    broker = parse_broker_url(lab.broker.url)
    proxy = TcpProxy(broker.host, broker.port).start()
    try:
        with running_node(lab, broker=f"mqtt://127.0.0.1:{proxy.port}") as node:
            yield CutStack(lab, node, proxy)
    finally:
        proxy.close()


@pytest.fixture
def recorder(lab: Lab) -> Iterator[Recorder]:
    topics = Topics(lab.domain, "local")
    found = Recorder(lab.broker.url, [topics.events("n1"), topics.cmd("n1")])
    try:
        yield found
    finally:
        found.close()


def test_events_of_a_node_cut_off_arrive_once_in_order_when_it_is_back(
    cut: CutStack, recorder: Recorder, lab: Lab
) -> None:
    api, node = cut.api, cut.node
    answer = api.http.post("/workers/n1/chutes", json=chute("blink"))
    assert answer.status_code == 202, answer.text
    change_id = answer.json()["change_id"]
    assert node.ended(change_id)["state"] == "done"

    def told_running() -> dict[str, Any] | None:
        found = cut.kept_chute("blink")
        return found if found and found["state"] == "running" else None

    wait_until(told_running, "the manager to hear blink runs", watch=[cut.manager, node.role])
    fresh = api.http.get("/workers/n1/chutes").json()
    assert [c["name"] for c in fresh] == ["blink"] and fresh[0]["stale"] is False
    pid = node.client.get("/chutes/blink").json()["services"][0]["pid"]

    cut.proxy.cut()
    wait_until(
        lambda: (api.worker("n1") or {}).get("state") == "offline",
        "n1 to be offline",
        timeout=60,
        watch=[cut.manager],
    )
    # the last known state, at once, marked stale with the time of the last contact
    stale = api.http.get("/workers/n1/chutes")
    assert stale.status_code == 200, stale.text
    [shown] = stale.json()
    assert shown["name"] == "blink" and shown["state"] == "running"
    assert shown["stale"] is True and shown["last_contact"] > 0 and shown["reported_at"] > 0
    assert api.http.get("/workers/n1/chutes/blink").json()["stale"] is True
    assert api.http.get("/workers/n1/chutes/nope").status_code == 404
    assert api.http.post("/workers/n1/chutes/blink/stop").status_code == 503
    assert alive(pid)  # the chute runs on, cut off or not

    os.kill(pid, signal.SIGKILL)  # the chute dies while nobody can be told
    wait_until(
        lambda: node.client.get("/chutes/blink").json()["state"] == "failed",
        "the node to see blink failed",
        watch=[node.role],
    )
    events_dir = node.data / "worker" / "chutes" / "events"

    def exited_on_disk() -> bool:
        held = [json.loads(p.read_text()) for p in events_dir.glob("*.json")]
        return any(e["kind"] == "exited" and e["chute"] == "blink" for e in held)

    wait_until(exited_on_disk, "the exit to be kept on the node", watch=[node.role])
    assert cut.kept_chute("blink")["state"] == "running"  # type: ignore[index]

    # the worker dies too, and comes back, still cut off: the event is on its disk
    node.role.kill9()
    node.start()
    assert exited_on_disk()
    cut.proxy.restore()

    def told_failed() -> dict[str, Any] | None:
        found = cut.kept_chute("blink")
        return found if found and found["state"] == "failed" else None

    wait_until(told_failed, "the manager to hear of the exit", timeout=60,
               watch=[cut.manager, node.role])  # fmt: skip
    kept = cut.kept()
    events = kept["events"]
    exits = [e for e in events if e["kind"] == "exited" and e["chute"] == "blink"]
    assert len(exits) == 1, events
    assert exits[0]["service"] == "main" and exits[0]["detail"] == "its main process ended"
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # in order, none twice
    assert kept["lost"] == 0

    # every event the node ever made was applied exactly once: as many as its last seq
    def all_acked() -> bool:
        return not list(events_dir.glob("*.json"))

    wait_until(all_acked, "the node to have its events acked", watch=[node.role])
    assert api.metric("edgeplane_chute_events_total") == cut.kept()["seq"]
    assert api.metric("edgeplane_foreign_chute_events_total") == 0
    back = api.http.get("/workers/n1/chutes").json()
    assert back[0]["stale"] is False and back[0]["state"] == "failed"

    # every chute.events message the worker sent, replayed: each is acked again (the
    # barrier), none is applied twice
    before = cut.kept()
    topics = Topics(lab.domain, "local")
    sent = recorder.of_type(topics.events("n1"), "chute.events")
    assert sent, "the recorder saw no chute events"
    acks = len(recorder.of_type(topics.cmd("n1"), "chute.ack"))
    for payload in sent:
        recorder.client.publish(topics.events("n1"), payload, qos=1)
    wait_until(
        lambda: len(recorder.of_type(topics.cmd("n1"), "chute.ack")) >= acks + len(sent),
        "the replays to be acked",
        watch=[cut.manager],
    )
    again = cut.kept()
    assert again["seq"] == before["seq"] and again["events"] == before["events"]
    assert again["items"] == before["items"]
    assert api.metric("edgeplane_chute_events_total") == before["seq"]
