"""A restarted root or manager keeps its embedded broker's URL: its members dial it again."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest

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


async def test_a_fixed_port_is_used_and_recorded(tmp_path: Path) -> None:
    from edgeplane.transport.broker import free_port

    port = free_port()
    settings = Settings(data_dir=tmp_path, broker="", broker_port=port)
    async with contextlib.AsyncExitStack() as stack:
        url = await start_broker(stack, settings)
    assert url.endswith(f":{port}")
    assert (tmp_path / "broker" / "port").read_text().strip() == str(port)


async def test_a_fixed_port_that_is_taken_is_an_error_not_a_move(tmp_path: Path) -> None:
    """Workers and a Kubernetes Service were told the fixed port: moving would strand them."""
    from edgeplane.errors import Unavailable

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(data_dir=tmp_path, broker="", broker_port=port)
        with pytest.raises(Unavailable):
            async with contextlib.AsyncExitStack() as stack:
                await start_broker(stack, settings)


def test_manager_with_a_taken_broker_port_exits_3_naming_it(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "edgeplane", "manager", "--data-dir", str(tmp_path),
             "--broker-port", str(port), "--port", "0"],
            capture_output=True, text=True, timeout=30,
            env={**os.environ, "EDGEPLANE_LOG_LEVEL": "warning"},
        )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert f"port {port} (--broker-port) is taken" in done.stderr
    assert "Traceback" not in done.stderr
