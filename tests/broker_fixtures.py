"""MQTT broker fixtures for integration tests.

Register them with ``pytest_plugins = ["broker_fixtures"]``. Tests sharing a broker keep
apart by putting every topic under ``unique_domain``.
"""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edgeplane.transport import EmbeddedBroker, free_port
from edgeplane.transport.broker import MosquittoProcess

SYSTEM_MOSQUITTO = ("127.0.0.1", 1883)


@pytest.fixture(scope="session")
def mosquitto_url() -> str:
    """The machine's Mosquitto: stock config, Nagle on (~88 ms a round trip)."""
    try:
        with socket.create_connection(SYSTEM_MOSQUITTO, timeout=1):
            pass
    except OSError:
        pytest.skip("no Mosquitto listening on 127.0.0.1:1883")
    host, port = SYSTEM_MOSQUITTO
    return f"mqtt://{host}:{port}"


@pytest.fixture(scope="session")
def fast_broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Mosquitto with ``set_tcp_nodelay true`` on a free port, shared by the session."""
    executable = shutil.which("mosquitto")
    if executable is None:
        pytest.skip("mosquitto is not installed")
    broker = MosquittoProcess(tmp_path_factory.mktemp("mosquitto"), free_port(), executable)
    url = broker.start()
    try:
        yield url
    finally:
        broker.stop()


@pytest.fixture
async def embedded_broker_url(tmp_path: Path) -> AsyncIterator[str]:
    """amqtt running inside the test's event loop."""
    broker = EmbeddedBroker(tmp_path / "amqtt", prefer_mosquitto=False)
    url = await broker.start()
    try:
        yield url
    finally:
        await broker.stop()


@pytest.fixture
def unique_domain() -> str:
    """A fresh topic root, so tests sharing a broker never see each other's messages."""
    return f"t{uuid.uuid4().hex[:12]}"
