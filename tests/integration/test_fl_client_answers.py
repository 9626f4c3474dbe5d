"""The example client's MQTT fallback on a real Mosquitto that restarts while the client
waits for its answer: paho reconnects by itself, and the client subscribes to its answer
topic again at every connect, so the answer of a coordinator that reads the topic after
the restart reaches it (before, it sent until its timeout and never heard it).

The other side is a plain MQTT client answering as the coordinator does (the coordinator
itself answers in tests/integration/test_fl_mqtt.py and tests/faults/test_fl_failover.py)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeplane.fl import client as fl_client
from edgeplane.transport import free_port
from edgeplane.transport.broker import MosquittoProcess

pytest.importorskip("numpy")

TOPIC = "d/fl/e1/rounds/1/updates/w1"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    executable = shutil.which("mosquitto")
    if executable is None:
        pytest.skip("mosquitto is not installed")
    process = MosquittoProcess(tmp_path / "broker", free_port(), executable)
    process.start()
    try:
        yield process
    finally:
        process.stop()


class Peer:
    """A paho client subscribed to ``topic`` at every connect; ``answer``: publish the
    coordinator's ``accepted`` on each message's answer topic."""

    def __init__(self, broker: MosquittoProcess, topic: str, *, answer: bool) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.seen = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = lambda c, _u, message: self._got(c, message, answer)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _got(self, client: Any, message: Any, answer: bool) -> None:
        self.seen += 1
        if answer:
            reply = b'{"outcome": "accepted", "detail": ""}'
            client.publish(message.topic.replace("/updates/", "/acks/"), reply, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def until(condition: Any, what: str) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_an_answer_after_a_broker_restart_reaches_the_client(
    broker: MosquittoProcess,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(fl_client, "RESEND_FIRST_S", 0.2)
    monkeypatch.setattr(fl_client, "RESEND_MAX_S", 0.5)
    monkeypatch.setattr(fl_client, "ANSWER_TIMEOUT_S", 30.0)
    env = {"FL_MQTT_URL": broker.url, "FL_MQTT_TOPIC": TOPIC}
    watcher = Peer(broker, TOPIC, answer=False)
    await until(lambda: watcher.client.is_connected(), "the watcher connected")
    sending = asyncio.create_task(asyncio.to_thread(fl_client.post_over_mqtt, env, "t", b"u"))
    await until(lambda: watcher.seen >= 1, "the update at the broker, unanswered")
    watcher.close()

    broker.stop()
    broker.start()
    answering = Peer(broker, TOPIC, answer=True)
    try:
        assert await sending == 0
    finally:
        answering.close()
    said = capfd.readouterr().err
    assert "sending it again" in said
    assert "no answer in 30" not in said, said  # it heard the answer, not its timeout
