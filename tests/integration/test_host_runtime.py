"""The host runtime with real processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from edgeplane.errors import TaskFailure
from edgeplane.model import Limits
from edgeplane.protocol import TaskEvent
from edgeplane.runtimes import MAX_LOG_CHARS, HostRuntime, Outcome, RunSpec, available_runtimes
from edgeplane.runtimes.supervised import process_alive
from edgeplane.runtimes.taskuser import lookup
from edgeplane.worker import WorkerAgent, WorkerOptions
from edgeplane.worker.handles import HandleRecord, HandleStore

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
) -> RunSpec:
    return RunSpec(
        task_id=task_id,
        attempt=1,
        runtime="host",
        name="cmd",
        command=command,
        env=env or {},
        limits=Limits(timeout_s=timeout),
    )


async def run(rt: HostRuntime, spec: RunSpec) -> Outcome:
    """Start, wait, and release as the worker does (the attempt's id may be used again)."""
    handle = await rt.start(spec, None)
    outcome = await rt.wait(handle)
    await rt.release(handle)
    return outcome


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


#: A worker that starts one host attempt, prints its handle's state and waits to be killed.
CRASHING_WORKER = """
import asyncio, json, os, sys
from pathlib import Path
from edgeplane.runtimes import HostRuntime, RunSpec
from edgeplane.runtimes.taskuser import lookup

async def main():
    user = lookup(os.environ["TASK_USER"]) if "TASK_USER" in os.environ else None
    rt = HostRuntime(base_dir=Path(sys.argv[1]), user=user)
    spec = RunSpec(task_id="t1", attempt=1, runtime="host", command=sys.argv[2:])
    handle = await rt.start(spec, None)
    print(json.dumps(handle.state), flush=True)
    await asyncio.Event().wait()  # until the test kills this process

asyncio.run(main())
"""


async def crashed_worker_state(
    base_dir: Path, *command: str, user: str | None = None
) -> dict[str, Any]:
    """Start ``command`` (as ``user``) in a worker process killed with SIGKILL at once:
    the state its handle had (the attempt runs on, orphaned)."""
    env = {**os.environ, **({"TASK_USER": user} if user else {})}
    crashing = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_WORKER, str(base_dir), *command,
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert crashing.stdout is not None
    state: dict[str, Any] = json.loads(await crashing.stdout.readline())
    crashing.kill()
    await crashing.wait()
    return state


async def until_gone(pid: int) -> None:
    while pid in live_members(pid):  # noqa: ASYNC110 - not our child: it can only be polled
        await asyncio.sleep(0.02)


async def test_an_attempt_that_ended_while_its_worker_was_down_reports_how(
    tmp_path: Path,
) -> None:
    """The attempt's shell wrote its exit status down: a worker restarted afterwards knows
    it completed (not "unknown"), reads its output and cleans up its directory."""
    go = tmp_path / "go"  # it ends only once its worker is dead
    script = f"while [ ! -e {go} ]; do sleep 0.02; done; echo done"
    state = await crashed_worker_state(tmp_path / "host", "sh", "-c", script)
    go.touch()
    await until_gone(state["pgid"])
    rt = HostRuntime(base_dir=tmp_path / "host", poll_s=0.05)
    try:
        recovered = await rt.recover(state)
        assert recovered is not None
        outcome = await rt.wait(recovered)
        assert (outcome.state, outcome.stdout, outcome.exit_code) == ("completed", "done\n", 0)
        # kept until the worker has saved the final event and releases the attempt
        assert await asyncio.to_thread(os.path.exists, state["dir"])
        await rt.release(recovered)
        assert not await asyncio.to_thread(os.path.exists, state["dir"])
        assert await rt.recover(state) is None  # nothing left of it now
    finally:
        await rt.close()


async def test_a_recovered_attempt_that_ends_by_itself_reports_its_exit_code(
    tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    script = f"echo up; while [ ! -e {go} ]; do sleep 0.02; done; exit 4"
    state = await crashed_worker_state(tmp_path / "host", "sh", "-c", script)
    rt = HostRuntime(base_dir=tmp_path / "host", poll_s=0.05)
    try:
        recovered = await rt.recover(state)
        assert recovered is not None
        assert rt.inspect(recovered)["running"] is True
        go.touch()
        outcome = await rt.wait(recovered)
        assert (outcome.state, outcome.error, outcome.exit_code) == ("failed", "exit code 4", 4)
        assert outcome.stdout == "up\n"
    finally:
        await rt.close()


async def test_recovered_attempt_without_an_exit_status(tmp_path: Path) -> None:
    """Its shell was killed too: how the command ended is unknown, and said so."""
    state = await crashed_worker_state(tmp_path / "host", "sleep", "30")
    os.killpg(state["pgid"], signal.SIGKILL)
    await until_gone(state["pgid"])
    rt = HostRuntime(base_dir=tmp_path / "host")
    try:
        recovered = await rt.recover(state)
        assert recovered is not None
        outcome = await rt.wait(recovered)
        assert outcome.state == "failed"
        assert outcome.error is not None
        assert "exit status unknown" in outcome.error
        await rt.release(recovered)
        assert not await asyncio.to_thread(os.path.exists, state["dir"])
    finally:
        await rt.close()


async def test_recover_of_nothing_left_kills_the_groups_leftovers(tmp_path: Path) -> None:
    go = tmp_path / "go"  # its main process ends only once its worker is dead
    script = f"sleep 30 & while [ ! -e {go} ]; do sleep 0.02; done"
    state = await crashed_worker_state(tmp_path / "host", "sh", "-c", script)
    go.touch()
    while process_alive(state["pid"], state["create_time"]):  # noqa: ASYNC110 - polled
        await asyncio.sleep(0.02)
    assert len(live_members(state["pgid"])) == 1  # the background sleep
    shutil.rmtree(state["dir"])
    rt = HostRuntime(base_dir=tmp_path / "host")
    try:
        assert await rt.recover(state) is None
        await until_gone(state["pgid"])  # the background sleep was killed
    finally:
        await rt.close()


@pytest.mark.parametrize(
    ("script", "error", "code"),
    [
        ("kill -KILL $$", "killed by signal SIGKILL", -9),
        ("exit 200", "exit code 200", 200),
    ],
)
async def test_exit_codes_through_the_shell(
    runtime: HostRuntime, script: str, error: str, code: int
) -> None:
    outcome = await run(runtime, task(["sh", "-c", script]))
    assert (outcome.state, outcome.error, outcome.exit_code) == ("failed", error, code)


@pytest.mark.parametrize(
    ("command", "why"),
    [
        (["no-such-command-edgeplane"], "No such file or directory"),
        (["./missing"], "No such file or directory"),
        (["{tmp}/plain"], "Permission denied"),
        (["{tmp}"], "Permission denied"),
    ],
)
async def test_what_cannot_be_executed_fails_with_the_reason(
    runtime: HostRuntime, tmp_path: Path, command: list[str], why: str
) -> None:
    (tmp_path / "plain").write_text("echo not executable\n")
    command = [command[0].format(tmp=tmp_path)]
    outcome = await run(runtime, task(command))
    assert outcome.state == "failed"
    assert outcome.error == f"cannot run {command[0]!r}: {why}"


async def test_available_runtimes(tmp_path: Path) -> None:
    without = available_runtimes(allow_host=False, cache_dir=None)
    with_host = available_runtimes(allow_host=True, cache_dir=tmp_path)
    try:
        assert set(without) == {"wasm"}
        assert set(with_host) == {"wasm", "host"}
    finally:
        for rt in [*without.values(), *with_host.values()]:
            await rt.close()


# --- another user (--host-user): needs root to switch -----------------------------------

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching user takes root")


@pytest.fixture
async def as_nobody(tmp_path: Path) -> AsyncIterator[HostRuntime]:
    user = lookup("nobody")
    assert user is not None
    rt = HostRuntime(base_dir=tmp_path / "host", grace_s=0.5, user=user)
    yield rt
    await rt.close()


@as_root
async def test_another_user_runs_the_task_without_the_workers_groups(
    as_nobody: HostRuntime,
) -> None:
    before = os.getgroups()
    os.setgroups([4, 27])  # supplementary groups the worker has and the task must not keep
    try:
        script = 'id -u; id -g; id -G; echo "$HOME|$USER|$LOGNAME"; pwd; touch mine && ls'
        outcome = await run(as_nobody, task(["sh", "-c", script]))
    finally:
        os.setgroups(before)
    user = as_nobody.user
    assert outcome.state == "completed", outcome
    assert outcome.stdout.split("\n")[:4] == [
        str(user.uid),
        str(user.gid),
        str(user.gid),
        f"{user.home}|nobody|nobody",
    ]
    assert outcome.stdout.split("\n")[4].endswith("/work")  # its own, writable work dir
    assert outcome.stdout.split("\n")[5] == "mine"


@as_root
async def test_another_user_cannot_read_or_swap_the_attempts_files(
    as_nobody: HostRuntime, tmp_path: Path
) -> None:
    """The worker reads ../stdout back as root: swapped for a link to a secret, it would
    print the secret as the task's output."""
    secret = tmp_path / "secret"
    secret.write_text("worker secret\n")
    secret.chmod(0o600)
    script = (
        "echo before; cat ../stdout ../exit; "
        f"ln -sf {secret} ../stdout || echo cannot swap >&2; "
        f"rm -f ../stdout 2>/dev/null || echo cannot remove >&2; cat {secret}; exit 0"
    )
    outcome = await run(as_nobody, task(["sh", "-c", script]))
    assert "worker secret" not in outcome.stdout + outcome.stderr
    assert outcome.stdout == "before\n"
    assert "cannot swap" in outcome.stderr and "cannot remove" in outcome.stderr
    assert outcome.stderr.count("Permission denied") >= 3, outcome.stderr
    assert (outcome.state, outcome.exit_code) == ("completed", 0)


@as_root
async def test_the_workers_edgeplane_variables_are_not_the_tasks(
    as_nobody: HostRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEPLANE_ADMIN_TOKEN", "admin-secret")
    monkeypatch.setenv("EDGEPLANE_JOIN_TOKEN", "join-secret")
    spec = task(["sh", "-c", "env"], env={"EDGEPLANE_MINE": "given"})
    outcome = await run(as_nobody, spec)
    assert "secret" not in outcome.stdout
    assert "EDGEPLANE_MINE=given" in outcome.stdout


@as_root
async def test_a_base_dir_others_may_write_to_is_refused(tmp_path: Path) -> None:
    user = lookup("nobody")
    base = tmp_path / "shared"
    base.mkdir()
    base.chmod(0o777)
    rt = HostRuntime(base_dir=base, user=user)
    with pytest.raises(TaskFailure) as refused:
        await rt.start(task(["true"]), None)
    assert refused.value.transient and "is not the worker's own directory" in refused.value.detail
    base.chmod(0o755)
    try:
        assert (await run(rt, task(["true"]))).state == "completed"
    finally:
        await rt.close()


@as_root
async def test_another_users_attempt_ended_while_its_worker_was_down_reports_how(
    tmp_path: Path,
) -> None:
    """The shell, running as the task's user, still records the exit status in the
    attempt's exit file: it opens it relative to its working directory, so the test's
    0700 directory above the attempt's is no obstacle."""
    user = lookup("nobody")
    assert user is not None
    shared = Path(tempfile.mkdtemp())  # outside the test's 0700 dir: nobody sees `go` there
    try:
        os.chmod(shared, 0o755)
        go = shared / "go"
        # (gone with the test's directory too: a failed test leaves no shell polling forever)
        script = f"id -u; while [ ! -e {go} ] && [ -d {shared} ]; do sleep 0.02; done; exit 4"
        state = await crashed_worker_state(tmp_path / "host", "sh", "-c", script, user="nobody")
        go.touch()
        await until_gone(state["pgid"])
        rt = HostRuntime(base_dir=tmp_path / "host", poll_s=0.05, user=user)
        try:
            recovered = await rt.recover(state)
            assert recovered is not None
            outcome = await rt.wait(recovered)
        finally:
            await rt.close()
        assert (outcome.state, outcome.exit_code, outcome.stdout) == ("failed", 4, f"{user.uid}\n")
    finally:
        shutil.rmtree(shared)


async def test_a_restarted_worker_releases_what_its_previous_process_saved(
    tmp_path: Path,
) -> None:
    """Killed after it saved an attempt's final event but before it released the attempt:
    the next process sends the event again and removes the attempt's directory."""
    first = HostRuntime(base_dir=tmp_path / "host")
    handle = await first.start(task(["echo", "hi"]), None)
    outcome = await first.wait(handle)  # ended; not released: the worker "died" here
    assert await asyncio.to_thread(os.path.exists, handle.state["dir"])
    data = tmp_path / "worker"
    final = TaskEvent(task_id="t1", attempt=1, state=outcome.state, stdout=outcome.stdout)
    spec = task(["echo", "hi"])
    HandleStore(data / "handles").save(HandleRecord(spec=spec, state=handle.state, final=final))
    options = WorkerOptions(worker_id="w1", broker_url="mqtt://127.0.0.1:1", data_dir=data)
    agent = WorkerAgent(options, {"host": HostRuntime(base_dir=tmp_path / "host")})
    await agent._reattach()  # what start() does first, before it connects
    assert agent.events.unacked_tasks() == {"t1"}
    assert not await asyncio.to_thread(os.path.exists, handle.state["dir"])
    await first.close()


@as_root
def test_another_user_under_uvloop_as_in_edgeplane_up(tmp_path: Path) -> None:
    """`edgeplane up` runs its workers on uvloop, whose subprocesses take no user= or
    group=: the runtime switches user all the same."""
    uvloop = pytest.importorskip("uvloop")
    user = lookup("nobody")
    assert user is not None

    # uvloop changes directory after it changed user: the way to the work dir must be
    # open to the task's user, as under $TMPDIR (the test's own dir is root's, 0700)
    shared = Path(tempfile.mkdtemp())
    os.chmod(shared, 0o755)

    async def main() -> Outcome:
        rt = HostRuntime(base_dir=shared / "host", user=user)
        try:
            return await run(rt, task(["sh", "-c", "id -u; id -G"]))
        finally:
            await rt.close()

    try:
        outcome = uvloop.run(main())
    finally:
        shutil.rmtree(shared)
    assert outcome.stdout == f"{user.uid}\n{user.gid}\n", outcome
