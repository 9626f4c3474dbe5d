"""edgeplane: one orchestrator for the edge.

``Client`` and ``AsyncClient`` load on first use, so importing ``edgeplane`` (and running
``edgeplane --help``) does not pay for httpx and pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from edgeplane.client import AsyncClient, Client, WaitTimeout

__all__ = ["AsyncClient", "Client", "WaitTimeout", "__version__"]

_FROM_CLIENT = frozenset({"AsyncClient", "Client", "WaitTimeout"})


def __getattr__(name: str) -> Any:
    if name in _FROM_CLIENT:
        from edgeplane import client

        return getattr(client, name)
    raise AttributeError(f"module 'edgeplane' has no attribute {name!r}")
