"""Container tasks on runc: an OCI image from the worker's image dir, run sandboxed.

Each attempt gets a bundle ``<data>/containers/bundles/<id>`` holding its ``config.json``
(``bundle.py``: read-only shared rootfs from ``images.py``, tmpfs ``/tmp``, no network,
cgroup limits) and its ``stdout``/``stderr`` files, and runs as ``runc --root
<data>/containers/runc run --bundle B <id>`` in the foreground, so runc's exit status is the
container's. Output goes to files rather than pipes (as for host tasks): a worker restarted
after a crash re-attaches (:meth:`ContainerRuntime.recover`) and still reads everything the
attempt printed.

Timeout and stop are the host runtime's sequence through ``runc kill``: SIGTERM to the
container's init, SIGKILL after ``grace_s`` (the init of a pid namespace ignores SIGTERM
unless it handles it, so most tasks end at the SIGKILL). Afterwards the container is
deleted (``runc delete --force`` when runc still has state for it) and the bundle removed;
``close`` does that for every attempt this runtime started.

Only root runs containers here: rootless runc (user namespaces, cgroup delegation) is out
of scope, so :meth:`ContainerRuntime.fingerprint` is None unless runc is installed and the
worker runs as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psutil

from edgeplane.clock import Clock, SystemClock
from edgeplane.errors import Conflict, NotFound, TaskFailure
from edgeplane.protocol import Assignment
from edgeplane.runtimes.base import Handle, Outcome, Runtime
from edgeplane.runtimes.bundle import container_id, runtime_config
from edgeplane.runtimes.host import read_tail
from edgeplane.runtimes.images import ImageStore

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
_STOPPED = "stopped"
_TIMEOUT = "timeout"
#: runc's own failure to start the container, as it logs it on stderr.
_RUNC_FAILED = re.compile(r'msg="runc run failed: (.*)"')
#: SIGKILLs sent before a stop gives up on a container that will not die.
_KILL_TRIES = 5


def find_runc() -> str | None:
    """runc on PATH, or Debian's ``/usr/sbin/runc`` when PATH lacks sbin."""
    found = shutil.which("runc")
    if found is None and os.access("/usr/sbin/runc", os.X_OK):
        found = "/usr/sbin/runc"
    return found


@dataclass(eq=False)
class _Container:
    """One attempt: its ``runc run`` process (None after a recover) and how it ended."""

    spec: Assignment
    cid: str
    bundle: Path
    outcome: asyncio.Future[Outcome]
    deadline: float | None
    process: asyncio.subprocess.Process | None = None
    pid: int = 0  # the container's init, known after a recover
    reason: str | None = None
    killer: asyncio.Task[None] | None = None
    supervisor: asyncio.Task[None] | None = None
    cpu: tuple[float, float] | None = None  # (cpu ns, wall s) of the last stats sample

    @property
    def key(self) -> tuple[str, int]:
        return (self.spec.task_id, self.spec.attempt)


class ContainerRuntime(Runtime):
    """Runs ``container`` tasks: ``spec.image`` (``name[:tag]`` in ``images_dir``, default
    ``<data_dir>/images``) with ``spec.command`` (default: the image's Entrypoint + Cmd) and
    ``spec.env`` over the image's Env.

    A bad or unknown image, or no command at all, raises
    :class:`~edgeplane.errors.TaskFailure` from ``start``. Results are the host runtime's:
    ``{"stdout": ..., "exit_code": N}``, ``failed`` when N is not 0 (runc reports a process
    killed by signal S as 128 + S).
    """

    name: ClassVar[str] = "container"

    def __init__(
        self,
        data_dir: Path,
        images_dir: Path | None = None,
        *,
        runc: str | None = None,
        grace_s: float = 2.0,
        poll_s: float = 0.25,
        clock: Clock | None = None,
    ) -> None:
        base = data_dir / "containers"
        self.images = ImageStore(
            images_dir if images_dir is not None else data_dir / "images", base / "rootfs"
        )
        self.bundles = base / "bundles"
        self.state_dir = base / "runc"
        self.runc = runc if runc is not None else find_runc()
        self.grace_s = grace_s
        self.poll_s = poll_s
        self._clock = clock if clock is not None else SystemClock()
        self._version: str | None = None
        self._containers: dict[tuple[str, int], _Container] = {}

    def fingerprint(self) -> dict[str, Any] | None:
        if self.runc is None or os.geteuid() != 0:
            return None
        if self._version is None:  # once: runc does not change under a running worker
            try:
                said = subprocess.run(
                    [self.runc, "--version"], capture_output=True, text=True, timeout=10
                )
            except (OSError, subprocess.SubprocessError):
                return None
            if said.returncode != 0:
                return None
            first = said.stdout.splitlines()[0] if said.stdout else ""
            self._version = first.removeprefix("runc version ").strip()
        return {"engine": "runc", "version": self._version, "images": self.images.names()}

    async def start(self, spec: Assignment, artifact: bytes | None) -> Handle:
        if not spec.image:
            raise TaskFailure("a container task needs 'image'", field="image")
        key = (spec.task_id, spec.attempt)
        if key in self._containers:
            raise Conflict(f"task {spec.task_id} attempt {spec.attempt} is already running")
        if self.runc is None:
            raise TaskFailure("runc is not installed on this worker", field="runtime")
        image = await asyncio.to_thread(self.images.resolve, spec.image)
        rootfs = await self.images.rootfs(image)
        cid = container_id(spec.task_id, spec.attempt, secrets.token_hex(3))
        config = runtime_config(
            cid=cid,
            rootfs=rootfs,
            image=image,
            command=spec.command,
            env=spec.env,
            limits=spec.limits,
        )
        bundle = self.bundles / cid
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(config))
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        timeout = spec.limits.timeout_s
        deadline = None if timeout is None else self._clock.now() + timeout
        loop = asyncio.get_running_loop()
        container = _Container(spec, cid, bundle, loop.create_future(), deadline)
        try:
            with (bundle / "stdout").open("wb") as out, (bundle / "stderr").open("wb") as err:
                container.process = await asyncio.create_subprocess_exec(
                    *self._runc("run", "--bundle", str(bundle), cid),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # a Ctrl-C at the worker's terminal is not the task's
                )
        except OSError as exc:
            shutil.rmtree(bundle, ignore_errors=True)
            raise TaskFailure(f"cannot run runc: {exc.strerror or exc}", field="runtime") from None
        self._containers[key] = container
        container.supervisor = asyncio.create_task(self._supervise(container))
        log.debug("container started", extra={"task_id": spec.task_id, "container": cid})
        return Handle(spec.task_id, spec.attempt, self.name, self._state(container))

    async def wait(self, handle: Handle) -> Outcome:
        key = (handle.task_id, handle.attempt)
        container = self._containers.get(key)
        if container is None:
            raise NotFound(f"no container attempt {handle.attempt} of task {handle.task_id}")
        outcome = await asyncio.shield(container.outcome)
        self._containers.pop(key, None)
        return outcome

    async def stop(self, handle: Handle) -> None:
        """Kill the container; returns once it is gone."""
        container = self._containers.get((handle.task_id, handle.attempt))
        if container is None or container.outcome.done():
            return
        if container.reason is None:
            container.reason = _STOPPED
        await asyncio.shield(self._kill(container))
        await asyncio.shield(container.outcome)

    def inspect(self, handle: Handle) -> dict[str, Any]:
        container = self._containers.get((handle.task_id, handle.attempt))
        if container is None:
            return {"running": False}
        return {
            "running": not container.outcome.done(),
            "container": container.cid,
            "bundle": str(container.bundle),
        }

    async def stats(self, handle: Handle) -> dict[str, float]:
        """CPU and memory of the container's cgroup, from ``runc events --stats``."""
        container = self._containers.get((handle.task_id, handle.attempt))
        if container is None or container.outcome.done():
            return {}
        said = await self._call("events", "--stats", container.cid)
        try:
            data = json.loads(said)["data"]
            cpu_ns = float(data["cpu"]["usage"]["total"])
            memory = float(data["memory"]["usage"]["usage"])
            pids = float(data.get("pids", {}).get("current", 0))
        except (ValueError, KeyError, TypeError):
            return {}
        now = self._clock.monotonic()
        last, container.cpu = container.cpu, (cpu_ns, now)
        cpu_percent = 0.0  # like psutil's first sample: no interval yet
        if last is not None and now > last[1]:
            cpu_percent = (cpu_ns - last[0]) / 1e9 / (now - last[1]) * 100
        return {"cpu_percent": cpu_percent, "memory_mb": memory / _MIB, "processes": pids}

    async def recover(self, state: dict[str, Any]) -> Handle | None:
        """Re-attach to a container a previous worker process started, if it still runs.

        Its exit status cannot be learnt (its ``runc run`` is not our child), so a recovered
        attempt that ends on its own is ``failed`` with its logs, as for host tasks. A
        container that is no longer running is deleted with its bundle and None returned.
        """
        try:
            spec = Assignment.model_validate(state["spec"])
            cid, bundle = str(state["container"]), Path(state["bundle"])
            deadline = state.get("deadline")
        except (KeyError, TypeError, ValueError):
            return None
        try:
            current = json.loads(await self._call("state", cid))
            running, pid = current.get("status") == "running", int(current.get("pid", 0))
        except (ValueError, TypeError, AttributeError):
            running, pid = False, 0
        if not running or pid <= 0:
            await self._call("delete", "--force", cid)
            await asyncio.to_thread(shutil.rmtree, bundle, True)
            return None
        loop = asyncio.get_running_loop()
        container = _Container(spec, cid, bundle, loop.create_future(), deadline, pid=pid)
        self._containers[container.key] = container
        container.supervisor = asyncio.create_task(self._supervise(container))
        return Handle(spec.task_id, spec.attempt, self.name, dict(state))

    async def close(self) -> None:
        """Stop every container still running and clean up after each."""
        for container in list(self._containers.values()):
            await self.stop(Handle(container.spec.task_id, container.spec.attempt, self.name))
            if container.supervisor is not None:
                await container.supervisor
        self._containers.clear()

    # --- internals ----------------------------------------------------------------------

    def _runc(self, *args: str) -> list[str]:
        assert self.runc is not None  # start refuses to run without it
        return [self.runc, "--root", str(self.state_dir), *args]

    async def _call(self, *args: str) -> str:
        """One runc command's stdout ('' when it fails: the container may be gone)."""
        if self.runc is None:
            return ""
        process = await asyncio.create_subprocess_exec(
            *self._runc(*args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await process.communicate()
        return out.decode(errors="replace") if process.returncode == 0 else ""

    def _state(self, container: _Container) -> dict[str, Any]:
        return {
            "spec": container.spec.model_dump(mode="json"),
            "container": container.cid,
            "bundle": str(container.bundle),
            "deadline": container.deadline,
        }

    async def _supervise(self, container: _Container) -> None:
        exit_code: int | None = None
        try:
            now = self._clock.now()
            remaining = None if container.deadline is None else container.deadline - now
            try:
                await asyncio.wait_for(self._exited(container), remaining)
            except TimeoutError:
                if container.reason is None:
                    container.reason = _TIMEOUT
                await self._kill(container)
            if container.process is not None:
                exit_code = await container.process.wait()
        finally:
            outcome = self._outcome(container, exit_code)
            if (self.state_dir / container.cid).exists():  # runc run cleans up on its own
                await self._call("delete", "--force", container.cid)
            await asyncio.to_thread(shutil.rmtree, container.bundle, True)
            if not container.outcome.done():
                container.outcome.set_result(outcome)

    async def _exited(self, container: _Container) -> None:
        if container.process is not None:
            await container.process.wait()
            return
        while self._init_alive(container):  # noqa: ASYNC110 - not our child: it can only be polled
            await asyncio.sleep(self.poll_s)

    def _init_alive(self, container: _Container) -> bool:
        try:
            return psutil.Process(container.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _kill(self, container: _Container) -> asyncio.Task[None]:
        """The one kill sequence of an attempt (shared by stop, timeout and close)."""
        if container.killer is None:
            container.killer = asyncio.create_task(self._kill_container(container))
        return container.killer

    async def _kill_container(self, container: _Container) -> None:
        await self._call("kill", container.cid, "TERM")
        if await self._gone(container, self.grace_s):
            return
        # Repeated: a container whose ``runc run`` has not created it yet cannot be killed.
        for _ in range(_KILL_TRIES):
            await self._call("kill", container.cid, "KILL")
            if await self._gone(container, self.grace_s):
                return
        log.error("container will not die", extra={"container": container.cid})

    async def _gone(self, container: _Container, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited(container)), within)
            return True
        return False

    def _outcome(self, container: _Container, exit_code: int | None) -> Outcome:
        stdout = read_tail(container.bundle / "stdout")
        stderr = read_tail(container.bundle / "stderr")
        logs: dict[str, Any] = {"exit_code": exit_code, "stdout": stdout, "stderr": stderr}
        if container.reason == _STOPPED:
            return Outcome("cancelled", error=_STOPPED, **logs)
        if container.reason == _TIMEOUT:
            limit = container.spec.limits.timeout_s
            return Outcome("failed", error=f"timeout after {limit}s", **logs)
        if exit_code is None:
            error = "exit status unknown: the worker restarted while the task ran"
            return Outcome("failed", error=error, **logs)
        results = {"stdout": stdout, "exit_code": exit_code}
        if exit_code == 0:
            return Outcome("completed", results=results, **logs)
        runc_failed = _RUNC_FAILED.search(stderr)
        if runc_failed is not None:
            error = "cannot start the container: " + runc_failed.group(1).replace('\\"', '"')
        else:
            error = f"exit code {exit_code}"
        return Outcome("failed", results=results, error=error, **logs)
