"""Container tasks on runc: an OCI image from the worker's image dir, run sandboxed.

Each attempt gets a bundle ``<data>/containers/bundles/<id>`` holding its ``config.json``
(``bundle.py``: read-only shared rootfs from ``images.py``, tmpfs ``/tmp``, no network,
cgroup limits) and its ``stdout``/``stderr`` files, and runs as ``runc --root
<data>/containers/runc run --bundle B <id>`` in the foreground, so runc's exit status is the
container's. Output goes to files rather than pipes (as for host tasks), and ``runc run``
runs under the shell of ``supervised.spawn``, which writes its exit status to the bundle:
a worker restarted after a crash re-attaches (:meth:`ContainerRuntime.recover`), still
reads everything the attempt printed and learns how it ended.

Timeout and stop are the sequence of ``supervised.py`` through ``runc kill``: SIGTERM to the
container's init, SIGKILL after ``grace_s`` (the init of a pid namespace ignores SIGTERM
unless it handles it, so most tasks end at the SIGKILL). Afterwards the container is
deleted (``runc delete --force`` when runc still has state for it); the bundle, which
holds the exit status and logs, is removed once the worker releases the attempt (it has
saved the final event);
``close`` does that for every attempt this runtime started.

Only root runs containers here: rootless runc (user namespaces, cgroup delegation) is out
of scope, so :meth:`ContainerRuntime.fingerprint` is None unless runc is installed and the
worker runs as root.

A task with ``network: bridge`` (docs/services.md) joins a network namespace on the
node's bridge that ``network`` (a :class:`~edgeplane.chutes.network.TaskNetwork`) makes
for the attempt, its ``ports`` published on node ports picked there; they are listed in
the handle's state (``ports``) and released once the container has ended. The lease's
name is written into the bundle (``network``) before it is made, so an attempt whose
worker died mid-start still has it released. :meth:`ContainerRuntime.probe` runs a
task's health check (``probe.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import psutil

from edgeplane.artifacts import reference
from edgeplane.artifacts.registry_config import RegistryConfig
from edgeplane.clock import Clock
from edgeplane.errors import EdgeplaneError, TaskFailure
from edgeplane.model.service import HealthCheck
from edgeplane.runtimes.base import Handle
from edgeplane.runtimes.bundle import container_id, runtime_config
from edgeplane.runtimes.cgroups import accounted_disks, usage_sample
from edgeplane.runtimes.images import ImageStore
from edgeplane.runtimes.probe import exec_probe, probe_in_netns
from edgeplane.runtimes.pull import PULLED_DIR, ImagePuller
from edgeplane.runtimes.spec import RunSpec
from edgeplane.runtimes.supervised import (
    GRACE_S,
    Attempt,
    SupervisedRuntime,
    process_alive,
    spawn,
)

if TYPE_CHECKING:
    from edgeplane.chutes.network import TaskNetwork

log = logging.getLogger(__name__)

#: runc's own failure to start the container, as it logs it on stderr.
_RUNC_FAILED = re.compile(r'msg="runc run failed: (.*)"')
#: the file in a bundle naming the attempt's network lease (``TaskNetwork``)
NETWORK_FILE = "network"
#: the reason a task fails with when it asks for a network its worker cannot give
NO_NETWORK = "no_network"


def find_runc() -> str | None:
    """runc on PATH, or Debian's ``/usr/sbin/runc`` when PATH lacks sbin."""
    found = shutil.which("runc")
    if found is None and os.access("/usr/sbin/runc", os.X_OK):
        found = "/usr/sbin/runc"
    return found


async def runc_output(argv: list[str]) -> str:
    """The stdout of one runc command (``argv`` whole), '' when it fails: the container
    may be gone. Shared by task containers and chutes."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await process.communicate()
    return out.decode(errors="replace") if process.returncode == 0 else ""


@dataclass(eq=False, kw_only=True)
class _Container(Attempt):
    """One attempt: ``process`` is the shell running its ``runc run``, ``dir`` its bundle;
    after a recover ``pid`` is that shell (or the container's init when the shell is gone
    and the container still runs)."""

    cid: str
    cpu: tuple[float, float] | None = None  # (cpu ns, wall s) of the last stats sample
    #: its network lease (None: loopback only)
    net: str | None = None


class ContainerRuntime(SupervisedRuntime[_Container]):
    """Runs ``container`` tasks: ``spec.image`` (``name[:tag]`` in ``images_dir``, default
    ``<data_dir>/images``, or ``oci://…`` pulled from its registry with ``registries``'
    settings: ``pull.py``) with ``spec.command`` (default: the image's Entrypoint + Cmd) and
    ``spec.env`` over the image's Env.

    A bad or unknown image, or no command at all, raises
    :class:`~edgeplane.errors.TaskFailure` from ``start``. Results are the host runtime's:
    ``{"stdout": ..., "exit_code": N}``, ``failed`` when N is not 0 (runc reports a process
    killed by signal S as 128 + S).
    """

    name: ClassVar[str] = "container"
    #: Repeated: a container whose ``runc run`` has not created it yet cannot be killed.
    kill_tries: ClassVar[int] = 5

    def __init__(
        self,
        data_dir: Path,
        images_dir: Path | None = None,
        *,
        runc: str | None = None,
        registries: RegistryConfig | None = None,
        grace_s: float = GRACE_S,
        poll_s: float = 0.25,
        clock: Clock | None = None,
        network: TaskNetwork | None = None,
        no_network: str = "it has no bridge network",
    ) -> None:
        """``network``: where ``network: bridge`` tasks are attached (None: such tasks
        fail, saying ``no_network``, why the worker has none)."""
        super().__init__(grace_s=grace_s, poll_s=poll_s, clock=clock)
        self.network = network
        self.no_network = no_network
        base = data_dir / "containers"
        images = images_dir if images_dir is not None else data_dir / "images"
        self.images = ImageStore(images, base / "rootfs")
        self.puller = ImagePuller(images / PULLED_DIR, registries)
        self.bundles = base / "bundles"
        self.state_dir = base / "runc"
        self.runc = runc if runc is not None else find_runc()
        self._version: str | None = None

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

    async def start_held(self, spec: RunSpec, artifact: bytes | None) -> Handle:
        if not spec.image:
            raise TaskFailure("a container task needs 'image'", field="image")
        self._claim(spec)
        if self.runc is None:
            raise TaskFailure("runc is not installed on this worker", field="runtime")
        if reference.is_oci(spec.image):
            layout = await self.puller.layout_for(spec.image)
            image = await asyncio.to_thread(self.images.resolve_layout, spec.image, layout)
        else:
            image = await asyncio.to_thread(self.images.resolve, spec.image)
        rootfs = await self.images.rootfs(image)
        cid = container_id(spec.task_id, spec.attempt, secrets.token_hex(3))
        bundle = self.bundles / cid
        # The config holds the task's env, secret env included: for the worker's user only.
        bundle.mkdir(parents=True, mode=0o700)
        net: str | None = None
        netns = spec.netns
        ports: list[dict[str, Any]] = []
        try:
            if spec.network == "bridge":
                net, netns, ports = await self._attach(spec, cid, bundle)
            config = runtime_config(
                cid=cid,
                rootfs=rootfs,
                image=image,
                command=spec.command,
                env=spec.env,
                limits=spec.limits,
                netns=netns,
                hosts_file=spec.hosts_file,
                binds=spec.binds,
                cpus=spec.cpus,
                accounted=accounted_disks(
                    [rootfs, *(Path(source) for source in (spec.binds or {}).values())]
                ),
            )
            fd = os.open(bundle / "config.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(config))
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            deadline = self._deadline(spec)
            loop = asyncio.get_running_loop()
            container = _Container(spec, bundle, loop.create_future(), deadline, cid=cid, net=net)
            try:
                container.process, container.gate = await spawn(
                    self._runc("run", "--bundle", str(bundle), cid), bundle
                )
            except OSError as exc:
                raise TaskFailure(
                    f"cannot run runc: {exc.strerror or exc}", field="runtime"
                ) from None
        except BaseException:
            await self._detach(net)
            shutil.rmtree(bundle, ignore_errors=True)
            raise
        container.pid = container.process.pid
        with contextlib.suppress(psutil.Error):
            container.created = psutil.Process(container.pid).create_time()
        self._adopt(container)
        log.debug("container started", extra={"task_id": spec.task_id, "container": cid})
        state = self._state(container)
        if ports:
            state["ports"] = ports
        return Handle(spec.task_id, spec.attempt, self.name, state)

    async def _attach(
        self, spec: RunSpec, cid: str, bundle: Path
    ) -> tuple[str, str, list[dict[str, Any]]]:
        """The attempt's network lease: its name, its namespace and its published ports
        (``name``, ``port``, ``protocol``, ``host_port`` each)."""
        if self.network is None:
            raise TaskFailure(
                f"this worker cannot give containers a network: {self.no_network}",
                field="network",
                reason=NO_NETWORK,
            )
        name = self.network.name(cid)
        # Named in the bundle first: whatever happens next, a release finds the lease.
        (bundle / NETWORK_FILE).write_text(name)
        wanted = [(p.port, p.protocol) for p in spec.ports]
        try:
            found = await asyncio.to_thread(self.network.attach, name, wanted)
        except EdgeplaneError as exc:
            raise TaskFailure(
                f"cannot attach the container to the network: {exc.detail}",
                field="network",
                reason=NO_NETWORK,
            ) from None
        ports = [
            {"name": p.name, "port": p.port, "protocol": p.protocol, "host_port": node}
            for p, node in zip(spec.ports, found.node_ports, strict=True)
        ]
        return name, found.netns_path, ports

    async def _detach(self, net: str | None) -> None:
        if net is None or self.network is None:
            return
        try:
            await asyncio.to_thread(self.network.detach, net)
        except EdgeplaneError as exc:  # left in network.json: the next detach of it retries
            log.warning(
                "cannot release a container's network", extra={"lease": net, "error": exc.detail}
            )

    async def probe(self, handle: Handle, check: HealthCheck) -> str | None:
        container = self._running(handle)
        if container is None:
            return "the container is not running"
        if check.exec is not None:
            return await exec_probe(self._runc("exec", container.cid, *check.exec), check.timeout_s)
        try:
            current = json.loads(await self._call("state", container.cid) or "{}")
            pid = int(current.get("pid", 0)) if current.get("status") == "running" else 0
        except (ValueError, TypeError, AttributeError):
            pid = 0
        if pid <= 0:
            return "the container is not running"
        if check.http is not None:
            port, path = check.http.port, check.http.path
        else:
            assert check.tcp is not None  # (exactly one kind: HealthCheck checks it)
            port, path = check.tcp.port, None
        return await asyncio.to_thread(
            probe_in_netns, pid, port=port, timeout_s=check.timeout_s, http_path=path
        )

    async def stats(self, handle: Handle) -> dict[str, float]:
        """CPU, memory and storage io of the container's cgroup, from ``runc events
        --stats`` (io: bytes read and written since it started, summed over disks)."""
        container = self._running(handle)
        if container is None:
            return {}
        said = await self._call("events", "--stats", container.cid)
        sampled = usage_sample(said, container.cpu, self._clock.monotonic())
        if sampled is None:
            return {}
        found, container.cpu = sampled
        return found

    async def recover(self, state: dict[str, Any]) -> Handle | None:
        """Re-attach to an attempt a previous worker process started.

        While the shell running its ``runc run`` lives, that shell is polled; once it has
        ended, the outcome comes from the exit status it recorded in the bundle and the
        logs there, as for host tasks. When only the container is left running (its
        ``runc run`` was killed), its init is polled and its exit status is unknown.
        None when nothing of the attempt is left: its container is deleted if runc still
        has it.
        """
        try:
            # an older version's state holds a whole Assignment: RunSpec ignores the rest
            spec = RunSpec.model_validate(state["spec"])
            cid, bundle = str(state["container"]), Path(state["bundle"])
            deadline = state.get("deadline")
            pid, created = int(state.get("pid", 0)), float(state.get("create_time", 0.0))
        except (KeyError, TypeError, ValueError):
            return None
        if not process_alive(pid, created):
            pid, created = 0, 0.0
            try:
                current = json.loads(await self._call("state", cid))
                if current.get("status") == "running":
                    pid = int(current.get("pid", 0))
            except (ValueError, TypeError, AttributeError):
                pass
        if pid <= 0 and not await asyncio.to_thread(bundle.is_dir):
            await self._call("delete", "--force", cid)
            net = state.get("net")
            await self._detach(net if isinstance(net, str) else None)
            return None
        loop = asyncio.get_running_loop()
        net = state.get("net")
        container = _Container(
            spec,
            bundle,
            loop.create_future(),
            deadline,
            pid=pid,
            created=created,
            cid=cid,
            net=net if isinstance(net, str) else None,
        )
        self._adopt(container)
        return Handle(spec.task_id, spec.attempt, self.name, dict(state))

    async def close(self) -> None:
        await super().close()
        await self.puller.close()

    # --- hooks --------------------------------------------------------------------------

    def _parent(self) -> Path:
        return self.bundles

    def _prefix(self, task_id: str, attempt: int) -> str:
        return container_id(task_id, attempt, "")

    def _directory(self, state: dict[str, Any]) -> Path | None:
        found = state.get("bundle")
        if not isinstance(found, str) or Path(found).parent != self.bundles:
            return None
        return Path(found)

    async def release(self, handle: Handle) -> None:
        if not handle.state:  # the worker died mid-start: the bundle names its lease
            prefix = self._prefix(handle.task_id, handle.attempt)
            for bundle in self.bundles.glob(glob.escape(prefix) + "*"):
                if "-" in bundle.name.removeprefix(prefix):
                    continue  # another attempt's (a longer attempt number)
                with contextlib.suppress(OSError):
                    await self._detach((bundle / NETWORK_FILE).read_text().strip() or None)
        await super().release(handle)

    async def _forget(self, state: dict[str, Any]) -> None:
        cid = state.get("container")
        if isinstance(cid, str) and cid and (self.state_dir / cid).exists():
            await self._call("delete", "--force", cid)
        net = state.get("net")
        await self._detach(net if isinstance(net, str) else None)

    def _details(self, container: _Container) -> dict[str, Any]:
        return {"container": container.cid, "bundle": str(container.dir)}

    async def _signal(self, container: _Container, sig: signal.Signals) -> None:
        await self._call("kill", container.cid, sig.name.removeprefix("SIG"))

    async def _gone(self, container: _Container, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited(container)), within)
            return True
        return False

    def _left_running(self, container: _Container) -> bool:
        # The init's exit ends the container (the kernel kills the rest of its pid
        # namespace), and a kill that gave up on it is not started again.
        return False

    def _exit_error(self, exit_code: int, stderr: str) -> str:
        runc_failed = _RUNC_FAILED.search(stderr)
        if runc_failed is not None:
            return "cannot start the container: " + runc_failed.group(1).replace('\\"', '"')
        return f"exit code {exit_code}"

    async def _release(self, container: _Container) -> None:
        if (self.state_dir / container.cid).exists():  # runc run cleans up on its own
            await self._call("delete", "--force", container.cid)
        await self._detach(container.net)
        container.net = None

    def _survived(self, container: _Container) -> None:
        log.error("container will not die", extra={"container": container.cid})

    # --- internals ----------------------------------------------------------------------

    def _runc(self, *args: str) -> list[str]:
        assert self.runc is not None  # start refuses to run without it
        return [self.runc, "--root", str(self.state_dir), *args]

    async def _call(self, *args: str) -> str:
        """One runc command's stdout ('' when it fails: the container may be gone)."""
        return "" if self.runc is None else await runc_output(self._runc(*args))

    def _state(self, container: _Container) -> dict[str, Any]:
        return {
            "spec": container.spec.model_dump(mode="json"),
            "container": container.cid,
            "bundle": str(container.dir),
            "deadline": container.deadline,
            "pid": container.pid,
            "create_time": container.created,
            "net": container.net,
        }
