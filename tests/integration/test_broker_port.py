"""A restarted root or manager keeps its embedded broker's URL: its members dial it again."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgeplane.config import Settings
from edgeplane.errors import Unavailable
from edgeplane.roles.control import start_broker
from edgeplane.transport import free_port
from edgeplane.transport.broker import port_free


async def test_the_embedded_broker_comes_back_on_its_port(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker="")
    async with contextlib.AsyncExitStack() as stack:
        first = await start_broker(stack, settings)
    async with contextlib.AsyncExitStack() as stack:
        assert await start_broker(stack, settings) == first


async def test_a_taken_port_is_an_error_not_a_move(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker="")
    async with contextlib.AsyncExitStack() as stack:
        first = await start_broker(stack, settings)
    port = int(first.rsplit(":", 1)[1])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        async with contextlib.AsyncExitStack() as stack:
            with pytest.raises(Unavailable, match=rf"port {port} \(kept in .*--broker-listen"):
                await start_broker(stack, settings)
    assert (tmp_path / "broker" / "port").read_text().strip() == str(port)


async def test_broker_listen_sets_the_port_and_it_is_kept(tmp_path: Path) -> None:
    port = free_port()
    given = Settings(data_dir=tmp_path, broker="", broker_listen=f"127.0.0.1:{port}")
    async with contextlib.AsyncExitStack() as stack:
        assert await start_broker(stack, given) == f"mqtt://127.0.0.1:{port}"
    # without the flag, the next start comes back on the port it was given
    async with contextlib.AsyncExitStack() as stack:
        assert await start_broker(stack, Settings(data_dir=tmp_path, broker="")) == (
            f"mqtt://127.0.0.1:{port}"
        )


@pytest.mark.parametrize("bad", ["nohost", "127.0.0.1:", "127.0.0.1:70000", ":1883", "h:p"])
def test_a_bad_broker_listen_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="HOST:PORT"):
        Settings(broker_listen=bad)


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")
async def test_a_broker_left_behind_by_an_earlier_run_is_reclaimed(tmp_path: Path) -> None:
    """A Mosquitto that outlived its role (no parent-death signal where the kernel has
    none) is stopped by the next start on the data dir, which gets its port back."""
    settings = Settings(data_dir=tmp_path, broker="")
    async with contextlib.AsyncExitStack() as stack:
        first = await start_broker(stack, settings)
    port = int(first.rsplit(":", 1)[1])
    # an orphan: the same config, started by nobody edgeplane still runs
    config = tmp_path / "broker" / "mosquitto.conf"
    orphan = await asyncio.create_subprocess_exec(
        "mosquitto",
        "-c",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        (tmp_path / "broker" / "mosquitto.pid").write_text(f"{orphan.pid}\n")
        await asyncio.wait_for(_listening(port), 10)  # TimeoutError: the orphan did not listen
        async with contextlib.AsyncExitStack() as stack:
            assert await start_broker(stack, settings) == first
        assert await asyncio.wait_for(orphan.wait(), 5) is not None
    finally:
        if orphan.returncode is None:
            orphan.kill()
            await orphan.wait()


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


async def _listening(port: int) -> None:
    """Return once something listens on ``port``."""
    while port_free("127.0.0.1", port):  # noqa: ASYNC110 -- no event for another process's bind
        await asyncio.sleep(0.02)
