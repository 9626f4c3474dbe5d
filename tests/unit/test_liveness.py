"""Liveness judged on what the manager could hear (manager/liveness.py), on a manual clock."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeplane.clock import ManualClock
from edgeplane.manager.liveness import (
    RECONNECT_ALLOWANCE_S,
    STALL_S,
    HelloVerdict,
    Liveness,
    judge_hello,
    sweep_period,
)
from edgeplane.manager.registry import Reservation
from edgeplane.model import Capabilities
from edgeplane.protocol import Hello

BEAT = 0.5  # the sweep runs every 0.25 s; lost after 3 beats less that: 1.25 s of silence


def make() -> tuple[ManualClock, Liveness]:
    clock = ManualClock()
    liveness = Liveness(clock, heartbeat_s=BEAT, missed_beats=3)
    liveness.link_up([])
    clock.advance(RECONNECT_ALLOWANCE_S)  # past the allowance of the first connect
    return clock, liveness


def test_a_silent_member_is_lost_after_its_missed_beats() -> None:
    clock, liveness = make()
    assert liveness.period == sweep_period(BEAT) == 0.25
    seen = clock.monotonic()
    clock.advance(1.25)
    assert not liveness.lost(seen)
    clock.advance(0.01)
    assert liveness.lost(seen)


def test_the_managers_own_disconnection_is_not_a_members_silence() -> None:
    clock, liveness = make()
    seen = clock.monotonic()
    clock.advance(1.0)
    liveness.link_down()
    clock.advance(60)  # the broker is away for a minute
    assert liveness.settling
    assert not liveness.lost(seen)
    liveness.link_up(["w1"])
    assert liveness.resync == {"w1"}
    # members reconnect with their own backoff: they get that long before silence counts
    clock.advance(RECONNECT_ALLOWANCE_S)
    assert liveness.settling is False
    assert liveness.silence(seen) == 1.0
    clock.advance(0.25)
    assert not liveness.lost(seen)
    clock.advance(0.01)
    assert liveness.lost(seen)


def test_a_member_heard_after_the_reconnect_is_judged_from_then() -> None:
    clock, liveness = make()
    liveness.link_down()
    clock.advance(3.5)
    liveness.link_up(["w1"])
    clock.advance(0.5)
    seen = clock.monotonic()  # its first heartbeat after the reconnect
    clock.advance(RECONNECT_ALLOWANCE_S)
    assert not liveness.lost(seen)
    assert liveness.silence(seen) == 0.5  # the allowance ran on after it spoke


def test_a_stalled_loop_is_not_a_members_silence() -> None:
    clock, liveness = make()
    seen = clock.monotonic()
    clock.advance(2.0)  # the loop was blocked 2 s (a module compiled inline, say)
    liveness.woke(late=2.0 - liveness.period)
    assert liveness.silence(seen) == liveness.period
    assert not liveness.lost(seen)


def test_a_small_lag_is_noise() -> None:
    clock, liveness = make()
    seen = clock.monotonic()
    clock.advance(1.0)
    liveness.woke(late=STALL_S)
    assert liveness.silence(seen) == 1.0


def test_a_probe_back_late_makes_its_way_blind() -> None:
    clock, liveness = make()
    seen = clock.monotonic()
    nonce = liveness.probe("m")
    clock.advance(10.0)  # heartbeats and the probe queued behind a flood
    liveness.probe_back(nonce)
    assert liveness.silence(seen) == 0.0
    assert not liveness.lost(seen)
    clock.advance(1.25)
    assert not liveness.lost(seen)
    clock.advance(0.01)
    assert liveness.lost(seen)


def test_silence_does_not_count_while_a_probe_is_awaited() -> None:
    clock, liveness = make()
    seen = clock.monotonic()
    liveness.probe("m")
    for _ in range(40):  # 10 s of sweeps, none of the probes back
        clock.advance(0.25)
        liveness.probe("m")
    assert liveness.silence(seen) == 0.0
    assert not liveness.lost(seen)


def test_a_probe_back_means_the_earlier_ones_were_dropped() -> None:
    clock, liveness = make()
    seen = clock.monotonic()
    liveness.probe("m")  # dropped by the broker
    clock.advance(0.25)
    second = liveness.probe("m")
    clock.advance(0.01)
    liveness.probe_back(second)
    clock.advance(1.0)
    liveness.probe("m")  # the dropped one no longer holds the manager deaf
    assert liveness.silence(seen) == pytest.approx(1.26 - 0.25)  # blind: first to second
    assert liveness.silence(seen) < liveness.deadline


def test_probes_of_others_and_from_before_an_outage_are_ignored() -> None:
    clock, liveness = make()
    seen = clock.monotonic()
    ours = liveness.probe("m")
    liveness.probe_back("standby-1")  # another manager's, on the same topic
    liveness.link_down()
    clock.advance(1.0)
    liveness.link_up([])
    clock.advance(RECONNECT_ALLOWANCE_S)
    liveness.probe_back(ours)  # sent before the outage: its span is the outage's
    assert liveness.silence(seen) == 0.0
    clock.advance(1.26)
    liveness.probe("m")
    assert liveness.lost(seen)


async def test_pause_measures_how_late_the_loop_woke() -> None:
    clock, liveness = make()
    seen = clock.monotonic()
    pause = asyncio.create_task(liveness.pause())
    await asyncio.sleep(0)  # the pause has taken its start time and sleeps
    clock.advance(3.0)  # meanwhile 3 s pass on the clock the manager judges by
    await pause
    assert liveness.silence(seen) == liveness.period


def test_a_will_counts_once_it_has_settled() -> None:
    clock, liveness = make()
    liveness.will("w1")
    assert liveness.settled_wills() == []
    clock.advance(liveness.period)
    assert liveness.settled_wills() == ["w1"]
    assert liveness.settled_wills() == []  # once


def test_a_will_just_before_the_managers_disconnection_is_left_to_silence() -> None:
    """Mosquitto publishes every client's will as it shuts down, then closes the manager's
    own connection: those wills say nothing about the members."""
    clock, liveness = make()
    liveness.will("w1")
    liveness.link_down()
    clock.advance(1.0)
    liveness.link_up(["w1"])
    clock.advance(liveness.period)
    assert liveness.settled_wills() == []


def test_a_will_while_catching_up_after_a_reconnect_is_left_to_silence() -> None:
    clock, liveness = make()
    liveness.link_down()
    liveness.link_up(["w1"])
    liveness.will("w1")  # queued for the manager's session while it was away
    clock.advance(liveness.period)
    assert liveness.settled_wills() == []


def test_a_member_heard_after_its_will_is_connected_again() -> None:
    clock, liveness = make()
    liveness.will("w1")
    liveness.heard("w1")
    clock.advance(liveness.period)
    assert liveness.settled_wills() == []


def test_forget_drops_what_was_pending() -> None:
    clock, liveness = make()
    liveness.link_down()
    liveness.link_up(["w1", "w2"])
    clock.advance(RECONNECT_ALLOWANCE_S)
    liveness.will("w1")
    liveness.forget("w1")
    clock.advance(liveness.period)
    assert liveness.settled_wills() == []
    assert liveness.resync == {"w2"}


def hello(session: str, active: list[str], epoch: str = "", seq: int = 0) -> Hello:
    return Hello(
        worker_id="w1",
        session=session,
        capabilities=Capabilities(),
        active=active,
        epoch=epoch,
        seq=seq,
    )


def test_a_member_back_after_a_reconnect_gets_what_it_never_received() -> None:
    tasks = {
        "held": Reservation(seq=3, session="s1"),
        "dropped": Reservation(seq=4, session="s1"),
        "recovered": Reservation(seq=0, session=""),
        "not-sent-yet": Reservation(seq=None, session=""),
    }
    verdict = judge_hello(tasks, "s1", hello("s1", ["held", "other"], "E", 9), "E")
    assert verdict == HelloVerdict(lost=[], resend=["dropped", "recovered"])


def test_a_new_process_of_the_member_lost_what_the_old_one_had() -> None:
    tasks = {
        "to-old-process": Reservation(seq=3, session="s1"),
        "seen-by-new": Reservation(seq=5, session=""),
        "held": Reservation(seq=2, session="s1"),
        "not-sent-yet": Reservation(seq=None, session=""),
    }
    verdict = judge_hello(tasks, "s1", hello("s2", ["held"], "E", 5), "E")
    assert verdict == HelloVerdict(lost=["to-old-process", "seen-by-new"], resend=[])


def test_a_command_sent_before_a_new_process_subscribed_is_sent_again() -> None:
    """After its own restart the manager sent tasks to a worker whose session it did not
    know yet; the worker's new process was not subscribed yet, so the broker dropped them.
    Its hello is the first word from it: they would never be judged otherwise."""
    tasks = {
        "dropped": Reservation(seq=1, session=""),
        "on-its-way": Reservation(seq=7, session=""),
        "ran-on-an-older-process": Reservation(seq=2, session=""),
    }
    fresh = hello("s2", [])  # a new process: no command from anyone yet
    verdict = judge_hello(tasks, "", fresh, "E", reported_running=["ran-on-an-older-process"])
    assert verdict == HelloVerdict(
        lost=["ran-on-an-older-process"], resend=["dropped", "on-its-way"]
    )
    seen_some = hello("s2", [], "E", 4)  # it got seq 4, not 1: 1 went to an older process
    verdict = judge_hello(tasks, "", seen_some, "E")
    assert verdict == HelloVerdict(
        lost=["dropped", "ran-on-an-older-process"], resend=["on-its-way"]
    )


def test_after_the_managers_restart_a_command_that_never_left_is_sent_again() -> None:
    """The manager stored ``scheduled`` and died before sending: the member, the same
    process as before (it reports commands of the earlier manager), never had it."""
    tasks = {
        "never-sent": Reservation(seq=0, session=""),
        "was-running": Reservation(seq=0, session=""),
        "held": Reservation(seq=0, session=""),
    }
    same_process = hello("s1", ["held"], epoch="E-before", seq=40)
    verdict = judge_hello(tasks, "", same_process, "E-now", reported_running=["was-running"])
    assert verdict == HelloVerdict(lost=["was-running"], resend=["never-sent"])
    # a member process started since (no command from any manager yet) lost them all
    restarted = hello("s2", ["held"])
    verdict = judge_hello(tasks, "", restarted, "E-now", reported_running=["was-running"])
    assert verdict == HelloVerdict(lost=["never-sent", "was-running"], resend=[])


operations = st.lists(
    st.tuples(
        st.sampled_from(["stall", "down", "up", "probe", "back"]),
        st.floats(min_value=0, max_value=8, allow_nan=False),  # time before it
        st.floats(min_value=0, max_value=3, allow_nan=False),  # a stall's length
    ),
    max_size=16,
)


@given(operations, st.floats(min_value=0, max_value=60, allow_nan=False))
def test_silence_is_the_time_the_manager_could_hear(ops: object, seen: float) -> None:
    """Whatever the outages (also still going on), stalls (also during an outage) and
    probes late, dropped or awaited, silence = elapsed time minus the union of blind spans
    since ``seen``."""
    assert isinstance(ops, list)
    clock = ManualClock()
    liveness = Liveness(clock, heartbeat_s=BEAT, missed_beats=3)
    blind: list[tuple[float, float]] = []
    down_since: float | None = None
    probes: list[tuple[str, float]] = []  # awaited, oldest first
    for kind, gap, length in ops:
        clock.advance(gap)
        now = clock.monotonic()
        if kind == "stall":
            clock.advance(length)
            if length > STALL_S:
                blind.append((now, now + length))
            liveness.woke(late=length)
        elif kind == "probe":
            if probes and now - probes[0][1] > STALL_S:
                blind.append((probes[0][1], now))
            probes.append((liveness.probe("m"), now))
        elif kind == "back":
            if probes:  # the middle one back: those before it were dropped
                index = len(probes) // 2
                nonce, sent = probes[index]
                del probes[: index + 1]
                if now - sent > STALL_S:
                    blind.append((sent, now))
                liveness.probe_back(nonce)
        elif kind == "down":
            probes.clear()
            down_since = now if down_since is None else down_since
            liveness.link_down()
        else:
            blind.append((now if down_since is None else down_since, now + RECONNECT_ALLOWANCE_S))
            down_since = None
            liveness.link_up([])
    now = clock.monotonic()
    if down_since is not None:
        blind.append((down_since, now))
    seen = min(seen, now)
    covered: list[tuple[float, float]] = []
    for start, end in sorted((max(s, seen), min(e, now)) for s, e in blind):
        if end <= start:
            continue
        if covered and start <= covered[-1][1]:
            covered[-1] = (covered[-1][0], max(covered[-1][1], end))
        else:
            covered.append((start, end))
    expected = now - seen - sum(e - s for s, e in covered)
    silence = liveness.silence(seen)
    assert 0 <= silence <= now - seen + 1e-9
    assert abs(silence - expected) < 1e-6
