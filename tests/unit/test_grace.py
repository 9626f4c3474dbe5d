"""The grace period of a lost worker's re-attachable tasks (manager/grace.py), on an
explicit clock: which tasks are lost at once, which wait, and when the wait ends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeplane.config import Settings, load
from edgeplane.manager.grace import REATTACHABLE, Grace, grace_s, surplus
from edgeplane.model import Task
from edgeplane.runtimes import ContainerRuntime, FakeRuntime, HostRuntime, WasmRuntime

TASKS = {
    "h": Task(id="h", runtime="host"),
    "c": Task(id="c", runtime="container"),
    "w": Task(id="w", runtime="wasm"),
}


def test_wasm_tasks_are_lost_at_once_host_and_container_ones_wait() -> None:
    grace = Grace(period_s=10)
    lost = grace.lose_now("w1", ["h", "c", "w", "gone"], TASKS, reason="worker w1 died", now=100)
    assert lost == ["w", "gone"]  # an id the manager no longer tracks holds nothing
    offline = [("w1", False, True)]
    assert grace.expired(offline, 109.9) == {}
    assert grace.expired(offline, 110) == {"w1": "worker w1 died; not back within 10 s"}
    assert grace.expired(offline, 200) == {}  # once


def test_nothing_waits_when_there_is_no_grace() -> None:
    grace = Grace(period_s=0)
    assert grace.lose_now("w1", ["h", "w"], TASKS, reason="r", now=0) == ["h", "w"]
    assert grace.expired([("w1", False, True)], 1000) == {}


def test_at_the_root_a_lost_cluster_keeps_every_task_through_the_grace() -> None:
    grace = Grace(period_s=10, hold_all=True, member="cluster")
    assert grace.lose_now("c1", ["h", "w", "gone"], TASKS, reason="c1 died", now=0) == ["gone"]
    assert grace.expired([("c1", False, True)], 9) == {}
    assert grace.expired([("c1", False, True)], 10) == {"c1": "c1 died; not back within 10 s"}


def test_a_worker_that_left_on_purpose_stopped_its_tasks_they_are_lost_at_once() -> None:
    grace = Grace(period_s=10)
    grace.lose_now("w1", ["h"], TASKS, reason="r", now=0)
    assert grace.lose_now("w1", ["h", "c"], TASKS, reason="left", now=1, leaving=True) == [
        "h",
        "c",
    ]
    assert grace.expired([("w1", False, True)], 1000) == {}  # and its earlier grace is over


def test_a_worker_back_online_keeps_its_tasks() -> None:
    grace = Grace(period_s=10)
    grace.lose_now("w1", ["h"], TASKS, reason="r", now=0)
    assert grace.expired([("w1", True, True)], 5) == {}  # back: forgotten
    # Offline again later: a new grace from then, not what was left of the first one.
    grace.lose_now("w1", ["h"], TASKS, reason="again", now=20)
    assert grace.expired([("w1", False, True)], 29) == {}
    assert grace.expired([("w1", False, True)], 30) == {"w1": "again; not back within 10 s"}


def test_a_worker_that_holds_nothing_any_more_is_forgotten() -> None:
    grace = Grace(period_s=10)
    grace.lose_now("w1", ["h"], TASKS, reason="r", now=0)
    assert grace.expired([("w1", False, False)], 5) == {}  # e.g. its task was cancelled
    assert grace.expired([("w1", False, True)], 11) == {}  # a fresh grace, not the old one


def test_a_deleted_worker_is_forgotten() -> None:
    grace = Grace(period_s=10)
    grace.lose_now("w1", ["h"], TASKS, reason="r", now=0)
    assert grace.expired([], 5) == {}
    # Registered again later and lost at once: a fresh grace, not the old one.
    assert grace.expired([("w1", False, True)], 11) == {}


def test_an_offline_worker_holding_tasks_after_a_manager_restart_gets_a_grace() -> None:
    grace = Grace(period_s=10, member="worker")
    assert grace.expired([("w1", False, True)], 50) == {}
    assert grace.expired([("w1", False, True)], 59) == {}
    assert grace.expired([("w1", False, True)], 60) == {
        "w1": "worker w1 was offline when the manager started; not back within 10 s"
    }


@given(
    lost_at=st.floats(min_value=0, max_value=1e6),
    period=st.floats(min_value=0.001, max_value=1e4),
    checks=st.lists(st.floats(min_value=0, max_value=2e4), max_size=20),
)
def test_tasks_are_never_released_before_the_grace_is_over(
    lost_at: float, period: float, checks: list[float]
) -> None:
    grace = Grace(period_s=period)
    grace.lose_now("w1", ["h"], TASKS, reason="r", now=lost_at)
    released = []
    for offset in sorted(checks):
        holds = not released  # the manager loses every task it held when released
        if grace.expired([("w1", False, holds)], lost_at + offset):
            released.append(offset)
    # (compared as the clock sees it: lost_at + offset may round up to lost_at + period)
    assert all(lost_at + offset >= lost_at + period for offset in released)
    assert len(released) <= 1


def test_surplus_is_what_a_member_runs_that_is_not_its_own() -> None:
    assert surplus(["a", "b", "c"], {"b": 1}) == ["a", "c"]
    assert surplus([], ["a"]) == []


def test_the_grace_defaults_to_the_liveness_window_and_is_configurable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EDGEPLANE_LOST_GRACE_S", raising=False)
    assert grace_s(Settings(heartbeat_s=2, missed_beats=4)) == 8
    assert grace_s(Settings(heartbeat_s=2, lost_grace_s=30)) == 30
    assert grace_s(Settings(lost_grace_s=0)) == 0
    monkeypatch.setenv("EDGEPLANE_LOST_GRACE_S", "45")
    assert grace_s(load({})) == 45


def test_reattachable_runtimes_are_the_recoverable_ones() -> None:
    """The control plane does not import the runtimes; this keeps its list in step."""
    runtimes = [HostRuntime, ContainerRuntime, WasmRuntime, FakeRuntime]
    assert {rt.name for rt in runtimes if rt.recoverable} == REATTACHABLE


def test_time_the_manager_could_not_hear_uses_up_no_grace() -> None:
    grace = Grace(period_s=10)
    grace.lose_now("w1", ["h"], TASKS, reason="r", now=0)
    offline = [("w1", False, True)]

    def deaf_from_2_to_8(since: float) -> float:  # (as Liveness.silence at now=15)
        return 15 - since - 6

    assert grace.expired(offline, 15, heard=deaf_from_2_to_8) == {}  # 9 s heard of 10
    assert grace.expired(offline, 15) == {"w1": "r; not back within 10 s"}
