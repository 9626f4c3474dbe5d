"""Cron schedules: the pure slot calculation the manager's schedule loop is built on."""

from __future__ import annotations

from edgeplane.schedules.cron import (
    CATCH_UP_POLICIES,
    MAX_CATCH_UP,
    CronSpec,
    due_slots,
    next_slot,
    parse,
    run_id,
)

__all__ = [
    "CATCH_UP_POLICIES",
    "MAX_CATCH_UP",
    "CronSpec",
    "due_slots",
    "next_slot",
    "parse",
    "run_id",
]
