"""The task handles a worker keeps on disk, so that after a crash it finds its work again.

Host and container attempts outlive their worker (Nomad's clients keep their task handles
the same way): one JSON file per attempt under ``<data_dir>/handles`` holds what
:meth:`~edgeplane.runtimes.Runtime.recover` needs. It is written before the attempt is
reported running, written again with the final event once the attempt has ended, and
removed once the manager has acked that event and the runtime has released the attempt
(``Runtime.release``). A restarted worker thus knows every attempt the manager may still
count on it for, and the results it had not yet handed over.

Every write is atomic: a temporary file, fsync, then rename over the record; a crash
leaves the old record or the new one, never half of one. The directory itself is not
synced: a power loss may lose a rename, but it ends the attempt's processes too, and an
attempt the worker does not report is one the manager re-places.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edgeplane.protocol import TaskEvent
from edgeplane.runtimes import RunSpec

log = logging.getLogger(__name__)

Key = tuple[str, int]
_SUFFIX = ".json"


class HandleRecord(BaseModel):
    """One attempt a worker started on a runtime whose attempts outlive it.

    With an empty ``state`` and no ``final``, an intent: the worker was about to start
    the attempt (``Runtime.start_held``) and had not saved its handle yet, so the
    attempt's command has not run (it waits for the handle)."""

    #: a record an older version wrote holds a whole Assignment here: RunSpec ignores
    #: the fields it does not have
    spec: RunSpec
    #: the runtime's handle state (:attr:`edgeplane.runtimes.Handle.state`)
    state: dict[str, Any]
    started_at: float | None = None
    #: how the attempt ended, until the manager acks it
    final: TaskEvent | None = None

    @property
    def key(self) -> Key:
        return (self.spec.task_id, self.spec.attempt)


def record_name(key: Key) -> str:
    """The record's file name: task ids may hold any character, so a digest of the key."""
    task_id, attempt = key
    return hashlib.sha256(f"{task_id}\0{attempt}".encode()).hexdigest()[:32] + _SUFFIX


class HandleStore:
    """Records in one directory. Blocking file I/O: call it off the event loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, record: HandleRecord, *, sync: bool = True) -> None:
        """Write ``record`` atomically (replacing the attempt's previous record); without
        ``sync``, not flushed to the disk: it survives the worker process's death, not
        the machine's."""
        # Only the worker's user may read them: a task's env may hold secrets.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / record_name(record.key)
        tmp = path.with_name(path.name + ".tmp")
        data = record.model_dump_json().encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        tmp.replace(path)

    def remove(self, keys: list[Key]) -> None:
        for key in keys:
            (self.directory / record_name(key)).unlink(missing_ok=True)

    def load(self) -> list[HandleRecord]:
        """Every readable record. One that cannot be read (cut short by a full disk, edited
        by hand) is logged and removed: nothing of it can be recovered anyway."""
        if not self.directory.is_dir():
            return []
        records = []
        for path in sorted(self.directory.iterdir()):
            if path.name.endswith(".tmp"):  # a write a crash cut short: its record stands
                path.unlink(missing_ok=True)
                continue
            if not path.name.endswith(_SUFFIX):
                continue
            try:
                records.append(HandleRecord.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError) as exc:
                log.error("unreadable task handle removed", extra={"file": path.name, "error": exc})
                path.unlink(missing_ok=True)
        return records
