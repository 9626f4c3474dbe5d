"""Logs for a person on a terminal, JSON lines for everything else."""

from __future__ import annotations

import logging

import orjson

from edgeplane.logs import HumanFormatter, JsonFormatter


def _record() -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "edgeplane.manager.membership", "levelname": "WARNING", "msg": "worker offline"}
    )
    record.worker_id = "local-1"
    return record


def test_a_human_line_has_the_message_and_its_ids() -> None:
    line = HumanFormatter().format(_record())
    assert "\n" not in line
    assert "warning" in line
    assert "membership: worker offline  worker_id=local-1" in line


def test_json_lines_stay_as_they_were() -> None:
    entry = orjson.loads(JsonFormatter().format(_record()))
    assert (entry["msg"], entry["worker_id"]) == ("worker offline", "local-1")
