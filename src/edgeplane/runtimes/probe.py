"""Health probes of a container, as chutes and container tasks run them.

An http or tcp probe connects to ``127.0.0.1:<port>`` *inside* the container's network
namespace: a thread of ours joins it (``setns`` is per thread) for the one connection, so
it works the same for a container with loopback only and one on the node's bridge, and
needs no applet or route inside. An exec probe runs a command in the container
(``runc exec``): healthy when it exits 0 within the timeout.

Each probe returns None when healthy, else a short reason (shown in the task's error).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http.client
import os
import socket
import threading
from collections.abc import Sequence

_CLONE_NEWNET = 0x40000000


def probe_in_netns(
    pid: int,
    *,
    port: int,
    timeout_s: float,
    http_path: str | None = None,
) -> str | None:
    """Connect to ``port`` in the network namespace of process ``pid``: an HTTP ``GET
    http_path`` (healthy on 2xx or 3xx) when given, else a TCP connect."""
    result: list[str | None] = ["no answer within the timeout"]

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError:
            result[0] = "the container is not running"
            return
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                result[0] = f"cannot enter its network: errno {ctypes.get_errno()}"
                return
        finally:
            os.close(fd)
        try:
            if http_path is not None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
                try:
                    conn.request("GET", http_path)
                    status = conn.getresponse().status
                finally:
                    conn.close()
                result[0] = None if 200 <= status < 400 else f"http status {status}"
            else:
                with socket.create_connection(("127.0.0.1", port), timeout_s):
                    result[0] = None
        except (OSError, http.client.HTTPException) as exc:
            result[0] = _why(exc)

    thread = threading.Thread(target=run, name="health-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 1)
    return result[0]


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer within the timeout"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


async def exec_probe(argv: Sequence[str], timeout_s: float) -> str | None:
    """Run ``argv`` (e.g. ``runc exec ID CMD…``): healthy when it exits 0 in time."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        code = await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(ProcessLookupError):
            await process.wait()
        return "no answer within the timeout"
    return None if code == 0 else f"exit code {code}"
