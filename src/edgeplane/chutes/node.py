"""Chutes on one node: long-lived containers on runc, managed through the change queue.

Each service of a chute is one container ``ch-<chute>-<service>-<generation>`` run
**detached** (``runc run --detach``) under ``<data>/chutes/runc``: it belongs to no worker
process, so a worker that stops or crashes leaves it running and the next one re-attaches
by asking runc (same container, same pid). Its output goes to
``<data>/chutes/<name>/logs/<service>.log``; the chute's config is a JSON file in
``<data>/chutes/<name>/config/`` mounted read-only at ``/run/chute`` in every service.

``<data>/chutes/<name>/state.json`` is the chute as installed: manifest, generation,
whether it should run, config. Every mutation is a change (``changes.py``) whose steps each
have an undo, so a failing install leaves no container, file or port behind, and a
failing update leaves the old version running. An update starts the new generation beside
the old one and stops the old one only once the new one is healthy.

Networking and resource enforcement plug in through :class:`Network` and
:class:`Enforcer`; until they are given, a chute has the container runtime's network
(loopback only) and the cgroup limits of ``bundle.resources``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import platform
import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import psutil

from edgeplane.artifacts import reference
from edgeplane.artifacts.registry_config import RegistryConfig
from edgeplane.chutes import logfiles
from edgeplane.chutes.changes import Change, ChangeQueue, Step, write_atomic
from edgeplane.chutes.events import EventLog
from edgeplane.chutes.logfiles import Follower
from edgeplane.chutes.manifest import Healthcheck, Manifest, Service, start_order
from edgeplane.clock import Clock, SystemClock
from edgeplane.errors import Conflict, EdgeplaneError, Invalid, NotFound, TaskFailure
from edgeplane.model import Limits
from edgeplane.monitoring import Monitoring
from edgeplane.protocol.messages import MAX_REPORTED_CHUTES, ChuteEventKind
from edgeplane.runtimes.bundle import runtime_config
from edgeplane.runtimes.cgroups import CpuMark, usage_sample
from edgeplane.runtimes.container import find_runc, runc_output
from edgeplane.runtimes.images import ImageStore
from edgeplane.runtimes.probe import exec_probe, probe_in_netns
from edgeplane.runtimes.pull import PULLED_DIR, ImagePuller

log = logging.getLogger(__name__)

CONFIG_MOUNT = "/run/chute"
#: the chute's token for its node's API, in ``CONFIG_MOUNT``
TOKEN_NAME = "token"
#: A service with no health check is healthy once it has kept running this long.
SETTLE_S = 1.0
#: How long a new chute may take to become healthy before its change fails.
HEALTHY_WITHIN_S = 30.0
MAX_LOG_BYTES = 1 << 20
#: An unhealthy service's chute is restarted at most this often (a restart that does not
#: heal it is not repeated in a tight loop).
RESTART_BACKOFF_S = 60.0
#: How often the services' log files are checked for rotation.
LOG_CHECK_S = 5.0
#: How often the running services are checked for an exit or an OOM kill (a process
#: check and a cgroup file read each; runc is asked only when one looks gone).
EXIT_CHECK_S = 1.0


class Network(Protocol):
    """A chute's networking (``network.py``'s ``ChuteNetwork``); the default gives
    loopback only. Keyed by chute, service and generation: the generations of a service
    that an update runs side by side each have their own namespace and address, and the
    port mappings move to the new one once it is healthy (see ``_plan_update``)."""

    async def prepare(self, chute: str, service: str, gen: str) -> str | None:
        """The path of a network namespace for the service to join; None: a new one."""
        ...

    async def attach(
        self, manifest: Manifest, service: Service, pid: int, gen: str, *, mapped: bool = True
    ) -> str | None:
        """Connect the running service, with its port mappings when ``mapped``; its
        address (None: not reachable from the node)."""
        ...

    async def switch(self, manifest: Manifest, gen: str) -> None:
        """Move every service's port mappings and names to generation ``gen``."""
        ...

    async def address(self, chute: str, service: str, gen: str) -> str | None: ...

    async def detach(self, chute: str, service: str, gen: str) -> None:
        """Undo prepare and attach (idempotent: also for a service never prepared)."""
        ...

    def addresses(self, chute: str) -> set[str]:
        """Every address the chute's services hold (each generation's)."""
        ...


class Enforcer(Protocol):
    """A chute's resource policies (``resources.py``), applied to its runc config."""

    def apply(self, config: dict[str, Any], manifest: Manifest, service: Service) -> None: ...

    def remove(self, chute: str) -> None:
        """The chute is deleted (or its install undone): what ``apply`` made for it goes."""
        ...


class Usage(Protocol):
    """Where the running services' usage samples go: the worker's monitor
    (``worker/monitor.py``), which samples each by the chute's profile and sends them."""

    def watch_chute(
        self,
        chute: str,
        service: str,
        profile: Monitoring,
        sample: Callable[[], Awaitable[dict[str, float]]],
    ) -> None: ...

    def unwatch_chute(self, chute: str, service: str) -> None: ...


class LoopbackNetwork:
    async def prepare(self, chute: str, service: str, gen: str) -> str | None:
        return None

    async def attach(
        self, manifest: Manifest, service: Service, pid: int, gen: str, *, mapped: bool = True
    ) -> str | None:
        return None

    async def switch(self, manifest: Manifest, gen: str) -> None:
        return None

    async def address(self, chute: str, service: str, gen: str) -> str | None:
        return None

    async def detach(self, chute: str, service: str, gen: str) -> None:
        return None

    def addresses(self, chute: str) -> set[str]:
        return set()


class CgroupLimits:
    """cpu shares, memory and pids as cgroup limits (``bundle.resources``)."""

    def apply(self, config: dict[str, Any], manifest: Manifest, service: Service) -> None:
        return None

    def remove(self, chute: str) -> None:
        return None


#: What the node's real network and resource policy need (``network.py``, ``resources.py``).
HOST_TOOLS = ("ip", "nft", "tc", "mkfs.ext4")


def networking_available() -> str | None:
    """Why chutes cannot have the node's network and disk quotas here; None when they can."""
    if os.geteuid() != 0:
        return "not root"
    for tool in HOST_TOOLS:
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            return f"{tool} is not installed (scripts/system-deps.sh)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices"
    return None


@dataclass
class Watch:
    """What the health monitor of one service generation has seen."""

    healthy: bool = True
    #: checks failed in a row
    failures: int = 0
    #: restarts the node made because the service was unhealthy
    restarts: int = 0
    #: the monotonic time of the last such restart
    restarted_at: float | None = None


@dataclass
class Life:
    """What the exit watcher knows of one running service container."""

    pid: int
    #: the process's start time (a pid reused by another process is not the service)
    started: float | None
    #: OOM kills counted in its cgroup so far
    ooms: int
    exited: bool = False
    #: OOM kills seen at the last check while it still looked alive: a kill of its main
    #: process is counted in the cgroup before the process is gone, so an exit seen at
    #: the next check is that kill's (CI saw "its main process ended" after one)
    killed_last_check: bool = False


def _started(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _same_process(life: Life) -> bool:
    try:
        found = psutil.Process(life.pid)
        return found.create_time() == life.started and found.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _oom_kills(cid: str) -> int:
    """OOM kills in the container's cgroup (0 when it cannot be read)."""
    from edgeplane.chutes.resources import oom_kills

    try:
        return oom_kills(f"/edgeplane/{cid}")
    except (OSError, KeyError):
        return 0


def _container(chute: str, service: str, generation: str) -> str:
    return f"ch-{chute}-{service}-{generation}"


def _ports_free(ports: list[tuple[int, str]]) -> str | None:
    """The first host port something on this machine already listens on."""
    for port, protocol in ports:
        kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                return f"{port}/{protocol}"
    return None


def _probe_in(pid: int, check: Healthcheck) -> bool:
    """An http or tcp check from inside the service's network namespace."""
    if check.http is not None:
        why = probe_in_netns(
            pid, port=check.http.port, timeout_s=check.timeout_s, http_path=check.http.path
        )
    elif check.tcp is not None:
        why = probe_in_netns(pid, port=check.tcp.port, timeout_s=check.timeout_s)
    else:
        return False
    return why is None


class Node:
    """The chutes of one node, under ``data_dir/chutes``."""

    def __init__(
        self,
        data_dir: Path,
        images_dir: Path | None = None,
        *,
        runc: str | None = None,
        registries: RegistryConfig | None = None,
        network: Network | None = None,
        enforcer: Enforcer | None = None,
        grace_s: float = 2.0,
        settle_s: float = SETTLE_S,
        healthy_within_s: float = HEALTHY_WITHIN_S,
        restart_unhealthy: bool = True,
        restart_backoff_s: float = RESTART_BACKOFF_S,
        log_max_bytes: int = logfiles.MAX_BYTES,
        log_check_s: float = LOG_CHECK_S,
        exit_check_s: float = EXIT_CHECK_S,
        clock: Clock | None = None,
    ) -> None:
        self.root = data_dir / "chutes"
        images = images_dir if images_dir is not None else data_dir / "images"
        self.images = ImageStore(images, data_dir / "containers" / "rootfs")
        self.puller = ImagePuller(images / PULLED_DIR, registries)
        self.state_dir = self.root / "runc"
        self.runc = runc if runc is not None else find_runc()
        self.network: Network = network or LoopbackNetwork()
        self.enforcer: Enforcer = enforcer or CgroupLimits()
        self.grace_s = grace_s
        self.settle_s = settle_s
        self.healthy_within_s = healthy_within_s
        self.restart_unhealthy = restart_unhealthy
        self.restart_backoff_s = restart_backoff_s
        self.log_max_bytes = log_max_bytes
        self.log_check_s = log_check_s
        self.exit_check_s = exit_check_s
        self._log_keeper: asyncio.Task[None] | None = None
        self._exit_watcher: asyncio.Task[None] | None = None
        self.clock = clock or SystemClock()
        # the health monitors: one task per running service generation with a check
        self._watches: dict[str, Watch] = {}
        self._monitors: dict[str, asyncio.Task[None]] = {}
        #: the running services the exit watcher follows, by container id
        self._lives: dict[str, Life] = {}
        #: where the running services' usage is sampled (None: nowhere)
        self.usage: Usage | None = None
        #: (chute, service) → the container whose usage ``usage`` samples
        self._sampled: dict[tuple[str, str], str] = {}
        #: each sampled container's previous cpu reading
        self._cpu: dict[str, CpuMark] = {}
        self._reports: set[asyncio.Task[None]] = set()
        #: the chute events the worker delivers to its manager (``events.py``)
        self.events = EventLog(self.root / "events", clock=self.clock)
        self.changes = ChangeQueue(
            self.root / "changes", self._plan, clock=self.clock, on_end=self._change_ended
        )

    async def start(self) -> None:
        """Re-attach: chutes keep running; interrupted changes are finished or undone."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await asyncio.to_thread(self.events.open)
        await self.changes.start()
        for name in self.names():
            state = self._load(name)
            if state is None or not state.get("run", True):
                continue
            manifest = Manifest.model_validate(state["manifest"])
            for service in manifest.services:
                if (await self._running(_container(name, service.name, state["generation"])))[0]:
                    self._watch(manifest, service, str(state["generation"]))
        # every chute as this worker found it: the manager's view starts from here
        await self._report("snapshot")
        self._log_keeper = asyncio.create_task(self._keep_logs(), name="chute logs")
        self._exit_watcher = asyncio.create_task(self._watch_exits(), name="chute exits")

    async def _keep_logs(self) -> None:
        """Rotate every service's log that has reached ``log_max_bytes`` (one task)."""
        while True:
            await asyncio.sleep(self.log_check_s)
            for name in self.names():
                for path in (self._dir(name) / "logs").glob("*.log"):
                    try:
                        await asyncio.to_thread(logfiles.rotate, path, self.log_max_bytes)
                    except OSError as exc:  # a full disk must not end the keeper
                        log.warning("cannot rotate %s: %s", path, exc)

    async def close(self) -> None:
        for task in (self._log_keeper, self._exit_watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for cid in list(self._monitors):
            await self._unwatch(cid)
        self._sample_usage({})
        if self._reports:  # (each ends on its own: a status read and a file write)
            await asyncio.wait(list(self._reports), timeout=5)
        await self.changes.close()
        await self.puller.close()

    # --- reading ----------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        return self.root / "installed" / name

    def _load(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self._dir(name) / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def names(self) -> list[str]:
        base = self.root / "installed"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / "state.json").exists())

    async def status(self, name: str, *, probe: bool = True) -> dict[str, Any]:
        state = self._load(name)
        if state is None:
            if self.changes.active(name):
                return {"name": name, "version": None, "state": "installing", "services": []}
            raise NotFound(f"no chute {name!r}", field="name")
        manifest = Manifest.model_validate(state["manifest"])
        pinned = _pinned(state)
        services = []
        all_running = all_healthy = True
        for service in manifest.services:
            cid = _container(name, service.name, state["generation"])
            running, pid = await self._running(cid)
            all_running &= running
            watch = self._watches.get(cid)
            if watch is not None and cid in self._monitors:
                healthy = running and watch.healthy
            else:
                healthy = running and (not probe or await self._healthy_once(pid, cid, service))
            all_healthy &= healthy or not running
            services.append(
                {
                    "name": service.name,
                    "state": "running" if running else "stopped",
                    "image": service.image,
                    "pinned": pinned.get(service.name),
                    "address": state.get("addresses", {}).get(service.name),
                    "ports": [p.model_dump() for p in service.ports],
                    "healthy": healthy,
                    "health_restarts": watch.restarts if watch is not None else 0,
                    "container": cid,
                    "pid": pid if running else None,
                }
            )
        if self.changes.active(name) and state.get("phase") == "installing":
            phase = "installing"
        elif not state.get("run", True):
            phase = "stopped"
        else:
            phase = ("running" if all_healthy else "unhealthy") if all_running else "failed"
        return {
            "name": name,
            "version": manifest.version,
            "description": manifest.description,
            "state": phase,
            "services": services,
            "resources": manifest.resources.model_dump(),
            "web": None if manifest.web is None else manifest.web.model_dump(),
            "change_id": state.get("change_id"),
            "source": state.get("source"),
        }

    async def listing(self) -> list[dict[str, Any]]:
        return [await self.status(name, probe=False) for name in self.names()]

    def config(self, name: str) -> dict[str, Any]:
        state = self._load(name)
        if state is None:
            raise NotFound(f"no chute {name!r}", field="name")
        return dict(state.get("config", {}))

    def log_file(self, name: str, service: str | None) -> Path:
        state = self._load(name)
        if state is None:
            raise NotFound(f"no chute {name!r}", field="name")
        manifest = Manifest.model_validate(state["manifest"])
        wanted = service or manifest.services[0].name
        if wanted not in {s.name for s in manifest.services}:
            raise NotFound(f"chute {name!r} has no service {wanted!r}", field="service")
        return self._dir(name) / "logs" / f"{wanted}.log"

    def logs(self, name: str, service: str | None = None, tail: int = MAX_LOG_BYTES) -> str:
        path = self.log_file(name, service)
        try:
            with path.open("rb") as handle:
                handle.seek(max(0, path.stat().st_size - tail))
                return handle.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    async def follow(
        self, name: str, service: str | None = None, *, keep: Callable[[], bool] = lambda: True
    ) -> AsyncIterator[str]:
        """The log's text from its tail on, as it grows, until the chute is deleted, or
        ``keep()`` is false (or the caller stops)."""
        follower = Follower(self.log_file(name, service))
        while keep():
            got = False
            for data in follower.read():
                got = True
                yield data.decode(errors="replace")
            if not got:
                if self._load(name) is None and not self.changes.active(name):
                    return  # deleted: its log is gone with it
                await asyncio.sleep(0.25)  # a file has no change notification we can await here

    async def info(self) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        addresses = {
            nic: [a.address for a in found if a.family in (socket.AF_INET, socket.AF_INET6)]
            for nic, found in psutil.net_if_addrs().items()
        }
        return {
            "hardware": {
                "cpus": psutil.cpu_count() or 1,
                "memory_mb": memory.total // (1 << 20),
                "machine": platform.machine(),
            },
            "os": {"system": platform.system(), "release": platform.release()},
            "network": {"hostname": socket.gethostname(), "interfaces": addresses},
            "chutes": [
                {"name": c["name"], "version": c["version"], "state": c["state"]}
                for c in await self.listing()
            ],
            "runc": self.runc is not None,
        }

    # --- events for the manager (``events.py``) ----------------------------------------

    async def _report(
        self,
        kind: ChuteEventKind,
        name: str = "",
        *,
        service: str | None = None,
        change_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Record a chute event with the chute's status after it (every chute's, for a
        snapshot). A node that cannot write it logs so and goes on: its chutes matter more."""
        fields: dict[str, Any] = {"service": service, "change_id": change_id, "detail": detail}
        try:
            if kind == "snapshot":
                fields["chutes"] = (await self.listing())[:MAX_REPORTED_CHUTES]
            elif kind != "deleted":
                with contextlib.suppress(NotFound):
                    fields["status"] = await self.status(name, probe=False)
            if detail is not None:
                fields["detail"] = detail[:1000]
            await self.events.emit(kind, name, **fields)
        except (OSError, ValueError) as exc:
            log.warning("chute event %s of %s not recorded: %s", kind, name or "the node", exc)

    async def _report_surely(self, kind: ChuteEventKind, name: str, **fields: Any) -> None:
        """:meth:`_report` from a health monitor, which a change may cancel at any await
        (its stop step stops the monitor): the report goes on to its end regardless."""
        task = asyncio.create_task(self._report(kind, name, **fields))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)
        await asyncio.shield(task)

    async def _change_ended(self, change: Change) -> None:
        if change.state == "done" and change.kind != "delete":
            await self._learn(change.chute)
        if change.state == "done":
            kind: ChuteEventKind = "deleted" if change.kind == "delete" else "change_done"
            detail = f"{change.kind} done"
        else:
            kind, detail = "change_failed", f"{change.kind} {change.state}: {change.error}"
        await self._report(kind, change.chute, change_id=change.id, detail=detail)

    async def _watch_exits(self) -> None:
        """Report a running service that exits, or has a process OOM-killed, while no
        change is at work on its chute (a change's own stops are the change's events)."""
        while True:
            await asyncio.sleep(self.exit_check_s)
            try:
                await self._check_exits()
                if self.events.resync:  # events were dropped: a whole view instead
                    self.events.resync = False
                    await self._report("snapshot")
            except Exception:  # one bad check must not end the watcher
                log.exception("checking the chutes' services failed")

    async def _check_exits(self) -> None:
        followed: set[str] = set()
        sampled: dict[tuple[str, str], tuple[str, Monitoring]] = {}
        for name in self.names():
            state = self._load(name)
            if (
                state is None
                or not state.get("run", True)
                or state.get("phase") == "installing"
                or self.changes.active(name)
            ):
                continue  # forgotten below: learnt afresh once the chute runs on its own
            manifest = Manifest.model_validate(state["manifest"])
            for service in manifest.services:
                cid = _container(name, service.name, str(state["generation"]))
                followed.add(cid)
                await self._check_service(name, service.name, cid, manifest)
                life, profile = self._lives.get(cid), manifest.profile()
                if life is not None and not life.exited and profile is not None:
                    sampled[(name, service.name)] = (cid, profile)
        for cid in [cid for cid in self._lives if cid not in followed]:
            del self._lives[cid]
        self._sample_usage(sampled)

    def _sample_usage(self, running: dict[tuple[str, str], tuple[str, Monitoring]]) -> None:
        """Have ``usage`` sample exactly the ``running`` services, each (chute, service)
        as its container now: one that exited, is being changed or whose chute went stops
        being sampled; an update's new generation is sampled afresh (its own profile)."""
        if self.usage is None:
            return
        for key in [key for key in self._sampled if key not in running]:
            self._cpu.pop(self._sampled.pop(key), None)
            self.usage.unwatch_chute(*key)
        for key, (cid, profile) in running.items():
            if self._sampled.get(key) != cid:
                if key in self._sampled:
                    self._cpu.pop(self._sampled[key], None)
                self._sampled[key] = cid
                self.usage.watch_chute(*key, profile, partial(self.usage_of, cid))

    async def usage_of(self, cid: str) -> dict[str, float]:
        """The service container's cgroup usage now, as a container task's sample
        (``runc events --stats``; empty when the container is gone)."""
        said = await self._call("events", "--stats", cid)
        sampled = usage_sample(said, self._cpu.get(cid), self.clock.monotonic())
        if sampled is None:
            return {}
        values, self._cpu[cid] = sampled
        return values

    async def _learn(self, name: str) -> None:
        """Follow the chute's services from now (a change left them as they should be:
        an exit right after it is one to report)."""
        state = self._load(name)
        if state is None or not state.get("run", True):
            return
        for service in Manifest.model_validate(state["manifest"]).services:
            cid = _container(name, service.name, str(state["generation"]))
            await self._first_look(cid)

    async def _first_look(self, cid: str) -> Life:
        running, pid = await self._running(cid)
        ooms = await asyncio.to_thread(_oom_kills, cid)
        life = self._lives[cid] = Life(pid, _started(pid) if running else None, ooms, not running)
        return life

    async def _check_service(self, name: str, service: str, cid: str, manifest: Manifest) -> None:
        life = self._lives.get(cid)
        if life is None:
            # first seen (the worker started): one found exited already is in the snapshot
            await self._first_look(cid)
            return
        if life.exited:
            return
        alive = _same_process(life)
        if not alive:
            running, pid = await self._running(cid)  # runc's word before an exit is told
            if running:  # (its process looked gone: re-learnt)
                life.pid, life.started, alive = pid, _started(pid), True
        ooms = await asyncio.to_thread(_oom_kills, cid)
        killed = ooms - life.ooms
        life.ooms = ooms
        if not alive:
            life.exited = True
        # a change that began meanwhile stopped it on purpose: not an event of its own
        state = self._load(name)
        if self.changes.active(name) or state is None or not state.get("run", True):
            self._lives.pop(cid, None)
            return
        limit = manifest.resources.memory_mb
        if killed > 0:
            what = f"{killed} process(es) OOM-killed at the memory limit of {limit} MB"
            await self._report(
                "oom_killed",
                name,
                service=service,
                detail=what + ("; the service exited" if not alive else ""),
            )
        oom_exit = killed > 0 or life.killed_last_check
        life.killed_last_check = killed > 0
        if not alive:
            why = "OOM-killed" if oom_exit else "its main process ended"
            log.warning("chute %s service %s exited: %s", name, service, why)
            await self._report("exited", name, service=service, detail=why)

    # --- submitting changes -----------------------------------------------------------

    async def install(self, manifest: Manifest, source: dict[str, str] | None = None) -> Change:
        """``source``: where the manifest came from (the chute store's ``NAME@VERSION``),
        recorded in the change and the chute's status."""
        if self._load(manifest.name) is not None or self.changes.active(manifest.name):
            raise Conflict(f"chute {manifest.name!r} is already installed", field="name")
        args = {"manifest": manifest.model_dump(mode="json"), "generation": secrets.token_hex(3)}
        return await self.changes.submit("install", manifest.name, args, source)

    async def update(self, manifest: Manifest, source: dict[str, str] | None = None) -> Change:
        self._known(manifest.name)
        args = {"manifest": manifest.model_dump(mode="json"), "generation": secrets.token_hex(3)}
        return await self.changes.submit("update", manifest.name, args, source)

    async def act(self, name: str, action: str) -> Change:
        self._known(name)
        if action not in ("start", "stop", "restart", "delete"):
            raise Invalid(f"unknown action {action!r}", field="action")
        return await self.changes.submit(action, name)

    async def set_config(self, name: str, config: dict[str, Any]) -> Change:
        self._known(name)
        return await self.changes.submit("config", name, {"config": config})

    def _known(self, name: str) -> None:
        if self._load(name) is None and not self.changes.active(name):
            raise NotFound(f"no chute {name!r}", field="name")

    # --- plans --------------------------------------------------------------------------

    def _plan(self, change: Change) -> list[Step]:
        name = change.chute
        if change.kind == "install":
            return self._plan_install(change)
        if change.kind == "update":
            return self._plan_update(change)
        # The state as the change found it: after a restart, the journal's copy.
        state = change.args.get("before") or self._load(name)
        if state is None:
            raise NotFound(f"no chute {name!r}", field="name")
        change.args["before"] = state
        manifest = Manifest.model_validate(state["manifest"])
        gen = str(state["generation"])
        pins = _pinned(state)
        order = start_order(list(manifest.services))

        def starts() -> list[Step]:
            steps = [
                Step(
                    f"start {s}",
                    self._start_action(manifest, s, gen, change.id, pins),
                    self._stop_action(name, s, gen),
                )
                for s in order
            ]
            steps.append(
                Step("wait until healthy", lambda: self._wait_healthy(manifest, gen), _nothing)
            )
            return steps

        def stops() -> list[Step]:
            return [
                Step(
                    f"stop {s}",
                    self._stop_action(name, s, gen),
                    self._start_action(manifest, s, gen, change.id, pins),
                )
                for s in reversed(order)
            ]

        def record(**fields: Any) -> Step:
            async def do() -> None:
                self._save(name, {**state, **fields, "change_id": change.id})

            async def undo() -> None:
                self._save(name, state)

            return Step("record " + ", ".join(f"{k}={v}" for k, v in fields.items()), do, undo)

        if change.kind == "start":
            return [*starts(), record(run=True)]
        if change.kind == "stop":
            return [record(run=False), *stops()]
        if change.kind == "restart":
            return [*stops(), *starts(), record(run=True)]
        if change.kind == "config":
            new = dict(change.args["config"])
            return [
                record(config=new),
                Step(
                    "write config",
                    self._write_config(name, new),
                    self._write_config(name, state.get("config", {})),
                ),
            ]
        if change.kind == "delete":
            # Deleting is past undoing from its first step: a crash finishes it.
            steps = [
                Step(f"stop {s}", self._stop_action(name, s, gen), None) for s in reversed(order)
            ]
            steps.append(Step("remove files", self._remove(name), None))
            return steps
        raise Invalid(f"unknown change kind {change.kind!r}", field="kind")

    def _plan_install(self, change: Change) -> list[Step]:
        manifest = Manifest.model_validate(change.args["manifest"])
        gen = str(change.args["generation"])
        name = manifest.name

        async def check() -> None:
            await self._check_ports(manifest, exclude=None)

        async def write() -> None:
            state = self._fresh_state(manifest, gen, change, phase="installing")
            self._save(name, state)
            await self._write_config(name, state["config"])()

        async def commit() -> None:
            state = self._load(name) or self._fresh_state(manifest, gen, change, "installing")
            self._save(name, {**state, "phase": "installed"})

        steps = [
            Step("check ports", check, _nothing),
            Step("prepare images", lambda: self._prepare_images(manifest, change), _nothing),
            Step("write files", write, self._remove(name)),
        ]
        for s in start_order(list(manifest.services)):
            steps.append(
                Step(
                    f"start {s}",
                    self._start_action(manifest, s, gen, change.id, change.images),
                    self._stop_action(name, s, gen),
                )
            )
        steps.append(
            Step("wait until healthy", lambda: self._wait_healthy(manifest, gen), _nothing)
        )
        steps.append(Step("commit", commit, _nothing))
        return steps

    def _plan_update(self, change: Change) -> list[Step]:
        manifest = Manifest.model_validate(change.args["manifest"])
        name = manifest.name
        before = change.args.get("before") or self._load(name)
        if before is None:
            raise NotFound(f"no chute {name!r}", field="name")
        change.args["before"] = before
        old = Manifest.model_validate(before["manifest"])
        old_gen, gen = str(before["generation"]), str(change.args["generation"])

        async def check() -> None:
            held: set[tuple[int, str]] = {
                (p.host, p.protocol) for s in old.services for p in s.ports
            }
            await self._check_ports(manifest, exclude=name, held=held)

        async def switch() -> None:
            state = self._fresh_state(manifest, gen, change, phase="installed")
            for service in manifest.services:
                address = await self.network.address(name, service.name, gen)
                if address is not None:
                    state["addresses"][service.name] = address
            state["config"] = {**manifest.config, **before.get("config", {})}
            self._save(name, state)
            await self._write_config(name, state["config"])()

        async def switch_back() -> None:
            self._save(name, before)
            await self._write_config(name, before.get("config", {}))()

        steps = [
            Step("check ports", check, _nothing),
            Step("prepare images", lambda: self._prepare_images(manifest, change), _nothing),
        ]
        # Each generation has its own namespace and address: the new one starts beside
        # the old one without the port mappings, which move over once it is healthy.
        for s in start_order(list(manifest.services)):
            steps.append(
                Step(
                    f"start new {s}",
                    self._start_action(manifest, s, gen, change.id, change.images, mapped=False),
                    self._stop_action(name, s, gen),
                )
            )
        steps.append(
            Step("wait until healthy", lambda: self._wait_healthy(manifest, gen), _nothing)
        )
        steps.append(
            Step(
                "move port mappings",
                lambda: self.network.switch(manifest, gen),
                lambda: self.network.switch(old, old_gen),
            )
        )
        steps.append(Step("switch to the new version", switch, switch_back))
        # The old version is stopped only now; from here there is no going back.
        for s in reversed(start_order(list(old.services))):
            steps.append(Step(f"stop old {s}", self._stop_action(name, s, old_gen), None))
        return steps

    # --- actions (each idempotent) ----------------------------------------------------------

    def _fresh_state(
        self, manifest: Manifest, gen: str, change: Change, phase: str
    ) -> dict[str, Any]:
        return {
            "manifest": manifest.model_dump(mode="json"),
            "generation": gen,
            "run": True,
            "phase": phase,
            "config": dict(manifest.config),
            "change_id": change.id,
            "source": change.source,
            "images": dict(change.images),
            "addresses": {},
        }

    def _save(self, name: str, state: dict[str, Any]) -> None:
        directory = self._dir(name)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(directory / "state.json", json.dumps(state).encode())

    def _write_config(self, name: str, config: dict[str, Any]) -> Any:
        async def run() -> None:
            directory = self._dir(name) / "config"
            directory.mkdir(parents=True, exist_ok=True, mode=0o755)
            write_atomic(directory / "config.json", json.dumps(config).encode())
            os.chmod(directory / "config.json", 0o644)

        return run

    def _remove(self, name: str) -> Any:
        async def run() -> None:
            for cid in [cid for cid in self._watches if cid.startswith(f"ch-{name}-")]:
                await self._unwatch(cid)
                del self._watches[cid]
            await asyncio.to_thread(self.enforcer.remove, name)
            await asyncio.to_thread(shutil.rmtree, self._dir(name), True)

        return run

    async def _check_ports(
        self,
        manifest: Manifest,
        exclude: str | None,
        held: set[tuple[int, str]] | None = None,
    ) -> None:
        """Each host port free: no other chute maps it and nothing on the node listens
        on it (but the ports ``held`` by the version an update replaces)."""
        wanted = {(p.host, p.protocol) for s in manifest.services for p in s.ports}
        for other in self.names():
            if other in (manifest.name, exclude):
                continue
            state = self._load(other)
            if state is None:
                continue
            taken = Manifest.model_validate(state["manifest"])
            clash = wanted & {(p.host, p.protocol) for s in taken.services for p in s.ports}
            if clash:
                port, protocol = sorted(clash)[0]
                raise Conflict(
                    f"host port {port}/{protocol} is taken by chute {other!r}",
                    field="services.ports",
                )
        if wanted - (held or set()):
            busy = await asyncio.to_thread(_ports_free, sorted(wanted - (held or set())))
            if busy is not None:
                raise Conflict(f"host port {busy} is in use on this node", field="services.ports")

    async def _prepare_images(self, manifest: Manifest, change: Change) -> None:
        """Each service's image at hand, its root filesystem made; an ``oci://`` image
        pinned to the manifest digest its tag names now (``change.images``, kept in the
        journal and then in the chute's state): the starts of this version run exactly
        that, from the node's copy, with no registry or proxy asked again."""
        pins: dict[str, str] = {}
        for service in manifest.services:
            ref = service.image
            if reference.is_oci(ref):
                layout = await self.puller.layout_for(ref)
                # the layout is named by the manifest digest the reference resolved to
                ref = str(reference.parse(ref).with_digest("sha256:" + layout.name))
                pins[service.name] = ref
            await self.images.rootfs(await self._image(ref))
        change.images.clear()
        change.images.update(pins)

    async def _image(self, ref: str) -> Any:
        if reference.is_oci(ref):
            layout = await self.puller.layout_for(ref)
            return await asyncio.to_thread(self.images.resolve_layout, ref, layout)
        return await asyncio.to_thread(self.images.resolve, ref)

    def _start_action(
        self,
        manifest: Manifest,
        service_name: str,
        gen: str,
        change_id: str,
        pins: Mapping[str, str],
        *,
        mapped: bool = True,
    ) -> Any:
        """``pins``: the version's pinned images by service (read when the step runs: an
        install's or update's are filled in by its "prepare images" step)."""

        async def run() -> None:
            service = manifest.service(service_name)
            image = pins.get(service_name, service.image)
            await self._start_service(manifest, service, gen, image, mapped=mapped)
            await self._report("started", manifest.name, service=service_name, change_id=change_id)

        return run

    def _stop_action(self, chute: str, service: str, gen: str) -> Any:
        async def run() -> None:
            await self._stop_service(chute, service, gen)

        return run

    async def _start_service(
        self, manifest: Manifest, service: Service, gen: str, ref: str, *, mapped: bool = True
    ) -> None:
        """Start ``service`` of generation ``gen`` from image ``ref`` (its pinned image)."""
        if self.runc is None:
            raise TaskFailure("runc is not installed on this node", field="runtime")
        cid = _container(manifest.name, service.name, gen)
        running, _ = await self._running(cid)
        if running:
            self._watch(manifest, service, gen)
            return  # a resumed change: it got this far before
        await self._call("delete", "--force", cid)
        image = await self._image(ref)
        rootfs = await self.images.rootfs(image)
        limits = Limits(
            memory_mb=manifest.resources.memory_mb,
            cpu_shares=manifest.resources.cpu_shares,
            pids=manifest.resources.pids,
        )
        config = runtime_config(
            cid=cid,
            rootfs=rootfs,
            image=image,
            command=service.command,
            env=service.env,
            limits=limits,
        )
        config["hostname"] = service.name
        config["mounts"].append(
            {
                "destination": CONFIG_MOUNT,
                "type": "bind",
                "source": str(self._dir(manifest.name) / "config"),
                "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
            }
        )
        await asyncio.to_thread(self._ensure_token, manifest.name)
        netns = await self.network.prepare(manifest.name, service.name, gen)
        if netns is not None:
            for entry in config["linux"]["namespaces"]:
                if entry["type"] == "network":
                    entry["path"] = netns
        await asyncio.to_thread(self.enforcer.apply, config, manifest, service)
        bundle = self._dir(manifest.name) / "bundles" / cid
        bundle.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(bundle / "config.json", json.dumps(config).encode())
        logs = self._dir(manifest.name) / "logs"
        logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        out = os.open(logs / f"{service.name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # Detached: runc hands these fds to the container and exits; the container
            # outlives every worker process.
            process = await asyncio.create_subprocess_exec(
                *self._runc("run", "--detach", "--bundle", str(bundle), cid),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
            code = await process.wait()
        finally:
            os.close(out)
        if code != 0:
            tail = self.logs(manifest.name, service.name, 600).strip().splitlines()
            why = tail[-1] if tail else f"runc exit {code}"
            raise TaskFailure(f"service {service.name} did not start: {why}", field="services")
        _, pid = await self._running(cid)
        address = await self.network.attach(manifest, service, pid, gen, mapped=mapped)
        if address is not None:
            state = self._load(manifest.name)
            if state is not None and state.get("generation") == gen:
                state.setdefault("addresses", {})[service.name] = address
                self._save(manifest.name, state)
        self._watch(manifest, service, gen)

    async def _stop_service(self, chute: str, service: str, gen: str) -> None:
        cid = _container(chute, service, gen)
        await self._unwatch(cid)
        running, _ = await self._running(cid)
        if running:
            await self._call("kill", cid, "TERM")
            deadline = self.clock.monotonic() + self.grace_s
            # runc gives no notice of a container's end: its state is polled
            while self.clock.monotonic() < deadline and (await self._running(cid))[0]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await self._call("kill", cid, "KILL")
        await self._call("delete", "--force", cid)
        await self.network.detach(chute, service, gen)
        await asyncio.to_thread(shutil.rmtree, self._dir(chute) / "bundles" / cid, True)

    async def _wait_healthy(self, manifest: Manifest, gen: str) -> None:
        """Until every service is running and healthy; a TaskFailure when one exits or
        never gets healthy."""
        deadline = self.clock.monotonic() + self.healthy_within_s
        settled_at = self.clock.monotonic() + self.settle_s
        for service in manifest.services:
            cid = _container(manifest.name, service.name, gen)
            check = service.healthcheck
            while True:
                running, pid = await self._running(cid)
                if not running:
                    tail = self.logs(manifest.name, service.name, 600).strip().splitlines()
                    said = f": {tail[-1]}" if tail else ""
                    raise TaskFailure(f"service {service.name} exited{said}", field="services")
                if check is None:
                    if self.clock.monotonic() >= settled_at:
                        break
                    await asyncio.sleep(0.1)
                    continue
                if await self._probe(pid, cid, check):
                    break
                # A new service may take a while to listen: only the deadline fails it.
                if self.clock.monotonic() >= deadline:
                    raise TaskFailure(
                        f"service {service.name} never became healthy", field="services"
                    )
                await asyncio.sleep(min(check.interval_s, 0.5))

    # --- the chutes' own API (``edgeapi.ChuteApi``) ------------------------------------

    def _ensure_token(self, name: str) -> None:
        """The chute's token for its node's API, at ``/run/chute/token`` (0400) inside it;
        made once, kept across updates and restarts."""
        path = self._dir(name) / "config" / TOKEN_NAME
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))

    def chute_calling(self, token: str, address: str | None) -> str | None:
        """The chute whose token this is, when the call comes from one of that chute's
        own addresses (a token another chute got hold of is no good there); None else."""
        name = self.chute_for_token(token)
        if name is None or address is None or address not in self.network.addresses(name):
            return None
        return name

    def chute_for_token(self, token: str) -> str | None:
        """The chute whose token this is; None for none."""
        given = token.encode()
        found = None
        for name in self.names():
            try:
                mine = (self._dir(name) / "config" / TOKEN_NAME).read_bytes()
            except OSError:
                continue
            # every chute compared: the time taken does not tell which one matched
            if hmac.compare_digest(mine, given):
                found = name
        return found

    # --- health monitors -------------------------------------------------------------

    def _watch(self, manifest: Manifest, service: Service, gen: str) -> None:
        """Start the service's health monitor (one per generation; none without a check)."""
        cid = _container(manifest.name, service.name, gen)
        if service.healthcheck is None or cid in self._monitors:
            return
        watch = self._watches.setdefault(cid, Watch())
        watch.healthy, watch.failures = True, 0
        self._monitors[cid] = asyncio.create_task(
            self._monitor(manifest, service, gen, watch), name=f"health {cid}"
        )

    async def _unwatch(self, cid: str) -> None:
        task = self._monitors.pop(cid, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _monitor(self, manifest: Manifest, service: Service, gen: str, watch: Watch) -> None:
        """Probe every ``interval_s``; ``retries`` failures in a row make the service
        unhealthy, and (the node's policy) its chute is restarted by a restart change, at
        most once per ``restart_backoff_s``. Failures before the first success count only
        once the service has had ``healthy_within_s`` to come up."""
        check = service.healthcheck
        assert check is not None
        cid = _container(manifest.name, service.name, gen)
        started = self.clock.monotonic()
        seen_healthy = False
        while True:
            await asyncio.sleep(check.interval_s)
            running, pid = await self._running(cid)
            if running and await self._probe(pid, cid, check):
                was = watch.healthy
                watch.healthy, watch.failures, seen_healthy = True, 0, True
                if not was:
                    log.info("chute %s service %s is healthy again", manifest.name, service.name)
                    await self._report_health(manifest.name, gen, "healthy", service.name)
                continue
            if not running:
                continue  # an exited service is the chute's `failed` state, not a health matter
            if not seen_healthy and self.clock.monotonic() - started < self.healthy_within_s:
                continue
            watch.failures += 1
            if watch.failures < check.retries:
                continue
            if watch.healthy:
                log.warning(
                    "chute %s service %s is unhealthy: %d checks failed in a row",
                    manifest.name,
                    service.name,
                    watch.failures,
                )
                watch.healthy = False
                await self._report_health(
                    manifest.name,
                    gen,
                    "unhealthy",
                    service.name,
                    f"{watch.failures} health checks failed in a row",
                )
            await self._restart_unhealthy(manifest.name, gen, watch)

    async def _report_health(
        self, name: str, gen: str, kind: ChuteEventKind, service: str, detail: str | None = None
    ) -> None:
        """A health transition of the chute's running generation (an update's new one
        coming up is the update's own matter)."""
        state = self._load(name)
        if state is not None and str(state.get("generation")) == gen:
            await self._report_surely(kind, name, service=service, detail=detail)

    async def _restart_unhealthy(self, name: str, gen: str, watch: Watch) -> None:
        if not self.restart_unhealthy or self.changes.active(name):
            return
        state = self._load(name)
        if state is None or str(state.get("generation")) != gen or not state.get("run", True):
            return  # an update's new generation, or a chute stopped on purpose
        now = self.clock.monotonic()
        if watch.restarted_at is not None and now - watch.restarted_at < self.restart_backoff_s:
            return
        watch.restarts += 1
        watch.restarted_at = now
        try:
            change = await self.act(name, "restart")
        except EdgeplaneError as exc:  # deleted meanwhile
            log.warning("chute %s is unhealthy and cannot be restarted: %s", name, exc)
            return
        log.warning("chute %s restarted because it is unhealthy (change %s)", name, change.id)
        await self._report_surely(
            "restarted", name, change_id=change.id, detail="restarted because it is unhealthy"
        )

    async def _healthy_once(self, pid: int, cid: str, service: Service) -> bool:
        if service.healthcheck is None:
            return True
        return await self._probe(pid, cid, service.healthcheck)

    async def _probe(self, pid: int, cid: str, check: Healthcheck) -> bool:
        if check.exec is not None:
            return await exec_probe(self._runc("exec", cid, *check.exec), check.timeout_s) is None
        return await asyncio.to_thread(_probe_in, pid, check)

    async def _running(self, cid: str) -> tuple[bool, int]:
        said = await self._call("state", cid)
        try:
            current = json.loads(said) if said else {}
        except ValueError:
            return False, 0
        if current.get("status") == "running":
            return True, int(current.get("pid", 0))
        return False, 0

    def _runc(self, *args: str) -> list[str]:
        assert self.runc is not None
        return [self.runc, "--root", str(self.state_dir), *args]

    async def _call(self, *args: str) -> str:
        return "" if self.runc is None else await runc_output(self._runc(*args))


def _pinned(state: Mapping[str, Any]) -> dict[str, str]:
    """The images the chute's installed version was pinned to, by service (none for a
    chute installed before pinning: its tags are resolved at each start until updated)."""
    found = state.get("images")
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}


async def _nothing() -> None:
    return None
