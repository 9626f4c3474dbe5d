"""Store files readable by their owner only: the data dir 0700, the SQLite file and its
``-wal``/``-shm`` 0600 (they hold task env, secrets included)."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url


def secure_data_dir(data_dir: Path, store_url: str) -> None:
    """Make ``data_dir`` 0700 and the SQLite files of ``store_url`` in it 0600, creating
    the database file first when it is new: SQLite gives its ``-wal`` and ``-shm`` files
    the database file's mode, so they are born 0600 too. Files of an older version (0644)
    are narrowed here on every start."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    database = _sqlite_file(store_url)
    if database is None:
        return
    database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        if path.exists():
            os.chmod(path, 0o600)


def _sqlite_file(store_url: str) -> Path | None:
    if not store_url.lower().startswith("sqlite"):
        return None
    database = make_url(store_url).database
    return None if database in (None, "", ":memory:") else Path(database)
