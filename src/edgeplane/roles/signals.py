from __future__ import annotations

import asyncio
import signal


async def wait_for_stop(also: asyncio.Event | None = None) -> None:
    """Return on SIGINT or SIGTERM (or once ``also`` is set)."""
    stop = also or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
