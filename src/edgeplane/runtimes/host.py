"""Host tasks: a command run as a plain process on the worker (only when the worker allows it).

Each attempt runs in its own session (so its own process group), in a fresh scratch
directory that is removed afterwards, with the worker's environment (less its
``EDGEPLANE_*`` variables, which may hold its tokens) plus the task's ``env``.

Tasks run as the runtime's :class:`~edgeplane.runtimes.taskuser.TaskUser` (``--host-user``;
by default an unprivileged one when the worker is root, see ``taskuser.py``). Then the
attempt's directory belongs to the worker and its group is the task user's (0710: the
task may pass through, not list or write), its ``work`` directory belongs to the task
user (0700), and the ``stdout`` and ``stderr`` files beside it are the worker's (0600)
and reach the task only as the descriptors it inherits: a task cannot swap one for a link
to a file of the worker's, which the worker would read back as its output. The ``exit``
file is the task user's (0600, the shell writes it by its path): a task can write its own
exit status there, nothing it could not say by exiting, and cannot swap the file.

stdout and stderr go to files next to the scratch directory rather than pipes:
a background grandchild holding a pipe open cannot stall the task, and a restarted worker
can still read them after :meth:`HostRuntime.recover`. Timeout and stop signal the whole
group: SIGTERM, then SIGKILL after ``grace_s``. When the main process exits, whatever it
left running in its group is terminated the same way, so tasks never leak processes.

The command runs under the shell of ``supervised.spawn``, which records its exit status,
so an attempt that ends while its worker is down (killed, restarting) still reports how
it ended. Like any shell, it reports a command killed by signal S as 128 + S: an exit
code above 128 that names a signal is reported as that signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import platform
import re
import shutil
import signal
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil

from edgeplane.clock import Clock
from edgeplane.errors import TaskFailure, TransientTaskFailure
from edgeplane.runtimes.base import Handle, Outcome
from edgeplane.runtimes.spec import RunSpec
from edgeplane.runtimes.supervised import (
    GRACE_S,
    Attempt,
    SupervisedRuntime,
    process_alive,
    spawn,
)
from edgeplane.runtimes.taskuser import TaskUser, current

_MIB = 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
#: signal numbers with a name (what an exit code above 128 may stand for)
_SIGNALS = frozenset(int(sig) for sig in signal.Signals)
#: The worker's own variables (its join or admin token among them) are not the task's.
_WORKER_ENV = "EDGEPLANE_"


def task_environment(user: TaskUser, env: dict[str, str]) -> dict[str, str]:
    """A host task's environment: the worker's less ``EDGEPLANE_*``, who it runs as when
    that is another user, then the task's own ``env``."""
    found = {k: v for k, v in os.environ.items() if not k.startswith(_WORKER_ENV)}
    if user.switches:
        found.update(user.environment())
    found.update(env)
    return found


def unrunnable(name: str, path: str, cwd: Path) -> None:
    """Raise the OSError exec would raise for a command named ``name`` (looked up in
    ``path`` unless it has a slash, relative to ``cwd``), or return when it can run."""
    found = str(cwd / name) if "/" in name else (shutil.which(name, path=path) if name else None)
    if found is None or not os.path.exists(found):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    if os.path.isdir(found) or not os.access(found, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)


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


@dataclass(eq=False)
class _Proc(Attempt):
    """One attempt: ``pid`` leads its process group, ``dir`` is its scratch directory."""

    sampled: dict[int, psutil.Process] = field(default_factory=dict)
    #: the highest (read, write) byte counts sampled: members that end unreaped by the
    #: group (orphans) take their counts along, and the series must not go back
    io: tuple[float, float] = (0.0, 0.0)


class HostRuntime(SupervisedRuntime[_Proc]):
    """Runs ``host`` tasks (``spec.command``) as process groups under ``base_dir``.

    ``start`` raises :class:`~edgeplane.errors.TaskFailure` (field ``command``) when there is
    no command; a command that cannot be executed (not found, not executable) is a
    ``failed`` :class:`Outcome`. A non-zero exit is ``failed`` with ``exit code N``; results
    are ``{"stdout": ..., "exit_code": N}`` either way. ``close`` stops every attempt.
    An attempt is forgotten once released (:meth:`release`); waiting again raises
    :class:`~edgeplane.errors.NotFound`. Attempts run as ``user`` (default: the worker's
    own user, nothing switched).
    """

    name: ClassVar[str] = "host"

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        grace_s: float = GRACE_S,
        poll_s: float = 0.25,
        clock: Clock | None = None,
        user: TaskUser | None = None,
    ) -> None:
        super().__init__(grace_s=grace_s, poll_s=poll_s, clock=clock)
        self.base_dir = (
            base_dir if base_dir is not None else Path(tempfile.gettempdir()) / "edgeplane-host"
        )
        self.user = user if user is not None else current()
        self._base_checked = False

    def fingerprint(self) -> dict[str, Any] | None:
        if os.name != "posix":
            return None  # process groups and killpg are what make stop/timeout whole
        return {
            "os": platform.system().lower(),
            "arch": platform.machine(),
            "process_groups": True,
            "user": self.user.name,
        }

    async def start_held(self, spec: RunSpec, artifact: bytes | None) -> Handle:
        if not spec.command:
            raise TaskFailure("a host task needs a non-empty command", field="command")
        self._claim(spec)
        if not self._base_checked:
            self._check_base()
        prefix = self._prefix(spec.task_id, spec.attempt)
        root = Path(tempfile.mkdtemp(prefix=prefix, dir=self.base_dir))
        work = root / "work"
        work.mkdir()
        if self.user.switches:
            os.chown(root, -1, self.user.gid)
            os.chmod(root, 0o710)
            os.chown(work, self.user.uid, self.user.gid)
        loop = asyncio.get_running_loop()
        deadline = self._deadline(spec)
        env = task_environment(self.user, spec.env)
        try:
            # The shell around the command would only say "not found" on its stderr and exit
            # 127: what exec would refuse is looked for first, to fail with the reason.
            unrunnable(spec.command[0], env.get("PATH", os.defpath), work)
            process, gate = await spawn(spec.command, root, user=self.user, cwd=work, env=env)
        except (OSError, ValueError) as exc:  # not found, not executable, NUL in an argument
            shutil.rmtree(root, ignore_errors=True)
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            failed = loop.create_future()
            failed.set_result(Outcome("failed", error=f"cannot run {spec.command[0]!r}: {why}"))
            self._attempts[(spec.task_id, spec.attempt)] = _Proc(spec, root, failed, None)
            return Handle(spec.task_id, spec.attempt, self.name, {})
        proc = _Proc(
            spec, root, loop.create_future(), deadline, process=process, pid=process.pid, gate=gate
        )
        with contextlib.suppress(psutil.Error):
            proc.created = psutil.Process(process.pid).create_time()
        self._adopt(proc)
        return Handle(spec.task_id, spec.attempt, self.name, self._state(proc))

    async def stats(self, handle: Handle) -> dict[str, float]:
        """CPU, memory and storage io summed over every process in the attempt's group
        (host tasks have no cgroup of their own: the kernel's per-process io counters)."""
        proc = self._running(handle)
        if proc is None:
            return {}
        return await asyncio.to_thread(self._sample, proc)

    async def recover(self, state: dict[str, Any]) -> Handle | None:
        """Re-attach to an attempt a previous worker process started.

        While its main process runs, it is polled by pid; once it has ended (now or while
        the worker was down), the outcome comes from the exit status its shell recorded
        and the logs in its directory, and whatever it left in its process group is killed.
        None when nothing of the attempt is left (its directory is gone): then only the
        leftovers of its group are killed.
        """
        try:
            # an older version's state holds a whole Assignment: RunSpec ignores the rest
            spec = RunSpec.model_validate(state["spec"])
            pid, root = int(state["pid"]), Path(state["dir"])
            created = float(state["create_time"])
            deadline = state.get("deadline")
        except (KeyError, TypeError, ValueError):
            return None
        if not await asyncio.to_thread(root.is_dir) and not process_alive(pid, created):
            for member in group_members(pid):
                with contextlib.suppress(psutil.Error):
                    member.kill()
            return None
        loop = asyncio.get_running_loop()
        proc = _Proc(spec, root, loop.create_future(), deadline, pid=pid, created=created)
        self._adopt(proc)
        return Handle(spec.task_id, spec.attempt, self.name, dict(state))

    # --- hooks --------------------------------------------------------------------------

    def _parent(self) -> Path:
        return self.base_dir

    def _prefix(self, task_id: str, attempt: int) -> str:
        return f"{_UNSAFE.sub('_', task_id)[:64]}-{attempt}-"

    def _directory(self, state: dict[str, Any]) -> Path | None:
        found = state.get("dir")
        if not isinstance(found, str) or Path(found).parent != self.base_dir:
            return None
        return Path(found)

    def _details(self, proc: _Proc) -> dict[str, Any]:
        return {"pid": proc.pid, "dir": str(proc.dir)}

    async def _signal(self, proc: _Proc, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    async def _gone(self, proc: _Proc, within: float) -> bool:
        """Polled: the leader may be gone long before the rest of its group."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while True:
            if not self._main_alive(proc) and not group_alive(proc.pid):
                return True
            if loop.time() >= end:
                return False
            await asyncio.sleep(0.02)

    def _left_running(self, proc: _Proc) -> bool:
        return group_alive(proc.pid)

    def _exit_error(self, exit_code: int, stderr: str) -> str:
        if exit_code < 0:
            return f"killed by signal {signal.Signals(-exit_code).name}"
        return f"exit code {exit_code}"

    def _exit_code(self, status: int) -> int:
        """The shell's 128 + S for a command killed by signal S, as -S (as for a child)."""
        if status > 128 and (status - 128) in _SIGNALS:
            return -(status - 128)
        return status

    # --- internals ----------------------------------------------------------------------

    def _check_base(self) -> None:
        """Make the directory of the attempts' directories, or refuse one that is not the
        worker's own: under a shared ``/tmp`` another local user could have made it first
        and would then swap an attempt's files for links the worker reads back."""
        self.base_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        found = os.lstat(self.base_dir)
        if (
            not stat.S_ISDIR(found.st_mode)
            or found.st_uid != os.geteuid()
            or found.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        ):
            raise TransientTaskFailure(
                f"{self.base_dir} is not the worker's own directory (owner uid "
                f"{found.st_uid}, mode {stat.filemode(found.st_mode)}): host tasks do not run "
                "there; remove it",
                field="runtime",
            )
        self._base_checked = True

    def _state(self, proc: _Proc) -> dict[str, Any]:
        return {
            "spec": proc.spec.model_dump(mode="json"),
            "pid": proc.pid,
            "pgid": proc.pid,
            "create_time": proc.created,
            "dir": str(proc.dir),
            "deadline": proc.deadline,
        }

    def _sample(self, proc: _Proc) -> dict[str, float]:
        cpu = rss = read = write = 0.0
        members = group_members(proc.pid)
        for member in members:
            # cpu_percent compares with the previous call on the same Process object.
            sampled = proc.sampled.setdefault(member.pid, member)
            with contextlib.suppress(psutil.Error):
                cpu += sampled.cpu_percent(None)
                rss += sampled.memory_info().rss / _MIB
            # /proc/PID/io: bytes this process (and the children it reaped: the kernel
            # adds theirs to their parent's) had read from or sent to the storage layer
            with contextlib.suppress(psutil.Error, AttributeError):
                io = sampled.io_counters()
                read += io.read_bytes
                write += io.write_bytes
        proc.io = (max(proc.io[0], read), max(proc.io[1], write))
        return {
            "cpu_percent": cpu,
            "rss_mb": rss,
            "processes": float(len(members)),
            "io_read_bytes": proc.io[0],
            "io_write_bytes": proc.io[1],
        }
