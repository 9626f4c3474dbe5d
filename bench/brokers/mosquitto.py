"""One Mosquitto, as `edgeplane up` runs it: ``set_tcp_nodelay true``, anonymous."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.brokers.base import BrokerUnavailable
from edgeplane.transport import free_port
from edgeplane.transport.broker import MosquittoProcess


@contextmanager
def launch(directory: Path) -> Iterator[str]:
    executable = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if executable is None:
        raise BrokerUnavailable("mosquitto is not installed")
    broker = MosquittoProcess(directory, free_port(), executable)
    url = broker.start()
    try:
        yield url
    finally:
        broker.stop()
