"""A restarted root or manager keeps its embedded broker's URL: its members dial it again."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from edgeplane.config import Settings
from edgeplane.roles.control import start_broker


async def test_the_embedded_broker_comes_back_on_its_port(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker="")
    async with contextlib.AsyncExitStack() as stack:
        first = await start_broker(stack, settings)
    async with contextlib.AsyncExitStack() as stack:
        assert await start_broker(stack, settings) == first


async def test_a_taken_port_moves_the_broker(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker="")
    async with contextlib.AsyncExitStack() as stack:
        first = await start_broker(stack, settings)
    port = int(first.rsplit(":", 1)[1])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        async with contextlib.AsyncExitStack() as stack:
            moved = await start_broker(stack, settings)
    assert moved != first
    assert (tmp_path / "broker" / "port").read_text().strip() == moved.rsplit(":", 1)[1]
