"""Ports a test keeps to itself.

``free_port()`` finds a port nothing is bound to, then lets it go: under xdist another
test's server can take it before this test's server binds it (CI saw a registry's port,
and a manager's, answered by another test's server). :func:`hold_port` keeps it bound,
without listening, for as long as the test holds the socket: a connection to it is
refused, no other process is handed it by the kernel (an automatic port never shares a
bound one), and the test's own server can still bind it and listen (both set
``SO_REUSEADDR``, as asyncio's servers and Go's do)."""

from __future__ import annotations

import socket


def hold_port(port: int = 0) -> socket.socket:
    """A socket bound to 127.0.0.1:``port`` (0: a free one), not listening."""
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", port))
    return held
