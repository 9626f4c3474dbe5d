"""What every launcher shares (apart from ``__init__`` so a launcher can import it)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

#: Given a fresh directory: a context that runs the broker and yields its MQTT URL.
Launcher = Callable[[Path], AbstractContextManager[str]]


class BrokerUnavailable(Exception):
    """The broker cannot run on this machine (its executable is missing); says which."""
