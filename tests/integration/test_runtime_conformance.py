"""One conformance suite for every runtime (DESIGN §6.2): wasm, host, container and fake.

Each runtime brings a kit of four kinds of task: one that completes with known results,
one that fails, one that runs until stopped or timed out, and one whose spec is bad
(``start`` must raise :class:`TaskFailure`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgeplane.errors import NotFound, TaskFailure
from edgeplane.model import Limits
from edgeplane.runtimes import (
    ContainerRuntime,
    FakeRuntime,
    Handle,
    HostRuntime,
    RunSpec,
    Runtime,
    WasmRuntime,
)
from edgeplane.runtimes.supervised import NEVER_RAN, SupervisedRuntime
from oci_fixtures import busybox_containers_unavailable, images_with_busybox
from wasm_fixtures import digest, math_wasm

pytestmark = pytest.mark.timeout(30)

Task = tuple[RunSpec, bytes | None]


@dataclass(frozen=True)
class Kit:
    runtime: Runtime
    ok: Callable[[str], Task]
    expected: Any
    fail: Callable[[str], Task]
    sleep: Callable[[str, float | None], Task]
    bad: Callable[[str], Task]
    #: a new runtime as the worker would make it after a restart
    again: Callable[[], Runtime]


def _wasm_kit(tmp: Path) -> Kit:
    module = math_wasm()

    def task(task_id: str, export: str, inputs: list[Any], timeout: float | None = None) -> Task:
        spec = RunSpec(
            task_id=task_id,
            attempt=1,
            runtime="wasm",
            name=export,
            entrypoint=export,
            artifact=digest(module),
            inputs=inputs,
            limits=Limits(timeout_s=timeout),
        )
        return spec, module

    return Kit(
        runtime=WasmRuntime(cache_dir=tmp / "wasm"),
        again=lambda: WasmRuntime(cache_dir=tmp / "wasm"),
        ok=lambda tid: task(tid, "add", [2, 3]),
        expected=[5],
        fail=lambda tid: task(tid, "trap", []),
        sleep=lambda tid, timeout: task(tid, "spin", [], timeout),
        bad=lambda tid: task(tid, "missing", []),
    )


def _host_kit(tmp: Path) -> Kit:
    def task(task_id: str, command: list[str] | None, timeout: float | None = None) -> Task:
        spec = RunSpec(
            task_id=task_id,
            attempt=1,
            runtime="host",
            name="cmd",
            command=command,
            limits=Limits(timeout_s=timeout),
        )
        return spec, None

    return Kit(
        runtime=HostRuntime(base_dir=tmp / "host", grace_s=0.5),
        again=lambda: HostRuntime(base_dir=tmp / "host", grace_s=0.5, poll_s=0.05),
        ok=lambda tid: task(tid, ["sh", "-c", "echo hello"]),
        expected={"stdout": "hello\n", "exit_code": 0},
        fail=lambda tid: task(tid, ["sh", "-c", "exit 3"]),
        sleep=lambda tid, timeout: task(tid, ["sleep", "30"], timeout),
        bad=lambda tid: task(tid, []),
    )


def _container_kit(tmp: Path) -> Kit:
    def task(
        task_id: str, command: list[str], timeout: float | None = None, image: str = "busybox"
    ) -> Task:
        spec = RunSpec(
            task_id=task_id,
            attempt=1,
            runtime="container",
            name="cmd",
            image=image,
            command=command,
            limits=Limits(timeout_s=timeout),
        )
        return spec, None

    images = images_with_busybox(tmp / "images")
    return Kit(
        runtime=ContainerRuntime(tmp / "worker", images, grace_s=0.3),
        again=lambda: ContainerRuntime(tmp / "worker", images, grace_s=0.3, poll_s=0.05),
        ok=lambda tid: task(tid, ["sh", "-c", "echo hello"]),
        expected={"stdout": "hello\n", "exit_code": 0},
        fail=lambda tid: task(tid, ["sh", "-c", "exit 3"]),
        sleep=lambda tid, timeout: task(tid, ["sleep", "30"], timeout),
        bad=lambda tid: task(tid, ["true"], image="../busybox"),
    )


def _fake_kit(tmp: Path) -> Kit:
    def task(task_id: str, name: str, timeout: float | None = None) -> Task:
        spec = RunSpec(
            task_id=task_id,
            attempt=1,
            runtime="fake",
            name=name,
            inputs=[1, "a"],
            limits=Limits(timeout_s=timeout),
        )
        return spec, None

    return Kit(
        runtime=FakeRuntime(),
        again=FakeRuntime,
        ok=lambda tid: task(tid, "echo"),
        expected=[1, "a"],
        fail=lambda tid: task(tid, "fail"),
        sleep=lambda tid, timeout: task(tid, "sleep", timeout),
        bad=lambda tid: task(tid, "invalid"),
    )


KITS = {"wasm": _wasm_kit, "host": _host_kit, "container": _container_kit, "fake": _fake_kit}


@pytest.fixture(params=sorted(KITS))
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Kit]:
    if request.param == "container" and (why := busybox_containers_unavailable()) is not None:
        pytest.skip(why)
    made = KITS[request.param](tmp_path)
    yield made
    await made.runtime.close()


async def run(kit: Kit, task: Task) -> tuple[Handle, Any]:
    handle = await kit.runtime.start(*task)
    return handle, await kit.runtime.wait(handle)


async def test_fingerprint_describes_the_runtime(kit: Kit) -> None:
    assert isinstance(kit.runtime.fingerprint(), dict)


async def test_completed_with_results(kit: Kit) -> None:
    handle, outcome = await run(kit, kit.ok("t1"))
    assert (handle.task_id, handle.attempt, handle.runtime) == ("t1", 1, kit.runtime.name)
    assert outcome.state == "completed", outcome
    assert outcome.results == kit.expected
    assert outcome.error is None


async def test_failure_is_an_outcome_with_an_error(kit: Kit) -> None:
    _, outcome = await run(kit, kit.fail("t1"))
    assert outcome.state == "failed"
    assert outcome.error


async def test_bad_spec_raises_task_failure(kit: Kit) -> None:
    with pytest.raises(TaskFailure):
        await kit.runtime.start(*kit.bad("t1"))


async def test_timeout_fails_the_attempt(kit: Kit) -> None:
    _, outcome = await run(kit, kit.sleep("t1", 0.3))
    assert outcome.state == "failed"
    assert outcome.error is not None
    assert "timeout" in outcome.error


async def test_stop_cancels_and_inspect_tracks_running(kit: Kit) -> None:
    handle = await kit.runtime.start(*kit.sleep("t1", None))
    assert kit.runtime.inspect(handle)["running"] is True
    await kit.runtime.stop(handle)
    assert kit.runtime.inspect(handle)["running"] is False
    outcome = await kit.runtime.wait(handle)
    assert outcome.state == "cancelled"


async def test_stop_is_idempotent(kit: Kit) -> None:
    handle = await kit.runtime.start(*kit.sleep("t1", None))
    await kit.runtime.stop(handle)
    await kit.runtime.stop(handle)
    assert (await kit.runtime.wait(handle)).state == "cancelled"
    await kit.runtime.stop(handle)

    done, outcome = await run(kit, kit.ok("t2"))
    assert outcome.state == "completed", outcome
    await kit.runtime.stop(done)


async def test_stats_while_running(kit: Kit) -> None:
    handle = await kit.runtime.start(*kit.sleep("t1", None))
    stats = await kit.runtime.stats(handle)
    assert isinstance(stats, dict)
    assert all(isinstance(value, float) for value in stats.values())
    await kit.runtime.stop(handle)
    await kit.runtime.wait(handle)


async def test_wait_on_unknown_handle_raises_not_found(kit: Kit) -> None:
    with pytest.raises(NotFound):
        await kit.runtime.wait(Handle("nope", 1, kit.runtime.name))
    assert kit.runtime.inspect(Handle("nope", 1, kit.runtime.name)) == {"running": False}


async def test_recover_of_nothing_is_none(kit: Kit) -> None:
    assert await kit.runtime.recover({}) is None


#: What a worker before RunSpec wrote as its handle's ``spec``: a whole MQTT Assignment,
#: with the fields a runtime has no use for (module bytes, the root's scheduling hints).
OLDER_SPEC_FIELDS = {
    "artifact_b64": None,
    "retries": 2,
    "priority": 70,
    "constraints": {"labels": {"zone": "a"}, "tee": "any", "clusters": []},
    "metadata": {"owner": "ops"},
    "pinned_worker": "w1",
}


@pytest.mark.parametrize("written_by", ["this version", "an older version"])
async def test_a_restarted_worker_takes_back_what_outlives_it(kit: Kit, written_by: str) -> None:
    """A recoverable runtime's attempt is re-attached to from its handle's state alone, by
    a new runtime (a restarted worker's), also when an older version wrote that state;
    the others have nothing to take back."""
    handle = await kit.runtime.start(*kit.sleep("t1", None))
    state = json.loads(json.dumps(handle.state))  # as the worker keeps it on disk
    if written_by == "an older version" and "spec" in state:
        state["spec"] |= OLDER_SPEC_FIELDS
    again = kit.again()
    try:
        recovered = await again.recover(state)
        if not kit.runtime.recoverable:
            assert recovered is None
            return
        assert recovered is not None
        assert (recovered.task_id, recovered.attempt, recovered.runtime) == ("t1", 1, again.name)
        assert again.inspect(recovered)["running"] is True
        await again.stop(recovered)
        assert (await again.wait(recovered)).state == "cancelled"
    finally:
        await again.close()
        await kit.runtime.stop(handle)
    assert (await kit.runtime.wait(handle)).state in {"failed", "cancelled"}


async def test_several_tasks_at_once(kit: Kit) -> None:
    sleeper = await kit.runtime.start(*kit.sleep("sleeper", None))
    handles = [await kit.runtime.start(*kit.ok(f"t{i}")) for i in range(8)]
    failing = await kit.runtime.start(*kit.fail("failing"))
    outcomes = await asyncio.gather(*(kit.runtime.wait(h) for h in handles))
    assert [o.state for o in outcomes] == ["completed"] * 8
    assert all(o.results == kit.expected for o in outcomes)
    assert (await kit.runtime.wait(failing)).state == "failed"
    assert kit.runtime.inspect(sleeper)["running"] is True
    await kit.runtime.stop(sleeper)
    assert (await kit.runtime.wait(sleeper)).state == "cancelled"


async def test_close_cancels_what_still_runs(kit: Kit) -> None:
    handle = await kit.runtime.start(*kit.sleep("t1", None))
    await kit.runtime.close()
    assert kit.runtime.inspect(handle)["running"] is False


async def test_release_forgets_an_ended_attempt(kit: Kit) -> None:
    handle, outcome = await run(kit, kit.ok("t1"))
    assert outcome.state == "completed", outcome
    assert (await kit.runtime.wait(handle)).results == kit.expected  # kept until released
    await kit.runtime.release(handle)
    with pytest.raises(NotFound):
        await kit.runtime.wait(handle)
    assert kit.runtime.inspect(handle) == {"running": False}
    await kit.runtime.release(handle)  # idempotent
    await kit.runtime.release(Handle("nope", 1, kit.runtime.name, {"dir": "/", "bundle": "/"}))


async def test_release_leaves_a_running_attempt_alone(kit: Kit) -> None:
    handle = await kit.runtime.start(*kit.sleep("t1", None))
    await kit.runtime.release(handle)
    assert kit.runtime.inspect(handle)["running"] is True
    await kit.runtime.stop(handle)
    assert (await kit.runtime.wait(handle)).state == "cancelled"
    await kit.runtime.release(handle)


@pytest.mark.parametrize("released_by", ["the same runtime", "a restarted worker's"])
async def test_an_ended_attempt_can_be_recovered_until_it_is_released(
    kit: Kit, released_by: str
) -> None:
    """A worker killed after an attempt ended but before it saved the final event still
    learns the real outcome after its restart: the runtime keeps what ``recover`` needs
    until the worker releases the attempt, also from its state alone."""
    handle, outcome = await run(kit, kit.ok("t1"))
    assert outcome.state == "completed", outcome
    state = json.loads(json.dumps(handle.state))  # as the worker keeps it on disk
    again = kit.again()
    try:
        recovered = await again.recover(state)
        if not kit.runtime.recoverable:
            assert recovered is None
            return
        assert recovered is not None
        ended = await again.wait(recovered)
        assert (ended.state, ended.results) == ("completed", kit.expected)
        if released_by == "the same runtime":
            await kit.runtime.release(handle)
        else:
            later = kit.again()  # a third process: it knows the attempt by its state only
            await later.release(Handle("t1", 1, later.name, state))
            await later.close()
            await kit.runtime.release(handle)
        assert await again.recover(state) is None
        await again.release(recovered)
    finally:
        await again.close()


async def test_a_held_attempt_runs_once_it_begins(kit: Kit) -> None:
    """``start_held`` then ``begin`` is ``start``: the worker saves the handle between."""
    handle = await kit.runtime.start_held(*kit.ok("t1"))
    await kit.runtime.begin(handle)
    await kit.runtime.begin(handle)  # idempotent
    outcome = await kit.runtime.wait(handle)
    assert (outcome.state, outcome.results) == ("completed", kit.expected)


async def test_a_held_attempt_stopped_before_it_begins_is_cancelled(kit: Kit) -> None:
    handle = await kit.runtime.start_held(*kit.sleep("t1", None))
    await kit.runtime.stop(handle)
    await kit.runtime.begin(handle)  # too late: nothing runs
    assert (await kit.runtime.wait(handle)).state == "cancelled"


async def test_a_held_attempt_whose_worker_died_never_runs(kit: Kit) -> None:
    """A worker that dies between ``start_held`` and ``begin`` (its end of the gate is
    closed, as the kernel closes a killed process's files) leaves an attempt whose command
    never runs; a restarted worker recovers it as such (failed, transient: tried again).
    Wasm and fake attempts run in the worker's process: they die with it, so there is
    nothing to hold back nor to recover."""
    handle = await kit.runtime.start_held(*kit.ok("t1"))
    state = json.loads(json.dumps(handle.state))
    if not isinstance(kit.runtime, SupervisedRuntime):
        assert not kit.runtime.recoverable
        await kit.runtime.begin(handle)
        assert await kit.again().recover(state) is None
        return
    kit.runtime._attempts[("t1", 1)].close_gate(go=False)  # the worker's death, for its gate
    ended = await kit.runtime.wait(handle)
    assert (ended.state, ended.error, ended.transient) == ("failed", NEVER_RAN, True)
    assert ended.stdout == ""
    again = kit.again()
    try:
        recovered = await again.recover(state)
        assert recovered is not None
        ended = await again.wait(recovered)
        assert (ended.state, ended.error, ended.transient) == ("failed", NEVER_RAN, True)
    finally:
        await again.close()


async def test_release_of_an_intent_removes_what_never_ran(kit: Kit) -> None:
    """A worker killed before its ``start_held`` returned has only an intent (no state):
    releasing that removes what the runtime left of the attempt whose command never ran,
    and nothing of another attempt."""
    other = await kit.runtime.start(*kit.ok("t1-1"))  # a name the first one's begins
    handle = await kit.runtime.start_held(*kit.ok("t1"))
    if isinstance(kit.runtime, SupervisedRuntime):
        kit.runtime._attempts[("t1", 1)].close_gate(go=False)
    else:
        await kit.runtime.begin(handle)
    await kit.runtime.wait(handle)
    await kit.runtime.wait(other)
    again = kit.again()
    await again.release(Handle("t1", 1, again.name, {}))
    await again.close()
    for key, named in (("t1", handle), ("t1-1", other)):
        left = named.state.get("dir") or named.state.get("bundle")
        if left is not None:
            assert await asyncio.to_thread(Path(left).exists) is (key == "t1-1")
