"""Host tasks: a command run as a plain process on the worker (only when the worker allows it).

Each attempt runs in its own session (so its own process group), in a fresh scratch
directory that is removed afterwards, with the worker's environment plus the task's
``env``. stdout and stderr go to files next to the scratch directory rather than pipes:
a background grandchild holding a pipe open cannot stall the task, and a restarted worker
can still read them after :meth:`HostRuntime.recover`. Timeout and stop signal the whole
group: SIGTERM, then SIGKILL after ``grace_s``. When the main process exits, whatever it
left running in its group is terminated the same way, so tasks never leak processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil

from edgeplane.clock import Clock, SystemClock
from edgeplane.errors import Conflict, NotFound, TaskFailure
from edgeplane.protocol import Assignment
from edgeplane.runtimes.base import MAX_LOG_CHARS, Handle, Outcome, Runtime

_MIB = 1024 * 1024
_STOPPED = "stopped"
_TIMEOUT = "timeout"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def read_tail(path: Path, limit: int = MAX_LOG_CHARS) -> str:
    """The last ``limit`` characters of a text file ('' when it is missing)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit * 4))  # a UTF-8 character takes at most four bytes
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", "replace")[-limit:]


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members


def group_alive(pgid: int) -> bool:
    """Whether a live process is left in a process group.

    Usually none is, and one signal 0 to the group says so; only when something answers
    does the scan over the whole process table (milliseconds, it was most of a host task's
    cost) tell live members from zombies waiting to be reaped.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a member we may not signal is still a member
    return bool(group_members(pgid))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass(eq=False)
class _Proc:
    """One attempt: its process (None after a recover) and how it ended."""

    spec: Assignment
    pid: int
    root: Path
    outcome: asyncio.Future[Outcome]
    deadline: float | None
    process: asyncio.subprocess.Process | None = None
    reason: str | None = None
    killer: asyncio.Task[None] | None = None
    supervisor: asyncio.Task[None] | None = None
    sampled: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.spec.task_id, self.spec.attempt)


class HostRuntime(Runtime):
    """Runs ``host`` tasks (``spec.command``) as process groups under ``base_dir``.

    ``start`` raises :class:`~edgeplane.errors.TaskFailure` (field ``command``) when there is
    no command; a command that cannot be executed (not found, not executable) is a
    ``failed`` :class:`Outcome`. A non-zero exit is ``failed`` with ``exit code N``; results
    are ``{"stdout": ..., "exit_code": N}`` either way. ``close`` stops every attempt.
    An attempt is forgotten once ``wait`` has returned; waiting again raises
    :class:`~edgeplane.errors.NotFound`.
    """

    name: ClassVar[str] = "host"

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        grace_s: float = 2.0,
        poll_s: float = 0.25,
        clock: Clock | None = None,
    ) -> None:
        self.base_dir = (
            base_dir if base_dir is not None else Path(tempfile.gettempdir()) / "edgeplane-host"
        )
        self.grace_s = grace_s
        self.poll_s = poll_s
        self._clock = clock if clock is not None else SystemClock()
        self._procs: dict[tuple[str, int], _Proc] = {}

    def fingerprint(self) -> dict[str, Any] | None:
        if os.name != "posix":
            return None  # process groups and killpg are what make stop/timeout whole
        return {"os": platform.system().lower(), "arch": platform.machine(), "process_groups": True}

    async def start(self, spec: Assignment, artifact: bytes | None) -> Handle:
        if not spec.command:
            raise TaskFailure("a host task needs a non-empty command", field="command")
        key = (spec.task_id, spec.attempt)
        if key in self._procs:
            raise Conflict(f"task {spec.task_id} attempt {spec.attempt} is already running")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        prefix = f"{_UNSAFE.sub('_', spec.task_id)[:64]}-{spec.attempt}-"
        root = Path(tempfile.mkdtemp(prefix=prefix, dir=self.base_dir))
        work = root / "work"
        work.mkdir()
        loop = asyncio.get_running_loop()
        timeout = spec.limits.timeout_s
        deadline = None if timeout is None else self._clock.now() + timeout
        try:
            with (root / "stdout").open("wb") as out, (root / "stderr").open("wb") as err:
                process = await asyncio.create_subprocess_exec(
                    *spec.command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=work,
                    env={**os.environ, **spec.env},
                    start_new_session=True,
                )
        except (OSError, ValueError) as exc:  # not found, not executable, NUL in an argument
            shutil.rmtree(root, ignore_errors=True)
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            failed = loop.create_future()
            failed.set_result(Outcome("failed", error=f"cannot run {spec.command[0]!r}: {why}"))
            self._procs[key] = _Proc(spec, 0, root, failed, None)
            return Handle(spec.task_id, spec.attempt, self.name, {})
        proc = _Proc(spec, process.pid, root, loop.create_future(), deadline, process=process)
        self._procs[key] = proc
        proc.supervisor = asyncio.create_task(self._supervise(proc))
        return Handle(spec.task_id, spec.attempt, self.name, self._state(proc))

    async def wait(self, handle: Handle) -> Outcome:
        key = (handle.task_id, handle.attempt)
        proc = self._procs.get(key)
        if proc is None:
            raise NotFound(f"no host attempt {handle.attempt} of task {handle.task_id} is known")
        outcome = await asyncio.shield(proc.outcome)
        self._procs.pop(key, None)
        return outcome

    async def stop(self, handle: Handle) -> None:
        """Kill the attempt's process group; returns once it is gone."""
        proc = self._procs.get((handle.task_id, handle.attempt))
        if proc is None or proc.outcome.done():
            return
        if proc.reason is None:
            proc.reason = _STOPPED
        await asyncio.shield(self._kill(proc))
        await asyncio.shield(proc.outcome)

    def inspect(self, handle: Handle) -> dict[str, Any]:
        proc = self._procs.get((handle.task_id, handle.attempt))
        if proc is None:
            return {"running": False}
        return {"running": not proc.outcome.done(), "pid": proc.pid, "dir": str(proc.root)}

    async def stats(self, handle: Handle) -> dict[str, float]:
        """CPU and memory summed over every process in the attempt's group."""
        proc = self._procs.get((handle.task_id, handle.attempt))
        if proc is None or proc.outcome.done():
            return {}
        return await asyncio.to_thread(self._sample, proc)

    async def recover(self, state: dict[str, Any]) -> Handle | None:
        """Re-attach to a process group a previous worker started, if its leader still runs.

        Its exit status cannot be learnt (it is not our child), so a recovered attempt that
        ends on its own is ``failed`` with its logs. When the leader is gone, the leftovers
        of its group and its directory are cleaned up and None is returned.
        """
        try:
            spec = Assignment.model_validate(state["spec"])
            pid, root = int(state["pid"]), Path(state["dir"])
            created = float(state["create_time"])
            deadline = state.get("deadline")
        except (KeyError, TypeError, ValueError):
            return None
        alive = False
        with contextlib.suppress(psutil.Error):
            leader = psutil.Process(pid)
            alive = (
                abs(leader.create_time() - created) < 0.01
                and leader.status() != psutil.STATUS_ZOMBIE
            )
        if not alive:
            for member in group_members(pid):
                with contextlib.suppress(psutil.Error):
                    member.kill()
            await asyncio.to_thread(shutil.rmtree, root, True)
            return None
        loop = asyncio.get_running_loop()
        proc = _Proc(spec, pid, root, loop.create_future(), deadline)
        self._procs[proc.key] = proc
        proc.supervisor = asyncio.create_task(self._supervise(proc))
        return Handle(spec.task_id, spec.attempt, self.name, dict(state))

    async def close(self) -> None:
        """Stop every attempt still running."""
        for proc in list(self._procs.values()):
            await self.stop(Handle(proc.spec.task_id, proc.spec.attempt, self.name))
            if proc.supervisor is not None:
                await proc.supervisor
        self._procs.clear()

    # --- internals ----------------------------------------------------------------------

    def _state(self, proc: _Proc) -> dict[str, Any]:
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            created = 0.0
        return {
            "spec": proc.spec.model_dump(mode="json"),
            "pid": proc.pid,
            "pgid": proc.pid,
            "create_time": created,
            "dir": str(proc.root),
            "deadline": proc.deadline,
        }

    async def _supervise(self, proc: _Proc) -> None:
        exit_code: int | None = None
        try:
            remaining = None if proc.deadline is None else proc.deadline - self._clock.now()
            try:
                await asyncio.wait_for(self._leader_exit(proc), remaining)
            except TimeoutError:
                if proc.reason is None:
                    proc.reason = _TIMEOUT
                await self._kill(proc)
            if proc.process is not None:
                exit_code = await proc.process.wait()
            # The main process is gone; nothing it started may outlive the task.
            if group_alive(proc.pid):
                await self._kill(proc)
        finally:
            outcome = self._outcome(proc, exit_code)
            await asyncio.to_thread(shutil.rmtree, proc.root, True)
            if not proc.outcome.done():
                proc.outcome.set_result(outcome)

    async def _leader_exit(self, proc: _Proc) -> None:
        if proc.process is not None:
            await proc.process.wait()
            return
        while self._leader_alive(proc):  # noqa: ASYNC110 - not our child: it can only be polled
            await asyncio.sleep(self.poll_s)

    def _leader_alive(self, proc: _Proc) -> bool:
        if proc.process is not None:
            return proc.process.returncode is None
        try:
            return psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _kill(self, proc: _Proc) -> asyncio.Task[None]:
        """The one kill sequence of an attempt (shared by stop, timeout and cleanup)."""
        if proc.killer is None or (proc.killer.done() and group_alive(proc.pid)):
            proc.killer = asyncio.create_task(self._kill_group(proc))
        return proc.killer

    async def _kill_group(self, proc: _Proc) -> None:
        _signal_group(proc.pid, signal.SIGTERM)
        if await self._gone(proc, self.grace_s):
            return
        _signal_group(proc.pid, signal.SIGKILL)
        await self._gone(proc, self.grace_s)

    async def _gone(self, proc: _Proc, within: float) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while True:
            if not self._leader_alive(proc) and not group_alive(proc.pid):
                return True
            if loop.time() >= end:
                return False
            await asyncio.sleep(0.02)

    def _outcome(self, proc: _Proc, exit_code: int | None) -> Outcome:
        stdout = read_tail(proc.root / "stdout")
        stderr = read_tail(proc.root / "stderr")
        logs: dict[str, Any] = {"exit_code": exit_code, "stdout": stdout, "stderr": stderr}
        if proc.reason == _STOPPED:
            return Outcome("cancelled", error=_STOPPED, **logs)
        if proc.reason == _TIMEOUT:
            return Outcome("failed", error=f"timeout after {proc.spec.limits.timeout_s}s", **logs)
        if exit_code is None:
            error = "exit status unknown: the worker restarted while the task ran"
            return Outcome("failed", error=error, **logs)
        results = {"stdout": stdout, "exit_code": exit_code}
        if exit_code == 0:
            return Outcome("completed", results=results, **logs)
        if exit_code < 0:
            error = f"killed by signal {signal.Signals(-exit_code).name}"
        else:
            error = f"exit code {exit_code}"
        return Outcome("failed", results=results, error=error, **logs)

    def _sample(self, proc: _Proc) -> dict[str, float]:
        cpu = rss = 0.0
        members = group_members(proc.pid)
        for member in members:
            # cpu_percent compares with the previous call on the same Process object.
            sampled = proc.sampled.setdefault(member.pid, member)
            with contextlib.suppress(psutil.Error):
                cpu += sampled.cpu_percent(None)
                rss += sampled.memory_info().rss / _MIB
        return {"cpu_percent": cpu, "rss_mb": rss, "processes": float(len(members))}
