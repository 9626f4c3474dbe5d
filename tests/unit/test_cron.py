"""Cron slots: examples (UTC, Berlin's DST nights, catch-up), bad input, then properties
checked against a brute-force oracle that walks every minute in the zone."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.clock import ManualClock
from edgeplane.errors import Invalid
from edgeplane.schedules import (
    MAX_CATCH_UP,
    CronSpec,
    due_slots,
    next_slot,
    parse,
    run_id,
)

pytestmark = pytest.mark.timeout(30)

BERLIN = "Europe/Berlin"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def local(zone: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone)).timestamp()


def walk(spec: CronSpec, after: float, count: int) -> list[float]:
    slots: list[float] = []
    for _ in range(count):
        after = next_slot(spec, after)
        slots.append(after)
    return slots


def until(spec: CronSpec, after: float, end: float) -> list[float]:
    slots: list[float] = []
    after = next_slot(spec, after)
    while after <= end:
        slots.append(after)
        after = next_slot(spec, after)
    return slots


# --- examples ------------------------------------------------------------------------


def test_every_five_minutes_in_utc() -> None:
    spec = parse("*/5 * * * *")
    assert spec == CronSpec("*/5 * * * *", "UTC")
    assert walk(spec, utc(2026, 5, 1, 12, 3, 10), 3) == [
        utc(2026, 5, 1, 12, 5),
        utc(2026, 5, 1, 12, 10),
        utc(2026, 5, 1, 12, 15),
    ]
    # strictly after: a slot instant itself is not its own next slot
    assert next_slot(spec, utc(2026, 5, 1, 12, 5)) == utc(2026, 5, 1, 12, 10)
    assert next_slot(spec, utc(2026, 5, 1, 12, 4, 59) + 0.999) == utc(2026, 5, 1, 12, 5)


def test_aliases_expand() -> None:
    assert parse("@hourly").expression == "0 * * * *"
    assert parse(" @Daily ").expression == "0 0 * * *"
    assert parse("@midnight").expression == "0 0 * * *"
    assert parse("@weekly").expression == "0 0 * * 0"
    assert parse("@monthly").expression == "0 0 1 * *"
    assert parse("@yearly").expression == parse("@annually").expression == "0 0 1 1 *"
    assert walk(parse("@hourly"), utc(2026, 5, 1, 23, 30), 2) == [
        utc(2026, 5, 2, 0),
        utc(2026, 5, 2, 1),
    ]
    assert next_slot(parse("@weekly"), utc(2026, 5, 1)) == utc(2026, 5, 3)  # a Sunday


def test_expression_is_normalised() -> None:
    assert parse("  0   9 * JAN-mar  Mon-FRI ").expression == "0 9 * jan-mar mon-fri"


def test_daily_nine_in_berlin_winter_and_summer() -> None:
    spec = parse("0 9 * * *", BERLIN)
    assert next_slot(spec, utc(2026, 1, 15)) == utc(2026, 1, 15, 8)
    assert next_slot(spec, utc(2026, 7, 15)) == utc(2026, 7, 15, 7)


def test_field_syntax() -> None:
    start = utc(2026, 5, 31, 23, 59)  # a Sunday, just before midnight
    assert walk(parse("5/15 * * * *"), start, 4) == [utc(2026, 6, 1, 0, m) for m in (5, 20, 35, 50)]
    assert walk(parse("0 0 * * 7"), start, 1) == walk(parse("0 0 * * sun"), start, 1)
    assert walk(parse("0 0 * * 1-5/2"), start, 3) == [
        utc(2026, 6, 1),
        utc(2026, 6, 3),
        utc(2026, 6, 5),
    ]
    # both day fields restricted: either matches (the 13th, or any Friday)
    assert walk(parse("0 0 13 * 5"), start, 3) == [
        utc(2026, 6, 5),
        utc(2026, 6, 12),
        utc(2026, 6, 13),
    ]
    # one starts with "*": both must match (odd days that are Fridays)
    assert walk(parse("0 0 */2 * fri"), start, 2) == [utc(2026, 6, 5), utc(2026, 6, 19)]
    assert walk(parse("0 0 29 2 *"), start, 2) == [utc(2028, 2, 29), utc(2032, 2, 29)]


def test_spring_gap_fires_once_at_its_end() -> None:
    # Berlin 2026-03-29: 02:00 CET → 03:00 CEST, at 01:00 UTC; 02:30 never happens
    daily = parse("30 2 * * *", BERLIN)
    assert walk(daily, utc(2026, 3, 27, 12), 3) == [
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST, the first instant after the gap
        utc(2026, 3, 30, 0, 30),
    ]
    # several missing wall times collapse into that one instant
    assert walk(parse("15,45 2 * * *", BERLIN), utc(2026, 3, 28, 12), 2) == [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 30, 0, 15),
    ]
    # the gap's end also matches by itself: still once
    assert until(parse("*/30 * * * *", BERLIN), utc(2026, 3, 28, 23, 40), utc(2026, 3, 29, 2)) == [
        utc(2026, 3, 29, 0, 0),
        utc(2026, 3, 29, 0, 30),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 1, 30),
        utc(2026, 3, 29, 2, 0),
    ]


def test_autumn_repeat_fires_wall_clock_jobs_once() -> None:
    # Berlin 2026-10-25: 03:00 CEST → 02:00 CET, at 01:00 UTC; 02:00-03:00 happens twice
    daily = parse("30 2 * * *", BERLIN)
    assert walk(daily, utc(2026, 10, 23, 12), 3) == [
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first pass only
        utc(2026, 10, 26, 1, 30),
    ]
    # asked during the second pass: nothing more today
    assert next_slot(daily, utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)
    fixed_hour = parse("*/30 2 * * *", BERLIN)
    assert until(fixed_hour, utc(2026, 10, 24, 23), utc(2026, 10, 25, 12)) == [
        utc(2026, 10, 25, 0, 0),
        utc(2026, 10, 25, 0, 30),
    ]


def test_autumn_repeat_keeps_every_hour_jobs_running() -> None:
    every_half_hour = parse("*/30 * * * *", BERLIN)
    assert until(every_half_hour, utc(2026, 10, 24, 23, 40), utc(2026, 10, 25, 2)) == [
        utc(2026, 10, 25, 0, 0),  # 02:00 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 1, 0),  # 02:00 CET
        utc(2026, 10, 25, 1, 30),  # 02:30 CET
        utc(2026, 10, 25, 2, 0),  # 03:00 CET
    ]
    # asked in the first pass, the repeat of an earlier wall time comes next
    assert next_slot(every_half_hour, utc(2026, 10, 25, 0, 40)) == utc(2026, 10, 25, 1, 0)
    hourly = parse("@hourly", BERLIN)
    assert until(hourly, utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 2)) == [
        utc(2026, 10, 25, 0),
        utc(2026, 10, 25, 1),
        utc(2026, 10, 25, 2),
    ]


def test_lord_howe_half_hour_changes() -> None:
    # Lord Howe: 2026-04-05 02:00 +11 → 01:30 +10:30; 2026-10-04 02:00 → 02:30
    zone = "Australia/Lord_Howe"
    quarter = parse("*/15 * * * *", zone)
    assert until(quarter, utc(2026, 4, 4, 14, 40), utc(2026, 4, 4, 15, 30)) == [
        utc(2026, 4, 4, 14, 45),  # 01:45 +11
        utc(2026, 4, 4, 15, 0),  # 01:30 +10:30, the repeat
        utc(2026, 4, 4, 15, 15),
        utc(2026, 4, 4, 15, 30),  # 02:00 +10:30
    ]
    daily = parse("15 2 * * *", zone)
    assert next_slot(daily, local(zone, 2026, 10, 3, 12)) == local(zone, 2026, 10, 4, 2, 30)


def test_simulated_dst_nights_fire_each_slot_once() -> None:
    """A manager loop on an injected clock, polling every 20 s through both changes."""
    specs = {
        "daily": parse("30 2 * * *", BERLIN),
        "half-hourly": parse("*/30 * * * *", BERLIN),
        "odd": parse("15,45 2 * * *", BERLIN),
    }

    def night(start: float, hours: int) -> dict[str, list[str]]:
        clock = ManualClock(start)
        next_runs = {name: next_slot(spec, clock.now()) for name, spec in specs.items()}
        last: dict[str, float | None] = dict.fromkeys(specs)
        fired: dict[str, list[str]] = {name: [] for name in specs}
        while clock.now() < start + hours * 3600:
            clock.advance(20)
            for name, spec in specs.items():
                slots, next_runs[name] = due_slots(
                    spec, last[name], next_runs[name], clock.now(), "last"
                )
                fired[name] += [run_id(name, slot) for slot in slots]
                last[name] = slots[-1] if slots else last[name]
        return fired

    def ids(name: str, *slots: float) -> list[str]:
        return [run_id(name, slot) for slot in slots]

    spring = night(utc(2026, 3, 28, 23, 50), 3)
    assert spring["daily"] == ids("daily", utc(2026, 3, 29, 1))
    assert spring["odd"] == ids("odd", utc(2026, 3, 29, 1))
    assert spring["half-hourly"] == ids(
        "half-hourly", *(utc(2026, 3, 29, 0) + 1800 * k for k in range(6))
    )
    autumn = night(utc(2026, 10, 24, 23, 50), 3)
    assert autumn["daily"] == ids("daily", utc(2026, 10, 25, 0, 30))
    assert autumn["odd"] == ids("odd", utc(2026, 10, 25, 0, 15), utc(2026, 10, 25, 0, 45))
    assert autumn["half-hourly"] == ids(
        "half-hourly", *(utc(2026, 10, 25, 0) + 1800 * k for k in range(6))
    )


# --- catching up -----------------------------------------------------------------------


HOURLY = parse("@hourly")
DOWN_FROM = utc(2026, 5, 1, 9, 30)  # the manager stopped; 10:00 was the next run
NEXT_RUN = utc(2026, 5, 1, 10)
MISSED = [utc(2026, 5, 1, h) for h in (10, 11, 12, 13)]


@pytest.mark.parametrize(
    ("policy", "now", "expected"),
    [
        ("all", utc(2026, 5, 1, 13, 0, 30), MISSED),
        ("last", utc(2026, 5, 1, 13, 0, 30), MISSED[-1:]),
        ("none", utc(2026, 5, 1, 13, 0, 30), MISSED[-1:]),  # 13:00 is due right now
        ("all", utc(2026, 5, 1, 13, 20), MISSED),
        ("last", utc(2026, 5, 1, 13, 20), MISSED[-1:]),
        ("none", utc(2026, 5, 1, 13, 20), []),  # back 20 min late: every slot was missed
    ],
)
def test_catch_up_after_three_hours_down(policy: str, now: float, expected: list[float]) -> None:
    slots, next_run = due_slots(HOURLY, utc(2026, 5, 1, 9), NEXT_RUN, now, policy)
    assert slots == expected
    assert next_run == utc(2026, 5, 1, 14)


def test_nothing_due_before_next_run() -> None:
    assert due_slots(HOURLY, None, NEXT_RUN, NEXT_RUN - 1, "all") == ([], NEXT_RUN)


def test_fired_slots_never_come_back() -> None:
    # a stale next_run (say, a crash between firing and saving) must not refire 10 and 11
    slots, _ = due_slots(HOURLY, utc(2026, 5, 1, 11), NEXT_RUN, utc(2026, 5, 1, 13, 5), "all")
    assert slots == MISSED[2:]
    # a clock that went back: nothing refires, and the next run stays after the last slot
    slots, next_run = due_slots(
        HOURLY, utc(2026, 5, 1, 13), NEXT_RUN, utc(2026, 5, 1, 12, 30), "all"
    )
    assert slots == []
    assert next_run == utc(2026, 5, 1, 14)


def test_catch_up_all_is_bounded_to_the_most_recent() -> None:
    every_minute = parse("* * * * *")
    now = utc(2026, 5, 10, 12, 0, 30)
    slots, next_run = due_slots(every_minute, None, utc(2026, 5, 1), now, "all")
    assert len(slots) == MAX_CATCH_UP
    assert slots[-1] == utc(2026, 5, 10, 12)
    assert slots[0] == utc(2026, 5, 10, 12) - 60 * (MAX_CATCH_UP - 1)
    assert next_run == utc(2026, 5, 10, 12, 1)
    # a sparse schedule after a long outage: every missed one, found without a long walk
    yearly = parse("@yearly")
    slots, _ = due_slots(yearly, None, utc(2000, 1, 1), utc(2026, 5, 1), "all")
    assert slots == [utc(year, 1, 1) for year in range(2000, 2027)]
    assert due_slots(every_minute, None, utc(2020, 1, 1), now, "last")[0] == [now - 30]


def test_unknown_catch_up_policy() -> None:
    with pytest.raises(Invalid) as caught:
        due_slots(HOURLY, None, NEXT_RUN, NEXT_RUN, "some")
    assert caught.value.field == "catch_up"


def test_run_id_is_deterministic() -> None:
    assert run_id("sched-1", 1_700_000_000.0) == "sched-1:1700000000"
    assert run_id("sched-1", next_slot(HOURLY, DOWN_FROM)) == f"sched-1:{int(NEXT_RUN)}"


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "* * * *",
        "0 * * * * *",  # a seconds field
        "60 * * * *",
        "-1 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * 32 * *",
        "* * * 13 *",
        "* * * 0 *",
        "* * * * 8",
        "*/0 * * * *",
        "5-1 * * * *",
        "1-2-3 * * * *",
        "*/5/2 * * * *",
        "1,,2 * * * *",
        "a * * * *",
        "0 0 * * monday",
        "0 0 ? * *",
        "0 0 L * *",
        "0 0 * * 1#2",
        "0 0 15W * *",
        "\u0661 * * * *",  # a non-ASCII digit
        "0 0 30 2 *",  # never exists
        "0 0 31 4,6,9,11 *",
        "@reboot",
    ],
)
def test_bad_expression_names_the_schedule_field(expression: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse(expression, BERLIN)
    assert caught.value.field == "schedule"
    assert caught.value.status == 422


@pytest.mark.parametrize(
    "zone",
    [
        "",
        "Mars/Olympus_Mons",
        "utc",
        "Europe/Berlin ",
        "../etc/passwd",
        "/etc/localtime",
        "localtime",
        "Europe",
    ],
)
def test_unknown_timezone_names_the_timezone_field(zone: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse("0 9 * * *", zone)
    assert caught.value.field == "timezone"


def test_either_day_field_may_name_impossible_dates() -> None:
    # with both day fields restricted, Mondays in February still fire
    spec = parse("0 0 31 2 mon", BERLIN)
    assert next_slot(spec, utc(2026, 1, 1)) == local(BERLIN, 2026, 2, 2)


# --- properties against a brute-force oracle ------------------------------------------

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True)
class Expr:
    """A generated expression and the sets it means, worked out independently."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    either_day: bool
    every_hour: bool

    def matches(self, wall: datetime) -> bool:
        if not (
            wall.minute in self.minutes and wall.hour in self.hours and wall.month in self.months
        ):
            return False
        by_date = wall.day in self.days
        by_weekday = (wall.weekday() + 1) % 7 in self.weekdays
        return (by_date or by_weekday) if self.either_day else (by_date and by_weekday)

    def possible(self) -> bool:
        longest = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}
        return self.either_day or any(
            day <= longest.get(month, 31) for month in self.months for day in self.days
        )


def field(
    low: int, high: int, hot: Sequence[int], names: Sequence[str] = (), base: int = 0
) -> st.SearchStrategy[tuple[str, frozenset[int]]]:
    """One field: a comma list of ``*``, ``*/n``, ``a``, ``a-b``, ``a-b/n``, ``a/n``."""
    value = st.one_of(st.sampled_from(hot), st.integers(low, high))
    step = st.integers(1, high - low + 1)

    def show(v: int, named: bool) -> str:
        return names[v - base] if named and names and v - base < len(names) else str(v)

    @st.composite
    def part(draw: st.DrawFn) -> tuple[str, set[int]]:
        kind = draw(st.sampled_from(["*", "*/n", "a", "a-b", "a-b/n", "a/n"]))
        named = draw(st.booleans())
        a, b, n = draw(value), draw(value), draw(step)
        a, b = min(a, b), max(a, b)
        options: dict[str, tuple[str, range]] = {
            "*": ("*", range(low, high + 1)),
            "*/n": (f"*/{n}", range(low, high + 1, n)),
            "a": (show(a, named), range(a, a + 1)),
            "a-b": (f"{show(a, named)}-{show(b, named)}", range(a, b + 1)),
            "a-b/n": (f"{show(a, named)}-{show(b, named)}/{n}", range(a, b + 1, n)),
            "a/n": (f"{a}/{n}", range(a, high + 1, n)),
        }
        text, values = options[kind]
        return text, set(values)

    def join(parts: list[tuple[str, set[int]]]) -> tuple[str, frozenset[int]]:
        return ",".join(t for t, _ in parts), frozenset().union(*(v for _, v in parts))

    return st.one_of(
        st.just(("*", frozenset(range(low, high + 1)))),
        st.lists(part(), min_size=1, max_size=3).map(join),
    )


# Strategies are built once at import: hypothesis re-validates ones built inside a draw.
MINUTES = field(0, 59, (0, 15, 30, 45))
HOURS = field(0, 23, (0, 1, 2, 3))
DAYS_OF_MONTH = st.one_of(st.just(("*", frozenset(range(1, 32)))), field(1, 31, (1, 29, 30, 31)))
MONTHS_FIELD = st.one_of(
    st.just(("*", frozenset(range(1, 13)))), field(1, 12, (3, 4, 10, 11), MONTHS, 1)
)
WEEKDAYS = st.one_of(st.just(("*", frozenset(range(8)))), field(0, 7, (0, 6, 7), DAYS))


@st.composite
def expressions(draw: st.DrawFn) -> Expr:
    minute, hour, dom, month, dow = (
        draw(MINUTES),
        draw(HOURS),
        draw(DAYS_OF_MONTH),
        draw(MONTHS_FIELD),
        draw(WEEKDAYS),
    )
    return Expr(
        text=" ".join(t for t, _ in (minute, hour, dom, month, dow)),
        minutes=minute[1],
        hours=hour[1],
        days=dom[1],
        months=month[1],
        weekdays=frozenset(d % 7 for d in dow[1]),
        either_day=not dom[0].startswith("*") and not dow[0].startswith("*"),
        every_hour=hour[0] == "*",
    )


def offset(zone: ZoneInfo, t: float) -> timedelta:
    found = datetime.fromtimestamp(t, zone).utcoffset()
    assert found is not None
    return found


@functools.cache
def transitions(name: str) -> tuple[int, ...]:
    """Every offset change of a zone in 2024-2029, to the second."""
    zone = ZoneInfo(name)
    found: list[int] = []
    t = int(utc(2024, 1, 1))
    while t < utc(2030, 1, 1):
        if offset(zone, t) != offset(zone, t + 86400):
            low, high = t, t + 86400
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (mid, high) if offset(zone, mid) == offset(zone, t) else (low, mid)
            found.append(high)
        t += 86400
    return tuple(found)


def instants(zone: str) -> st.SearchStrategy[float]:
    """Anywhere in 2000-2040, or (more often) within half a day of a DST change."""
    anywhere = st.integers(int(utc(2000, 1, 1)), int(utc(2040, 1, 1)))
    changes = transitions(zone)
    near: list[st.SearchStrategy[int]] = []
    if changes:
        change = st.sampled_from(changes)
        # whole minutes, so slot instants themselves come up; or any second
        minutes = st.builds(lambda c, m: c + 60 * m, change, st.integers(-12 * 60, 2 * 60))
        seconds = st.builds(lambda c, s: c + s, change, st.integers(-12 * 3600, 2 * 3600))
        near = [minutes, minutes, seconds]
    fraction = st.sampled_from([0.0, 0.0, 0.25, 0.999])
    return st.builds(lambda t, f: t + f, st.one_of(anywhere, *near), fraction)


INSTANTS = {zone: instants(zone) for zone in ZONES}


def is_slot(expr: Expr, zone: ZoneInfo, t: int) -> bool:
    """The documented rule, minute by minute: wall time matches (first pass, or any pass
    for every-hour schedules), or ``t`` ends a gap that held a matching wall time."""
    here = datetime.fromtimestamp(t, zone)
    wall = here.replace(tzinfo=None)
    if expr.matches(wall) and (here.fold == 0 or expr.every_hour):
        return True
    gap = offset(zone, t) - offset(zone, t - 1)
    skipped = (wall - gap + timedelta(minutes=k) for k in range(int(gap.total_seconds()) // 60))
    return gap > timedelta(0) and any(expr.matches(w) for w in skipped)


def oracle(expr: Expr, zone: ZoneInfo, after: float, end: float) -> list[float]:
    """Every slot in (after, end] by checking each whole minute (the test zones have
    offsets in whole minutes, so every slot is one)."""
    t = int(after // 60 * 60)
    out: list[float] = []
    while t <= end:
        if t > after and is_slot(expr, zone, t):
            out.append(float(t))
        t += 60
    return out


@st.composite
def cases(draw: st.DrawFn) -> tuple[Expr, str, float]:
    expr = draw(expressions())
    zone = draw(st.sampled_from(ZONES))
    return expr, zone, draw(INSTANTS[zone])


def valid(expr: Expr, zone: str) -> CronSpec | None:
    if not expr.possible():
        with pytest.raises(Invalid):
            parse(expr.text, zone)
        return None
    return parse(expr.text, zone)


@settings(max_examples=60, deadline=None)
@given(cases())
def test_next_slot_agrees_with_the_minute_by_minute_oracle(case: tuple[Expr, str, float]) -> None:
    expr, zone, after = case
    spec = valid(expr, zone)
    if spec is None:
        return
    end = after + 16 * 3600
    expected = oracle(expr, ZoneInfo(zone), after, end)
    assert until(spec, after, end) == expected
    if not expected:
        assert next_slot(spec, after) > end


@settings(max_examples=100, deadline=None)
@given(cases(), st.floats(0, 3 * 86400))
def test_next_slot_is_strictly_after_monotonic_and_never_repeats(
    case: tuple[Expr, str, float], later: float
) -> None:
    expr, zone, after = case
    spec = valid(expr, zone)
    if spec is None:
        return
    first = next_slot(spec, after)
    assert first > after
    assert next_slot(spec, after + later) >= first
    slots = walk(spec, after, 12)
    assert all(a < b for a, b in itertools.pairwise(slots))
    assert all(is_slot(expr, ZoneInfo(zone), int(s)) and s == int(s) for s in slots)


def simulate(
    spec: CronSpec, start: float, steps: Sequence[int], policy: str
) -> tuple[list[list[float]], list[tuple[float, float]]]:
    """A manager loop that persists ``next_run`` and the last fired slot between calls."""
    next_run, last = next_slot(spec, start), None
    fired: list[list[float]] = []
    windows: list[tuple[float, float]] = []
    now = start
    for step in steps:
        before, now = now, now + step
        slots, new_next = due_slots(spec, last, next_run, now, policy)
        assert new_next > now or (now < next_run and new_next == next_run)
        fired.append(slots)
        windows.append((before, now))
        next_run, last = new_next, slots[-1] if slots else last
    return fired, windows


POLICY_RULES: dict[str, Callable[[list[float], float], list[float]]] = {
    "all": lambda due, now: due,
    "last": lambda due, now: due[-1:],
    "none": lambda due, now: [s for s in due if s > now - 60],
}


@settings(max_examples=60, deadline=None)
@given(
    cases(),
    st.lists(st.integers(0, 4 * 3600), min_size=1, max_size=8),
    st.sampled_from(sorted(POLICY_RULES)),
)
def test_due_slots_fire_each_slot_at_most_once(
    case: tuple[Expr, str, float], steps: list[int], policy: str
) -> None:
    expr, zone, start = case
    spec = valid(expr, zone)
    if spec is None:
        return
    fired, windows = simulate(spec, start, steps, policy)
    flat = [s for slots in fired for s in slots]
    assert all(a < b for a, b in itertools.pairwise(flat))
    for slots, (before, now) in zip(fired, windows, strict=True):
        due = until(spec, before, now)
        assert slots == POLICY_RULES[policy](due, now)


def test_every_interval_slots_are_epoch_multiples() -> None:
    spec = parse("@every 1s", "Europe/Berlin")
    assert spec.expression == "@every 1s"
    assert next_slot(spec, 100.0) == 101.0
    assert next_slot(spec, 100.5) == 101.0
    assert parse("@every 1h30m").expression == "@every 5400s"
    assert next_slot(parse("@every 1h30m"), 5400.0) == 10800.0
    slots, following = due_slots(spec, None, 101.0, 105.2, "all")
    assert slots == [101.0, 102.0, 103.0, 104.0, 105.0] and following == 106.0
    slots, following = due_slots(spec, 105.0, 106.0, 110.0, "last")
    assert slots == [110.0] and following == 111.0


@pytest.mark.parametrize("bad", ["@every", "@every 0s", "@every 5", "@every -1s", "@every 1d"])
def test_bad_intervals(bad: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse(bad)
    assert caught.value.field == "schedule"
