"""Cron slots: which instants a 5-field expression in an IANA timezone names.

Pure (no I/O, no clock): time comes in and goes out as float epoch seconds, so the manager
can persist ``next_run`` and replay missed slots after downtime, and tests can walk DST
changes without sleeping.

Syntax is Vixie cron's: ``minute hour day-of-month month day-of-week`` with ``*``, ``a``,
``a-b``, ``*/n``, ``a-b/n``, ``a/n`` (``a`` to the field's end) and comma lists; month and
weekday names (``jan``, ``mon``); weekday 0 and 7 are Sunday. When both day fields are
restricted (neither starts with ``*``) a day matches if *either* matches, else both must.
Aliases: ``@yearly`` ``@annually`` ``@monthly`` ``@weekly`` ``@daily`` ``@midnight``
``@hourly``. Seconds fields, ``@reboot``, Quartz's ``?``/``L``/``W``/``#`` and day/month
pairs that never exist (``0 0 30 2 *``) are rejected.

Slots are wall-clock times in the schedule's timezone, mapped to instants like this:

- A wall time that exists once is that instant.
- A wall time skipped by a forward change (Europe/Berlin 2026-03-29, 02:00 → 03:00) fires
  once at the first instant after the gap (03:00 local = 01:00 UTC). Every matching wall
  time in the gap collapses into that one instant, which fires once even when it also
  matches by itself (``*/30 * * * *`` fires at 01:30 and 03:00 local, nothing twice).
- A wall time repeated by a backward change (2026-10-25, 03:00 → 02:00) fires at its first
  occurrence (02:30 CEST = 00:30 UTC) only, unless the hour field is exactly ``*``: such
  "every hour" schedules (``*/30 * * * *``, ``@hourly``) measure elapsed time, so they
  keep firing through the second pass too (02:00 and 02:30 CET as well). This is Vixie
  cron's rule, keyed on the hour field: a fixed hour is a wall-clock appointment.

Intervals: ``@every 30s`` (units ``s``, ``m``, ``h``, combinable: ``@every 1h30m``) fire
at whole multiples of the interval since the Unix epoch, whatever the zone, so every
manager computes the same slots (robfig/cron's ``@every``, which Propeller users know).

Slots are whole-second instants and strictly increasing; none is ever named twice.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edgeplane.errors import Invalid

#: Policies for slots missed while no manager ran.
CATCH_UP_POLICIES = ("none", "last", "all")
#: ``catch_up="all"`` fires at most this many missed slots: the most recent ones.
MAX_CATCH_UP = 1000

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_DAY_NAMES = {
    name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}
#: Longest month lengths (February in a leap year), for rejecting days that never exist.
_MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
#: A valid expression matches within 40 years (29 February on a given weekday); the
#: search stops long after that rather than loop forever.
_SEARCH_YEARS = 400
_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class CronSpec:
    """A validated schedule: what the store persists."""

    expression: str  # normalised: aliases expanded, fields lower-case and single-spaced
    timezone: str


@dataclass(frozen=True)
class _Kind:
    name: str
    low: int
    high: int
    names: Mapping[str, int]


_FIELD_KINDS = (
    _Kind("minute", 0, 59, {}),
    _Kind("hour", 0, 23, {}),
    _Kind("day-of-month", 1, 31, {}),
    _Kind("month", 1, 12, _MONTH_NAMES),
    _Kind("day-of-week", 0, 7, _DAY_NAMES),
)


@dataclass(frozen=True)
class _Fields:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: tuple[int, ...]
    weekdays: frozenset[int]  # 0 = Sunday
    either_day: bool  # both day fields restricted: a day matches if either does
    every_hour: bool  # hour field is "*": fires on both passes of a repeated hour

    def day_matches(self, wall: datetime) -> bool:
        by_date = wall.day in self.days
        by_weekday = wall.isoweekday() % 7 in self.weekdays
        return (by_date or by_weekday) if self.either_day else (by_date and by_weekday)


def parse(expression: str, timezone: str = "UTC") -> CronSpec:
    """Validate a cron expression and an IANA zone; errors name the field (422)."""
    interval = _interval(expression)
    if interval is not None:
        _zone(timezone)
        return CronSpec(f"@every {interval}s", timezone)
    normalised = _normalise(expression)
    _compile(normalised)
    _zone(timezone)
    return CronSpec(normalised, timezone)


_EVERY = re.compile(r"@every\s+((?:\d+[hms])+)")
_UNIT_S = {"h": 3600, "m": 60, "s": 1}


def _interval(expression: str) -> int | None:
    """Seconds of an ``@every`` expression, None for other expressions."""
    text = expression.strip().lower()
    if not text.startswith("@every"):
        return None
    match = _EVERY.fullmatch(text)
    seconds = (
        sum(int(n) * _UNIT_S[u] for n, u in re.findall(r"(\d+)([hms])", match.group(1)))
        if match
        else 0
    )
    if seconds < 1:
        raise Invalid(
            f"bad interval {expression.strip()!r}; write e.g. '@every 30s' or '@every 1h30m'",
            field="schedule",
        )
    return seconds


def next_slot(spec: CronSpec, after: float) -> float:
    """The first slot strictly after the instant ``after``."""
    interval = _interval(spec.expression)
    if interval is not None:
        return float((math.floor(after) // interval + 1) * interval)
    fields = _compile(spec.expression)
    zone = _zone(spec.timezone)
    here = datetime.fromtimestamp(after, zone)
    start = here.replace(tzinfo=None, second=0, microsecond=0, fold=0)
    repeat = here.replace(fold=1).timestamp() - here.timestamp()
    if repeat > 0:
        # `after` is in the first pass of a repeated hour: earlier wall times of that hour
        # come round again after it, so the scan starts where the repeat begins.
        start = (start - timedelta(seconds=repeat)).replace(second=0)
    second_pass: float | None = None
    wall = _next_match(fields, start)
    while True:
        first, again = _instants(zone, wall)
        if fields.every_hour and again is not None and again > after:
            second_pass = again if second_pass is None else min(second_pass, again)
        if first > after:
            # First instants grow with wall time and a repeat is later than its first
            # instant, so no later wall time can give an earlier slot.
            return first if second_pass is None else min(first, second_pass)
        wall = _next_match(fields, wall + _MINUTE)


def due_slots(
    spec: CronSpec,
    last_slot: float | None,
    next_run: float,
    now: float,
    catch_up: str,
    tolerance: float = 60.0,
) -> tuple[list[float], float]:
    """The slots to fire now (oldest first) and the next run to persist.

    ``next_run`` is the persisted first unfired slot; the due slots are those in
    ``[next_run, now]`` and after ``last_slot``. ``catch_up`` picks among them: ``all``
    (the most recent :data:`MAX_CATCH_UP`, so a long outage cannot flood the cluster),
    ``last`` (the most recent one) or ``none`` (only a slot due within ``tolerance``
    seconds of ``now``, none of the older missed ones).
    """
    if catch_up not in CATCH_UP_POLICIES:
        raise Invalid(
            f"catch_up must be one of {', '.join(CATCH_UP_POLICIES)}, got {catch_up!r}",
            field="catch_up",
        )
    if now < next_run:
        return [], next_run
    # Slots are whole seconds, so "not yet fired" is an integer lower bound.
    lowest = math.ceil(next_run)
    if last_slot is not None:
        lowest = max(lowest, math.floor(last_slot) + 1)
    if catch_up == "none":
        slots = list(_between(spec, max(lowest, math.floor(now - tolerance) + 1), now))
    else:
        slots = _most_recent(spec, lowest, now, MAX_CATCH_UP if catch_up == "all" else 1)
    # A clock that went back must not reopen slots already fired.
    resume = now if last_slot is None else max(now, last_slot)
    return slots, next_slot(spec, resume)


def run_id(schedule_id: str, slot: float) -> str:
    """The id of a slot's run: the same on every manager, so a slot runs once."""
    return f"{schedule_id}:{int(slot)}"


def _between(spec: CronSpec, lowest: int, now: float) -> Iterator[float]:
    slot = next_slot(spec, lowest - 1)
    while slot <= now:
        yield slot
        slot = next_slot(spec, slot)


def _most_recent(spec: CronSpec, lowest: int, now: float, count: int) -> list[float]:
    """The last ``count`` slots in ``[lowest, now]``, without walking a long outage."""
    span = 60.0 * (count + 1)
    while True:
        start = max(lowest, math.floor(now - span))
        found = deque(_between(spec, start, now), maxlen=count)
        if len(found) == count or start == lowest:
            return list(found)
        span *= 4


def _instants(zone: ZoneInfo, wall: datetime) -> tuple[float, float | None]:
    """A wall time's firing instant, and its second-pass instant when it is repeated."""
    early = wall.replace(tzinfo=zone, fold=0)
    first = early.timestamp()
    late = early.replace(fold=1).timestamp()
    if late > first:
        return first, late
    if late == first:
        return first, None
    # In a gap: `late` used the offset after the change and lies before it, `first` the
    # offset before and lies after it. Fire at the change itself, found by bisection.
    after_change = datetime.fromtimestamp(first, zone).utcoffset()
    before, at = math.floor(late), math.ceil(first)
    while at - before > 1:
        middle = (before + at) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == after_change:
            at = middle
        else:
            before = middle
    return float(at), None


def _next_match(fields: _Fields, wall: datetime) -> datetime:
    """The first matching wall-clock minute at or after ``wall`` (naive, whole minute)."""
    limit = wall.year + _SEARCH_YEARS
    while wall.year <= limit:
        if wall.month not in fields.months:
            later = bisect_right(fields.months, wall.month)
            if later < len(fields.months):
                wall = datetime(wall.year, fields.months[later], 1)
            else:
                wall = datetime(wall.year + 1, fields.months[0], 1)
            continue
        midnight = datetime(wall.year, wall.month, wall.day)
        if not fields.day_matches(wall):
            wall = midnight + _DAY
            continue
        hour = bisect_left(fields.hours, wall.hour)
        if hour == len(fields.hours):
            wall = midnight + _DAY
            continue
        if fields.hours[hour] != wall.hour:
            wall = wall.replace(hour=fields.hours[hour], minute=0)
        minute = bisect_left(fields.minutes, wall.minute)
        if minute == len(fields.minutes):
            wall = wall.replace(minute=0) + _HOUR
            continue
        return wall.replace(minute=fields.minutes[minute])
    raise Invalid("the cron expression never matches a date", field="schedule")


def _normalise(expression: str) -> str:
    text = expression.strip().lower()
    if text.startswith("@"):
        if text not in _ALIASES:
            raise Invalid(
                f"unknown cron alias {expression.strip()!r}; use one of {', '.join(_ALIASES)}",
                field="schedule",
            )
        return _ALIASES[text]
    fields = text.split()
    if len(fields) != 5:
        raise Invalid(
            "a cron expression has 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)} in {expression!r}",
            field="schedule",
        )
    return " ".join(fields)


@lru_cache(maxsize=1024)
def _compile(expression: str) -> _Fields:
    texts = _normalise(expression).split()
    minutes, hours, days, months, weekdays = (
        _values(text, kind) for text, kind in zip(texts, _FIELD_KINDS, strict=True)
    )
    fields = _Fields(
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=days,
        months=tuple(sorted(months)),
        weekdays=frozenset(day % 7 for day in weekdays),
        either_day=not texts[2].startswith("*") and not texts[4].startswith("*"),
        every_hour=texts[1] == "*",
    )
    if not fields.either_day and not any(
        day <= _MONTH_DAYS[month] for month in fields.months for day in fields.days
    ):
        raise Invalid(
            f"day-of-month {texts[2]!r} never occurs in month {texts[3]!r}", field="schedule"
        )
    return fields


def _values(text: str, kind: _Kind) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, slash, step_text = part.partition("/")
        step = 1
        if slash:
            step = _number(step_text, kind, "step")
            if step < 1:
                raise Invalid(f"{kind.name} field: step must be at least 1", field="schedule")
        if body == "*":
            low, high = kind.low, kind.high
        elif "-" in body:
            start, _, end = body.partition("-")
            low, high = _value(start, kind), _value(end, kind)
            if low > high:
                raise Invalid(f"{kind.name} field: range {body!r} runs backwards", field="schedule")
        else:
            low = _value(body, kind)
            high = kind.high if slash else low
        values.update(range(low, high + 1, step))
    return frozenset(values)


def _value(text: str, kind: _Kind) -> int:
    if text in kind.names:
        return kind.names[text]
    value = _number(text, kind, "value")
    if not kind.low <= value <= kind.high:
        raise Invalid(
            f"{kind.name} field: {value} is out of range {kind.low}-{kind.high}",
            field="schedule",
        )
    return value


def _number(text: str, kind: _Kind, what: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise Invalid(f"{kind.name} field: {what} {text!r} is not a number", field="schedule")
    return int(text)


def _zone(name: str) -> ZoneInfo:
    # "localtime" is the host's zone, not an IANA name: two managers could disagree.
    if name != "localtime":
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    raise Invalid(
        f"unknown timezone {name!r}; use an IANA name such as 'Europe/Berlin'", field="timezone"
    )
