"""What the host and container runtimes share: one supervised process per attempt.

An attempt's main process (the host task's group leader, a container's ``runc run``) writes
its stdout and stderr to files in the attempt's own directory. A supervisor task waits for
it to exit or for the deadline; timeout and stop go through one kill sequence per attempt
(SIGTERM, then SIGKILL after ``grace_s``); afterwards the outcome is built from the exit
code and the tails of both files. The directory is removed only when the worker releases
the attempt (:meth:`SupervisedRuntime.release`), once it has saved the final event: a
worker killed before that finds the exit status and logs there after its restart.

The main process is a small shell that runs the attempt's command and writes its exit
status to the file ``exit`` of the attempt's directory (Nomad's executor process plays the
same part). After a worker crash the attempt keeps running; the restarted worker is no
longer its parent, so it polls the shell by pid and reads the exit status from that file.
"""

from __future__ import annotations

import asyncio
import functools
import glob
import os
import shutil
import signal
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import psutil

from edgeplane.clock import Clock, SystemClock
from edgeplane.errors import Conflict, NotFound
from edgeplane.runtimes.base import MAX_LOG_CHARS, Handle, Outcome, Runtime
from edgeplane.runtimes.spec import RunSpec
from edgeplane.runtimes.taskuser import TaskUser

#: seconds between SIGTERM and SIGKILL when an attempt is stopped (docs/architecture.md)
GRACE_S = 2.0
_STOPPED = "stopped"
_TIMEOUT = "timeout"
#: The files of an attempt's directory its main process writes to.
STDOUT, STDERR, EXIT = "stdout", "stderr", "exit"
#: The shell every attempt's command runs under (see :func:`spawn`).
SHELL = "/bin/sh"
#: The arguments are the exit file's path, then the command. The shell's stdin is the read
#: end of a pipe only the worker holds open for writing: its gate. Before it runs the
#: command, the shell reads a line from it, which the worker writes once the attempt's
#: handle is saved (:meth:`SupervisedRuntime.begin`). A worker killed before then closes
#: the pipe with its death: the shell reads end of file, writes ``unstarted`` to the exit
#: file instead of a status and exits without running anything, so a command the worker
#: has no handle of never runs. (The gate is stdin, not a descriptor above 2, because
#: dash redirects descriptors 0-9 only and the pipe's number is the worker's; so the
#: shell opens the exit file itself, on descriptor 3, first, by a path relative to its
#: working directory: no directory above the attempt's needs to be open to its user.)
#: The command's own stdin is /dev/null, and it does not get descriptor 3. Its status
#: goes to the exit file once it has ended; a signal that kills the shell as well (a
#: stop, a timeout) leaves it empty, and nothing is needed then: the runtime knows why
#: the attempt ended.
_WRAPPER = (
    'exec 3>"$1"; shift; IFS= read -r _ || { echo unstarted >&3; exit 125; }; '
    '"$@" </dev/null 3>&-; s=$?; echo "$s" >&3; exit "$s"'
)
#: What the shell writes to the exit file when its worker died before letting it run.
UNSTARTED = "unstarted\n"
#: The outcome of an attempt whose command never ran (see :data:`_WRAPPER`).
NEVER_RAN = (
    "the worker stopped before the attempt's command started: it never ran (tried again "
    "while retries allow)"
)


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


def process_alive(pid: int, created: float = 0.0) -> bool:
    """Whether ``pid`` runs (not a zombie) and, when ``created`` is given, is the process
    that started then rather than a later one that reused its pid."""
    if pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        if created and abs(process.create_time() - created) >= 0.01:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def read_exit(attempt_dir: Path) -> int | None:
    """The exit status the attempt's shell recorded (None: it wrote none)."""
    try:
        text = (attempt_dir / EXIT).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    # A complete record ends with its newline (the shell writes it in one go anyway).
    return int(text) if text.endswith("\n") and text.strip().isdigit() else None


def never_ran(attempt_dir: Path) -> bool:
    """Whether the attempt's shell exited at its gate, without running the command."""
    try:
        return (attempt_dir / EXIT).read_text() == UNSTARTED
    except (OSError, UnicodeDecodeError):
        return False


def _become(uid: int, gid: int) -> None:
    """In a forked child: the user ``uid`` with the group ``gid`` and no other groups."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def _private(path: Path) -> int:
    """``path`` opened for writing, new and readable by the worker's user only."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)


async def spawn(
    argv: Sequence[str], attempt_dir: Path, *, user: TaskUser | None = None, **options: Any
) -> tuple[asyncio.subprocess.Process, int]:
    """Start an attempt's main process in a session of its own (a Ctrl-C at the worker's
    terminal is not the task's), its stdout and stderr in the files the outcome reads.

    The main process is ``/bin/sh`` running ``argv`` and recording its exit status (see
    the module's docstring); it costs a start about a millisecond (dash's fork and exec).
    It waits at its gate: returned with the process is the pipe's write end, which
    :func:`open_gate` writes to (or :func:`os.close` closes, to end it unstarted). That
    end is close-on-exec, so no other attempt's process holds it open.
    The files are opened here, by the worker, 0600: the attempt writes to them through
    the descriptors it inherits but cannot open, read or replace them (the exit file,
    which the shell writes by its path, is the task user's: it can only write its own
    status). With a ``user`` that :attr:`~TaskUser.switches`, the process runs as that
    user with its primary group and no supplementary groups. That costs CPython its vfork
    (it forks to change user): measured +3 to +10 ms a start in a process with wasmtime
    loaded, on a busy 2-core machine; the least privilege is worth it (``--host-user
    root`` keeps vfork).
    """
    # a computation on strings (and getcwd): no I/O that blocks
    exit_path = os.path.relpath(attempt_dir / EXIT, options.get("cwd") or os.getcwd())  # noqa: ASYNC240
    wrapped = [SHELL, "-c", _WRAPPER, "edgeplane-task", exit_path, *argv]
    if user is not None and user.switches:
        if isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop):
            options.update(user=user.uid, group=user.gid, extra_groups=[])
        else:
            # uvloop (the loop of `edgeplane up`) refuses user/group/extra_groups: the
            # same three calls, made in the child between fork and exec (no lock taken)
            options["preexec_fn"] = functools.partial(_become, user.uid, user.gid)
    gate_r, gate_w = os.pipe()
    fds = [gate_r]
    try:
        fds += [_private(attempt_dir / name) for name in (EXIT, STDOUT, STDERR)]
        if user is not None and user.switches:
            # the shell opens the exit file: the task user's. It can write its own exit
            # status only; the directory is not its to swap the file in.
            os.fchown(fds[1], user.uid, user.gid)
        process = await asyncio.create_subprocess_exec(
            *wrapped,
            stdin=fds[0],
            stdout=fds[2],
            stderr=fds[3],
            start_new_session=True,
            **options,
        )
    except BaseException:
        os.close(gate_w)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return process, gate_w


def open_gate(gate: int) -> None:
    """Let the shell behind ``gate`` run its command (nothing when it is already gone)."""
    try:
        os.write(gate, b"go\n")
    except OSError:  # it was killed meanwhile (a broken pipe): it runs nothing
        pass
    finally:
        os.close(gate)


@dataclass(eq=False)
class Attempt:
    """One attempt: its main process (None after a recover) and how it ended."""

    spec: RunSpec
    dir: Path  # the attempt's own: its stdout and stderr files; removed at the end
    outcome: asyncio.Future[Outcome]
    deadline: float | None
    process: asyncio.subprocess.Process | None = None
    pid: int = 0  # what is polled when the main process is not our child (0: unknown)
    created: float = 0.0  # that process's start time, so a reused pid is not taken for it
    reason: str | None = None
    killer: asyncio.Task[None] | None = None
    supervisor: asyncio.Task[None] | None = None
    #: the write end of the shell's gate until the attempt begins (see :func:`spawn`)
    gate: int | None = None

    def close_gate(self, go: bool) -> None:
        """Open the gate (``go``: the command runs) or shut it (the shell exits unstarted)."""
        gate, self.gate = self.gate, None
        if gate is None:
            return
        if go:
            open_gate(gate)
        else:
            os.close(gate)

    @property
    def key(self) -> tuple[str, int]:
        return (self.spec.task_id, self.spec.attempt)


A = TypeVar("A", bound=Attempt)


class SupervisedRuntime(Runtime, Generic[A]):
    """The attempts table and lifecycle of a runtime that supervises a process per attempt.

    Subclasses start and recover attempts, register each with :meth:`_adopt`, and say
    through the hooks below how an attempt is signalled, when it is gone and what else
    it holds.
    """

    #: SIGKILLs sent before the kill sequence gives up on an attempt that will not die.
    kill_tries: ClassVar[int] = 1
    recoverable: ClassVar[bool] = True

    def __init__(self, *, grace_s: float, poll_s: float, clock: Clock | None) -> None:
        self.grace_s = grace_s
        self.poll_s = poll_s
        self._clock = clock if clock is not None else SystemClock()
        self._attempts: dict[tuple[str, int], A] = {}

    async def start(self, spec: RunSpec, artifact: bytes | None) -> Handle:
        handle = await self.start_held(spec, artifact)
        await self.begin(handle)
        return handle

    @abstractmethod
    async def start_held(self, spec: RunSpec, artifact: bytes | None) -> Handle:
        """Start the attempt's main process, held at its gate (see :func:`spawn`)."""

    async def begin(self, handle: Handle) -> None:
        attempt = self._attempts.get((handle.task_id, handle.attempt))
        if attempt is not None:
            attempt.close_gate(go=True)

    async def wait(self, handle: Handle) -> Outcome:
        key = (handle.task_id, handle.attempt)
        attempt = self._attempts.get(key)
        if attempt is None:
            raise NotFound(
                f"no {self.name} attempt {handle.attempt} of task {handle.task_id} is known"
            )
        return await asyncio.shield(attempt.outcome)

    async def release(self, handle: Handle) -> None:
        """Remove an ended attempt's directory and forget it; for an attempt this runtime
        does not know, the directory its handle's state names (when it is one of ours)."""
        key = (handle.task_id, handle.attempt)
        attempt = self._attempts.get(key)
        if attempt is not None:
            if not attempt.outcome.done():
                return  # still running: nothing to release yet
            del self._attempts[key]
            if attempt.supervisor is not None:
                await attempt.supervisor  # it ends right after setting the outcome
            directory: Path | None = attempt.dir
        elif not handle.state:  # the worker died before its start returned (an intent)
            for left in await asyncio.to_thread(self._never_ran, handle):
                await asyncio.to_thread(shutil.rmtree, left, True)
            return
        else:
            directory = self._directory(handle.state)
            if directory is not None:
                await self._forget(handle.state)
        if directory is not None:
            await asyncio.to_thread(shutil.rmtree, directory, True)

    def _never_ran(self, handle: Handle) -> list[Path]:
        """The directories of the handle's attempt whose shell exited at its gate."""
        prefix = self._prefix(handle.task_id, handle.attempt)
        return [
            path
            for path in self._parent().glob(glob.escape(prefix) + "*")
            if "-" not in path.name.removeprefix(prefix) and never_ran(path)
        ]

    async def stop(self, handle: Handle) -> None:
        """Kill the attempt; returns once it is gone."""
        attempt = self._running(handle)
        if attempt is None:
            return
        if attempt.reason is None:
            attempt.reason = _STOPPED
        attempt.close_gate(go=False)  # held: it ends without running its command
        await asyncio.shield(self._kill(attempt))
        await asyncio.shield(attempt.outcome)

    def log_files(self, handle: Handle) -> dict[str, Path]:
        directory = self._directory(handle.state)
        if directory is None:
            return {}
        return {STDOUT: directory / STDOUT, STDERR: directory / STDERR}

    def inspect(self, handle: Handle) -> dict[str, Any]:
        attempt = self._attempts.get((handle.task_id, handle.attempt))
        if attempt is None:
            return {"running": False}
        return {"running": not attempt.outcome.done(), **self._details(attempt)}

    async def close(self) -> None:
        """Stop every attempt still running and release every attempt (the worker is
        leaving: it keeps no records of them)."""
        for attempt in list(self._attempts.values()):
            await self.stop(Handle(attempt.spec.task_id, attempt.spec.attempt, self.name))
            if attempt.supervisor is not None:
                await attempt.supervisor
            await asyncio.to_thread(shutil.rmtree, attempt.dir, True)
        self._attempts.clear()

    # --- hooks --------------------------------------------------------------------------

    @abstractmethod
    def _details(self, attempt: A) -> dict[str, Any]:
        """What ``inspect`` says of a known attempt besides ``running``."""

    @abstractmethod
    async def _signal(self, attempt: A, sig: signal.Signals) -> None:
        """Send ``sig`` to the attempt (no error when it is already gone)."""

    @abstractmethod
    async def _gone(self, attempt: A, within: float) -> bool:
        """Whether the attempt has ended, waiting ``within`` seconds at most."""

    @abstractmethod
    def _left_running(self, attempt: A) -> bool:
        """Whether something the attempt started still runs that a (new) kill must end.

        Asked once the main process has exited, and before a finished kill is repeated.
        """

    @abstractmethod
    def _exit_error(self, exit_code: int, stderr: str) -> str:
        """The error of an attempt whose main process exited with a non-zero code."""

    @abstractmethod
    def _directory(self, state: dict[str, Any]) -> Path | None:
        """The attempt directory a handle's state names, if it is one of this runtime's
        (None otherwise: a state that names another path removes nothing)."""

    @abstractmethod
    def _parent(self) -> Path:
        """The directory of this runtime's attempt directories."""

    @abstractmethod
    def _prefix(self, task_id: str, attempt: int) -> str:
        """How the names of an attempt's directories begin (a random part without a dash
        follows)."""

    async def _forget(self, state: dict[str, Any]) -> None:
        """Free what an ended attempt known only by its state may still hold (default:
        nothing besides its directory)."""

    async def _release(self, attempt: A) -> None:
        """Free what the attempt holds besides its directory once its main process ended."""

    def _survived(self, attempt: A) -> None:
        """Told that the attempt outlived every SIGKILL of its kill sequence (default: nothing)."""

    def _exit_code(self, status: int) -> int:
        """The exit code to report for the main process's status (default: as it is)."""
        return status

    # --- internals ----------------------------------------------------------------------

    def _running(self, handle: Handle) -> A | None:
        """The handle's attempt while it has not ended."""
        attempt = self._attempts.get((handle.task_id, handle.attempt))
        if attempt is None or attempt.outcome.done():
            return None
        return attempt

    def _claim(self, spec: RunSpec) -> None:
        """Refuse a second start of an attempt this runtime still knows."""
        if (spec.task_id, spec.attempt) in self._attempts:
            raise Conflict(f"task {spec.task_id} attempt {spec.attempt} is already running")

    def _deadline(self, spec: RunSpec) -> float | None:
        """When the attempt's ``timeout_s`` runs out, on the clock's ``now`` (None: never)."""
        timeout = spec.limits.timeout_s
        return None if timeout is None else self._clock.now() + timeout

    def _adopt(self, attempt: A) -> None:
        """Register a started or recovered attempt and start supervising it."""
        self._attempts[attempt.key] = attempt
        attempt.supervisor = asyncio.create_task(self._supervise(attempt))

    async def _supervise(self, attempt: A) -> None:
        """Wait for the main process or the deadline, end what is left, set the outcome."""
        exit_code: int | None = None
        try:
            remaining = None if attempt.deadline is None else attempt.deadline - self._clock.now()
            try:
                await asyncio.wait_for(self._exited(attempt), remaining)
            except TimeoutError:
                if attempt.reason is None:
                    attempt.reason = _TIMEOUT
                await self._kill(attempt)
            if attempt.process is not None:
                exit_code = self._exit_code(await attempt.process.wait())
            else:  # not our child: its shell wrote the status down (or it was killed)
                recorded = read_exit(attempt.dir)
                exit_code = None if recorded is None else self._exit_code(recorded)
            # The main process is gone; nothing it started may outlive the task.
            if self._left_running(attempt):
                await self._kill(attempt)
        finally:
            attempt.close_gate(go=False)
            outcome = self._outcome(attempt, exit_code)
            await self._release(attempt)
            if not attempt.outcome.done():
                attempt.outcome.set_result(outcome)

    async def _exited(self, attempt: A) -> None:
        """Returns when the attempt's main process has exited."""
        if attempt.process is not None:
            await attempt.process.wait()
            return
        while self._main_alive(attempt):  # noqa: ASYNC110 - not our child: it can only be polled
            await asyncio.sleep(self.poll_s)

    def _main_alive(self, attempt: A) -> bool:
        """Whether the main process still runs (its return code, or its pid when not ours)."""
        if attempt.process is not None:
            return attempt.process.returncode is None
        return process_alive(attempt.pid, attempt.created)

    def _kill(self, attempt: A) -> asyncio.Task[None]:
        """The one kill sequence of an attempt (shared by stop, timeout and cleanup)."""
        if attempt.killer is None or (attempt.killer.done() and self._left_running(attempt)):
            attempt.killer = asyncio.create_task(self._kill_sequence(attempt))
        return attempt.killer

    async def _kill_sequence(self, attempt: A) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` (up to ``kill_tries`` times)."""
        await self._signal(attempt, signal.SIGTERM)
        if await self._gone(attempt, self.grace_s):
            return
        for _ in range(self.kill_tries):
            await self._signal(attempt, signal.SIGKILL)
            if await self._gone(attempt, self.grace_s):
                return
        self._survived(attempt)

    def _outcome(self, attempt: A, exit_code: int | None) -> Outcome:
        stdout = read_tail(attempt.dir / STDOUT)
        stderr = read_tail(attempt.dir / STDERR)
        logs: dict[str, Any] = {"exit_code": exit_code, "stdout": stdout, "stderr": stderr}
        if attempt.reason == _STOPPED:
            return Outcome("cancelled", error=_STOPPED, **logs)
        if attempt.reason == _TIMEOUT:
            limit = attempt.spec.limits.timeout_s
            return Outcome("failed", error=f"timeout after {limit}s", **logs)
        if never_ran(attempt.dir):
            return Outcome("failed", error=NEVER_RAN, transient=True, **logs)
        if exit_code is None:
            error = "exit status unknown: its process ended while the worker was down"
            return Outcome("failed", error=error, **logs)
        results = {"stdout": stdout, "exit_code": exit_code}
        if exit_code == 0:
            return Outcome("completed", results=results, **logs)
        error = self._exit_error(exit_code, stderr)
        return Outcome("failed", results=results, error=error, **logs)
