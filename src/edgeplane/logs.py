"""Logs: one event per line with the ``extra`` ids of each event; JSON objects when stderr
is not a terminal (files, journald, a log shipper), short human lines when it is."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class HumanFormatter(logging.Formatter):
    """``15:04:05 warning membership: worker offline worker_id=local-1``: for a person."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        extra = " ".join(
            f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD and v is not None
        )
        line = f"{clock} {record.levelname.lower():<7} {record.name.rpartition('.')[2]}: "
        line += record.getMessage() + (f"  {extra}" if extra else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "info", *, human: bool | None = None) -> None:
    """Log to stderr at ``level``: human lines when ``human`` (default: stderr is a
    terminal), else JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if human is None:
        human = sys.stderr.isatty()
    handler.setFormatter(HumanFormatter() if human else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosqlite logs every statement with its parameters at debug, which hold documents
    # (secret env included): never below warning, whatever the level asked for.
    # alembic names every migration step at info: on a first start, a screenful.
    for noisy in ("uvicorn.access", "amqtt", "transitions", "aiosqlite", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
