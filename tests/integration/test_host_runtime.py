"""The host runtime with real processes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from edgeplane.errors import TaskFailure
from edgeplane.model import Limits
from edgeplane.protocol import Assignment
from edgeplane.runtimes import MAX_LOG_CHARS, HostRuntime, Outcome, available_runtimes

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[HostRuntime]:
    rt = HostRuntime(base_dir=tmp_path / "host", grace_s=0.5)
    yield rt
    await rt.close()


def task(
    command: list[str] | None,
    *,
    task_id: str = "t1",
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Assignment:
    return Assignment(
        task_id=task_id,
        attempt=1,
        runtime="host",
        name="cmd",
        command=command,
        env=env or {},
        limits=Limits(timeout_s=timeout),
    )


async def run(rt: HostRuntime, spec: Assignment) -> Outcome:
    return await rt.wait(await rt.start(spec, None))


def live_members(pgid: int) -> list[int]:
    """Pids of the group's processes that are not zombies, found independently of the runtime."""
    pids = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
        except OSError:
            continue
    return pids


async def test_echo(runtime: HostRuntime) -> None:
    outcome = await run(runtime, task(["echo", "hi", "there"]))
    assert outcome.state == "completed"
    assert outcome.results == {"stdout": "hi there\n", "exit_code": 0}
    assert outcome.exit_code == 0


async def test_env_is_the_workers_plus_the_tasks(runtime: HostRuntime) -> None:
    outcome = await run(runtime, task(["sh", "-c", 'echo "$FOO|$PATH"'], env={"FOO": "bar baz"}))
    foo, path = outcome.stdout.strip().split("|")
    assert foo == "bar baz"
    assert path == os.environ["PATH"]


async def test_cwd_is_a_fresh_scratch_dir_removed_afterwards(
    runtime: HostRuntime, tmp_path: Path
) -> None:
    outcome = await run(runtime, task(["sh", "-c", "pwd; ls -A | wc -l"]))
    cwd, entries = outcome.stdout.split()
    assert Path(cwd).is_relative_to(tmp_path / "host")
    assert entries == "0"
    assert os.listdir(tmp_path / "host") == []


async def test_non_zero_exit_fails_with_logs(runtime: HostRuntime) -> None:
    outcome = await run(runtime, task(["sh", "-c", "echo out; echo err >&2; exit 3"]))
    assert outcome.state == "failed"
    assert outcome.error == "exit code 3"
    assert outcome.results == {"stdout": "out\n", "exit_code": 3}
    assert outcome.stderr == "err\n"


async def test_missing_executable_is_a_failed_outcome(runtime: HostRuntime) -> None:
    outcome = await run(runtime, task(["/nonexistent/edgeplane-test-binary"]))
    assert outcome.state == "failed"
    assert outcome.error is not None
    assert "cannot run '/nonexistent/edgeplane-test-binary'" in outcome.error


@pytest.mark.parametrize("command", [None, []])
async def test_no_command_raises(runtime: HostRuntime, command: list[str] | None) -> None:
    with pytest.raises(TaskFailure) as info:
        await runtime.start(task(command), None)
    assert info.value.field == "command"


async def test_long_output_keeps_the_tail(runtime: HostRuntime) -> None:
    script = "head -c 200000 /dev/zero | tr '\\0' x; echo; echo END"
    outcome = await run(runtime, task(["sh", "-c", script]))
    assert len(outcome.stdout) == MAX_LOG_CHARS
    assert outcome.stdout.endswith("x\nEND\n")


async def test_timeout_kills_the_whole_group(runtime: HostRuntime) -> None:
    handle = await runtime.start(task(["sh", "-c", "sleep 30 & sleep 30"], timeout=0.3), None)
    pgid = handle.state["pgid"]
    outcome = await runtime.wait(handle)
    assert outcome.state == "failed"
    assert outcome.error == "timeout after 0.3s"
    assert live_members(pgid) == []


async def test_stop_kills_the_whole_group(runtime: HostRuntime) -> None:
    handle = await runtime.start(task(["sh", "-c", "sleep 30 & sleep 30"]), None)
    pgid = handle.state["pgid"]
    await runtime.stop(handle)
    assert live_members(pgid) == []
    assert (await runtime.wait(handle)).state == "cancelled"


async def test_processes_left_behind_are_killed(runtime: HostRuntime) -> None:
    handle = await runtime.start(task(["sh", "-c", "sleep 30 & echo started"]), None)
    outcome = await runtime.wait(handle)
    assert outcome.state == "completed"
    assert outcome.stdout == "started\n"
    assert live_members(handle.state["pgid"]) == []


async def test_stats_sum_the_group(runtime: HostRuntime) -> None:
    handle = await runtime.start(task(["sh", "-c", "sleep 30 & sleep 30"]), None)
    for _ in range(1000):  # until both sleeps run
        if len(live_members(handle.state["pgid"])) >= 2:
            break
        await asyncio.sleep(0.01)
    stats = await runtime.stats(handle)
    assert stats["processes"] == len(live_members(handle.state["pgid"]))
    assert stats["rss_mb"] > 0
    assert stats["cpu_percent"] >= 0
    await runtime.stop(handle)


async def test_recover_reattaches_and_can_stop(tmp_path: Path) -> None:
    first = HostRuntime(base_dir=tmp_path / "host", grace_s=0.5)
    second = HostRuntime(base_dir=tmp_path / "host", grace_s=0.5, poll_s=0.05)
    try:
        started = await first.start(task(["sh", "-c", "echo up; sleep 30"]), None)
        recovered = await second.recover(started.state)
        assert recovered is not None
        assert second.inspect(recovered)["running"] is True
        await second.stop(recovered)
        outcome = await second.wait(recovered)
        assert outcome.state == "cancelled"
        assert live_members(started.state["pgid"]) == []
        assert (await first.wait(started)).state == "failed"  # killed under its feet
    finally:
        await first.close()
        await second.close()


async def test_recover_of_an_ended_attempt_cleans_up(runtime: HostRuntime, tmp_path: Path) -> None:
    handle = await runtime.start(task(["true"]), None)
    await runtime.wait(handle)
    leftover = tmp_path / "host" / "leftover"
    leftover.mkdir()
    state = {**handle.state, "dir": str(leftover)}
    assert await runtime.recover(state) is None
    assert not leftover.exists()


async def test_recovered_attempt_that_ends_by_itself(tmp_path: Path) -> None:
    first = HostRuntime(base_dir=tmp_path / "host")
    second = HostRuntime(base_dir=tmp_path / "host", poll_s=0.05)
    try:
        started = await first.start(task(["sh", "-c", "echo up; sleep 0.5"]), None)
        recovered = await second.recover(started.state)
        assert recovered is not None
        assert (await first.wait(started)).state == "completed"
        outcome = await second.wait(recovered)
        assert outcome.state == "failed"
        assert outcome.error is not None
        assert "exit status unknown" in outcome.error
    finally:
        await first.close()
        await second.close()


async def test_available_runtimes(tmp_path: Path) -> None:
    without = available_runtimes(allow_host=False, cache_dir=None)
    with_host = available_runtimes(allow_host=True, cache_dir=tmp_path)
    try:
        assert set(without) == {"wasm"}
        assert set(with_host) == {"wasm", "host"}
    finally:
        for rt in [*without.values(), *with_host.values()]:
            await rt.close()
