"""The change queue's pure core: after a failure at any point, or a crash at any point
followed by a restart, the node's state is what it was before the change (or what it is
after it, when the change had passed its point of no return)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.chutes.changes import Change, ChangeQueue, Step, execute


class Boom(Exception):
    pass


class Crash(BaseException):
    """A worker killed mid-step: nothing after it runs."""


def plan(
    node: dict[str, int],
    n: int,
    fail_at: int | None,
    crash_at: int | None = None,
    half: bool = False,
) -> list[Step]:
    """n steps each setting node[k]; the failing one sets half of its change first."""
    steps = []
    for i in range(n):
        key = f"k{i % 3}"

        def do(i: int = i, key: str = key) -> Any:
            async def run() -> None:
                if half or i in (fail_at, crash_at):
                    node[f"half{i}"] = 1  # a step that half happened
                if i == crash_at:
                    raise Crash
                if i == fail_at:
                    raise Boom(f"step {i}")
                node.pop(f"half{i}", None)
                node[key] = node.get(key, 0) + i + 1

            return run

        def undo(i: int = i, key: str = key) -> Any:
            async def run() -> None:
                if node.pop(f"half{i}", None) is not None:
                    return  # the do never got past its first half
                node[key] -= i + 1
                if node[key] == 0:
                    del node[key]

            return run

        steps.append(Step(f"s{i}", do(), undo()))
    return steps


async def nothing() -> None:
    return None


@settings(max_examples=200, deadline=None)
@given(
    before=st.dictionaries(st.sampled_from(["k0", "k1", "k2", "x"]), st.integers(1, 9)),
    n=st.integers(1, 8),
    data=st.data(),
)
def test_a_failing_step_leaves_the_node_as_before(
    before: dict[str, int], n: int, data: Any
) -> None:
    fail_at = data.draw(st.integers(0, n - 1))
    node = dict(before)
    change = Change(id="c", seq=1, kind="k", chute="x")
    asyncio.run(execute(change, plan(node, n, fail_at), nothing))
    assert node == before
    assert change.state == "rolled_back"
    assert change.steps[fail_at].state == "failed"
    assert all(r.state == "undone" for r in change.steps[:fail_at])
    assert all(r.state == "pending" for r in change.steps[fail_at + 1 :])


@settings(max_examples=100, deadline=None)
@given(
    before=st.dictionaries(st.sampled_from(["k0", "k1"]), st.integers(1, 9)), n=st.integers(1, 6)
)
def test_a_change_without_failure_applies_every_step(before: dict[str, int], n: int) -> None:
    node = dict(before)
    change = Change(id="c", seq=1, kind="k", chute="x")
    asyncio.run(execute(change, plan(node, n, None), nothing))
    assert change.state == "done"
    expected = dict(before)
    for i in range(n):
        expected[f"k{i % 3}"] = expected.get(f"k{i % 3}", 0) + i + 1
    assert node == expected


@settings(max_examples=60, deadline=None)
@given(before=st.dictionaries(st.sampled_from(["k0", "k1"]), st.integers(1, 9)), data=st.data())
def test_a_crash_anywhere_is_rolled_back_from_the_journal(
    tmp_path_factory: pytest.TempPathFactory, before: dict[str, int], data: Any
) -> None:
    n = data.draw(st.integers(1, 6))
    crash_at = data.draw(st.integers(0, n - 1))
    directory = tmp_path_factory.mktemp("journal")
    node = dict(before)

    async def first_life() -> None:
        queue = ChangeQueue(directory, lambda c: plan(node, n, None, crash_at))
        directory.mkdir(exist_ok=True)  # no start: this test is the runner
        change = await queue.submit("k", "x")
        with pytest.raises(Crash):
            await queue._run(change, resume=False)  # the crash kills the runner
        await queue.close()

    async def second_life() -> Change:
        queue = ChangeQueue(directory, lambda c: plan(node, n, None))
        await queue.start()
        found = next(iter(queue._changes.values()))
        await queue.close()
        return found

    asyncio.run(first_life())
    change = asyncio.run(second_life())
    assert change.state == "rolled_back"
    assert node == before


def test_past_a_point_of_no_return_a_crash_rolls_forward(tmp_path: Path) -> None:
    node: dict[str, int] = {}
    crash = {"at": True}

    def planner(change: Change) -> list[Step]:
        async def mark() -> None:
            node["a"] = 1

        async def unmark() -> None:
            node.pop("a", None)

        async def remove() -> None:
            if crash["at"]:
                crash["at"] = False
                raise Crash
            node["gone"] = 1

        return [Step("mark", mark, unmark), Step("remove", remove, None)]

    async def lives() -> Change:
        queue = ChangeQueue(tmp_path, planner)  # no start: this test is the runner
        change = await queue.submit("delete", "x")
        with pytest.raises(Crash):
            await queue._run(change, resume=False)
        await queue.close()
        queue = ChangeQueue(tmp_path, planner)
        await queue.start()
        found = queue.get(change.id)
        await queue.close()
        return found

    change = asyncio.run(lives())
    assert change.state == "done"
    assert node == {"a": 1, "gone": 1}


def test_changes_run_one_at_a_time_in_order(tmp_path: Path) -> None:
    seen: list[str] = []

    def planner(change: Change) -> list[Step]:
        async def one() -> None:
            seen.append(f"{change.chute}-start")
            await asyncio.sleep(0)
            seen.append(f"{change.chute}-end")

        return [Step("one", one, None)]

    async def run() -> None:
        queue = ChangeQueue(tmp_path, planner)
        await queue.start()
        ids = [(await queue.submit("k", str(i))).id for i in range(5)]
        for change_id in ids:
            assert (await asyncio.wait_for(queue.wait(change_id), 10)).state == "done"
        events = [e async for e in queue.follow(ids[0])]
        assert events[-1]["state"] == "done"
        await queue.close()

    asyncio.run(run())
    assert seen == [f"{i}-{e}" for i in range(5) for e in ("start", "end")]
