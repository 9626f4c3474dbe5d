"""One process per data dir: a role holds ``DATA_DIR/lock`` for as long as it runs.

Two processes on one data dir share what is kept there (a worker's id, its credentials
and task handles; a manager's store and broker port) and then fight over it: two workers
started with the default data dir took the same id and kicked each other off the broker
without a word. The second one is refused at start instead, naming the pid that holds it.

``flock``: the kernel drops the lock when its holder dies, however it dies (kill -9
included), so a stale lock never stops a restart. The descriptor is not inherited by the
processes a role starts (Python opens files close-on-exec): a worker's task processes,
which outlive it on purpose, do not keep its data dir locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from edgeplane.errors import Invalid

LOCK_FILE = "lock"


@contextlib.contextmanager
def hold_data_dir(directory: Path, role: str) -> Iterator[None]:
    """Lock ``directory`` for this process; ``Invalid`` (exit 2) if another holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise Invalid(
                f"the data dir {directory} is in use by another {role} (pid {holder}): "
                f"give each {role} a data dir of its own (--data-dir)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
