"""The embedded broker over MQTTS (Mosquitto and the amqtt fallback) and MqttLink
verifying it: the right CA connects, another CA, a name the certificate does not cover and
plain MQTT do not."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeplane.certs import init_certs
from edgeplane.errors import Unavailable
from edgeplane.tls import ServerTls
from edgeplane.transport import EmbeddedBroker, MqttLink

WAIT_S = 10.0


@pytest.fixture(params=["mosquitto", "amqtt"])
async def tls_broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "mosquitto" and shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    paths = init_certs(tmp_path / "server", ["127.0.0.1"])
    broker = EmbeddedBroker(
        tmp_path / "broker",
        prefer_mosquitto=request.param == "mosquitto",
        tls=ServerTls(paths.server, paths.server_key),
    )
    url = await broker.start()
    try:
        yield url
    finally:
        await broker.stop()


async def test_a_link_with_the_ca_round_trips(tls_broker: str, tmp_path: Path) -> None:
    assert tls_broker.startswith("mqtts://127.0.0.1:")
    inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def on_message(topic: str, payload: bytes) -> None:
        inbox.put_nowait((topic, payload))

    ca = tmp_path / "server" / "certs" / "ca.pem"
    async with MqttLink(
        tls_broker, client_id="tls-echo", subscriptions=["tls/#"], on_message=on_message, ca=ca
    ) as link:
        await link.publish("tls/1", b"ping")
        assert await asyncio.wait_for(inbox.get(), WAIT_S) == ("tls/1", b"ping")


async def refused(url: str, ca: Path | None) -> str:
    async def ignore(topic: str, payload: bytes) -> None:
        raise AssertionError("nothing may arrive")

    link = MqttLink(
        url, client_id="tls-refused", subscriptions=["tls/#"], on_message=ignore, ca=ca,
        connect_timeout_s=2,
    )  # fmt: skip
    with pytest.raises(Unavailable) as raised:
        await link.start()
    return raised.value.detail


async def test_another_ca_is_refused(tls_broker: str, tmp_path: Path) -> None:
    wrong = init_certs(tmp_path / "elsewhere", ["127.0.0.1"]).ca
    assert "certificate verify failed" in await refused(tls_broker, wrong)


async def test_a_name_the_certificate_does_not_cover_is_refused(
    tls_broker: str, tmp_path: Path
) -> None:
    ca = tmp_path / "server" / "certs" / "ca.pem"
    detail = await refused(tls_broker.replace("127.0.0.1", "localhost"), ca)
    assert "certificate verify failed" in detail and "localhost" in detail


async def test_plain_mqtt_gets_nothing_from_the_tls_listener(tls_broker: str) -> None:
    await refused(tls_broker.replace("mqtts://", "mqtt://"), None)
