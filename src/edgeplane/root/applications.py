"""Applications: the applier around the pure reconciler (``root/reconcile.py``).

Each instance of a service is a daemon task submitted through the manager, so placement,
loss detection and replacement come from the task lifecycle at either level: at the root
an instance's task is placed on a cluster; on a cluster without a root, on a worker.
The applier keeps every application's instances in step with their tasks (journal
commits), asks the reconciler what to do, and does it: submit new instance tasks, stop
superseded ones, forget ended ones. Applications and their instance lists are stored, so
a restarted root picks up where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from edgeplane import clock as clocks
from edgeplane.errors import Invalid, NotFound
from edgeplane.manager.admission import admit, inspect_modules
from edgeplane.manager.facade import Facade
from edgeplane.model import (
    ACTIVE_STATES,
    Application,
    ApplicationSpec,
    Constraints,
    Instance,
    ServiceSpec,
    ServiceStatus,
    Task,
    TaskSpec,
)
from edgeplane.model.bounds import STORED
from edgeplane.model.secrets import REVEAL
from edgeplane.root.reconcile import Actions, Create, desired_of, reconcile

log = logging.getLogger(__name__)

#: Service fields that are not task fields.
_SERVICE_ONLY = {"replicas", "resources", "restart", "chute", "placement"}
#: Longest the applier sleeps without a change (a safety net; changes wake it at once).
IDLE_S = 5.0


def spread_group(app: Application, service: ServiceSpec) -> str:
    """The spread group of a service's instances: the application's id (a rename keeps
    it) and the service's name."""
    return f"{app.id}/{service.name}"


def instance_spec(app: Application, service: ServiceSpec, create: Create) -> TaskSpec:
    """The daemon task that runs one instance of ``service``."""
    body = service.model_dump(exclude=_SERVICE_ONLY, context=REVEAL)
    placed: dict[str, Any] = {
        "spread": service.placement.constraint(spread_group(app, service)),
    }
    if service.resources.cpu is not None:
        placed["cpu"] = service.resources.cpu
    if service.resources.memory_mb is not None:
        placed["memory_mb"] = service.resources.memory_mb
    # (constraints are frozen: changed by a copy)
    constraints = Constraints.model_validate(body.pop("constraints")).model_copy(update=placed)
    metadata = {
        **service.metadata,
        "application_id": app.id,
        "service": service.name,
        "instance": create.index,
    }
    return TaskSpec.model_validate(
        {
            **body,
            "constraints": constraints,
            "daemon": True,
            "retries": 0,  # the reconciler restarts by the service's policy
            "start": True,
            "schedule": None,
            "depends_on": [],
            "metadata": metadata,
            "project": app.project,  # its instances are in the application's project
        },
        context=STORED,  # its descriptor was checked when it came in; an older one may be bigger
    )


def status_of(app: Application) -> list[ServiceStatus]:
    """Services with their instances, as ``GET /applications/{id}`` shows them."""
    out = []
    for service in app.spec.services:
        mine = [i for i in app.instances if i.service == service.name]
        out.append(
            ServiceStatus(
                name=service.name,
                replicas=service.replicas,
                restart=service.restart,
                revision=service.revision(),
                running=sum(1 for i in mine if i.state == "running"),
                instances=sorted(mine, key=lambda i: (i.index, i.revision != service.revision())),
            )
        )
    return out


def state_of(app: Application) -> str:
    wanted = sum(s.replicas for s in app.spec.services)
    current = {s.name: s.revision() for s in app.spec.services}
    running = [
        i for i in app.instances if i.state == "running" and current.get(i.service) == i.revision
    ]
    if len(running) >= wanted and len(app.instances) == wanted:
        return "running"
    if any(i.restarts > 0 for i in app.instances):
        return "degraded"
    return "deploying"


class Applications:
    def __init__(
        self,
        manager: Facade,
        *,
        clock: clocks.Clock | None = None,
        backoff_base_s: float = 1.0,
    ) -> None:
        self.manager = manager
        self.clock: clocks.Clock = clock or clocks.SystemClock()
        self.backoff_base_s = backoff_base_s
        self._apps: dict[str, Application] = {}
        #: task id → application id, for the instances' tasks
        self._by_task: dict[str, str] = {}
        self._stopping: set[str] = set()
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._next_check: float | None = None
        self._loop: asyncio.Task[None] | None = None
        manager.on_commit(self._on_commit)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        offset = 0
        while True:
            page, total = await self.manager.documents.list_applications(limit=1000, offset=offset)
            for app in page:
                self._apps[app.id] = app
                for instance in app.instances:
                    self._by_task[instance.task_id] = app.id
                    await self._refresh(app, instance)
            offset += len(page)
            if not page or offset >= total:
                break
        self._loop = asyncio.create_task(self._run(), name="applications")
        self._wake.set()

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        self.manager.off_commit(self._on_commit)

    async def _refresh(self, app: Application, instance: Instance) -> None:
        """After a restart: the instance as its task is now."""
        with contextlib.suppress(NotFound):
            self._update(app, instance, await self.manager.get(instance.task_id))

    # ------------------------------------------------------------------ user calls
    async def _check(self, spec: ApplicationSpec) -> None:
        """Refuse a descriptor whose services could never start (a 422 naming the service),
        instead of accepting it and failing its instances forever."""
        probe = Application(id="check", name=spec.name, spec=spec)
        tasks = [
            instance_spec(probe, service, Create(service.name, 0, "", 0, None))
            for service in spec.services
        ]
        modules = await inspect_modules(tasks)  # compiled off the loop
        for index, task in enumerate(tasks):
            try:
                admit(task, task_id="check", now=0.0, cluster_id=None, modules=modules)
            except Invalid as exc:
                where = f"services[{index}]" + (f".{exc.field}" if exc.field else "")
                raise Invalid(exc.detail, field=where) from None

    async def create(self, spec: ApplicationSpec) -> Application:
        await self._check(spec)
        now = self.clock.now()
        app = Application(
            id=clocks.new_id(),
            project=spec.project,
            name=spec.name,
            spec=spec,
            created_at=now,
            updated_at=now,
        )
        journal = self.manager.journal
        journal.check()
        await journal.settle(journal.write(applications=[app]))
        self._apps[app.id] = app
        self._wake.set()
        return app

    async def replace(self, app_id: str, spec: ApplicationSpec) -> Application:
        await self._check(spec)
        app = self.get(app_id)
        app = app.model_copy(
            update={
                "name": spec.name,
                "spec": spec,
                "project": app.project,  # a replacement never moves it to another project
                "generation": app.generation + 1,
                "updated_at": self.clock.now(),
            }
        )
        journal = self.manager.journal
        journal.check()
        await journal.settle(journal.write(applications=[app]))
        self._apps[app_id] = app
        self._wake.set()
        return app

    async def delete(self, app_id: str) -> None:
        app = self.get(app_id)
        self.manager.journal.check()
        del self._apps[app_id]
        for instance in app.instances:
            self._by_task.pop(instance.task_id, None)
            self._stopping.discard(instance.id)
            with contextlib.suppress(NotFound):
                await self.manager.stop_task(instance.task_id)
        await self.manager.journal.settle(self.manager.journal.delete("application", app_id))

    def get(self, app_id: str) -> Application:
        app = self._apps.get(app_id)
        if app is None:
            raise NotFound(f"application {app_id} not found", field="id")
        return self._with_wait_reasons(app)

    def all(self) -> list[Application]:
        ordered = sorted(self._apps.values(), key=lambda a: (a.created_at, a.id))
        return [self._with_wait_reasons(app) for app in ordered]

    def _with_wait_reasons(self, app: Application) -> Application:
        """Why pending instances wait: the scheduler keeps wait reasons in memory only
        (they change every pass), so they are read from the manager when shown."""
        pending = [i for i in app.instances if i.state == "pending"]
        if not pending:
            return app
        instances = []
        for instance in app.instances:
            reason = (
                self.manager.wait_reason(instance.task_id) if instance.state == "pending" else None
            )
            if reason is not None and reason != instance.reason:
                instance = instance.model_copy(update={"reason": reason})
            instances.append(instance)
        return app.model_copy(update={"instances": instances})

    # ------------------------------------------------------------------ instances follow tasks
    def _on_commit(self, tasks: list[Task]) -> None:
        for task in tasks:
            app_id = self._by_task.get(task.id)
            app = self._apps.get(app_id or "")
            if app is None:
                continue
            for instance in app.instances:
                if instance.task_id == task.id:
                    self._update(app, instance, task)
                    break

    def _update(self, app: Application, instance: Instance, task: Task) -> None:
        ended = task.terminal
        new = instance.model_copy(
            update={
                "state": task.state,
                "cluster_id": task.cluster_id,
                "worker_id": task.worker_id,
                "reason": task.error if ended else task.reason,
                "ended_at": (task.finished_at or task.updated_at) if ended else None,
                # only while it runs: an ended one's host ports may be another's by now
                "endpoints": task.endpoints if task.state == "running" else [],
            }
        )
        if new == instance:
            return
        app.instances[app.instances.index(instance)] = new
        self._dirty.add(app.id)
        if ended or task.state in ACTIVE_STATES:
            self._wake.set()

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        while True:
            timeout = IDLE_S
            if self._next_check is not None:
                timeout = max(0.01, min(IDLE_S, self._next_check - self.clock.now()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                await self.reconcile_all()
            except Exception:
                log.exception("reconciling applications failed")
                await asyncio.sleep(0.5)

    async def reconcile_all(self) -> None:
        now = self.clock.now()
        next_check: float | None = None
        for app in list(self._apps.values()):
            # (with their wait reasons: one kept out by anti-affinity makes room, reconcile.py)
            instances = self._with_wait_reasons(app).instances
            actions = reconcile(
                desired_of(app.spec), instances, now, backoff_base_s=self.backoff_base_s
            )
            await self._apply(app, actions)
            if actions.next_check_at is not None:
                next_check = min(next_check or actions.next_check_at, actions.next_check_at)
        self._next_check = next_check
        for app_id in list(self._dirty):
            self._dirty.discard(app_id)
            dirty = self._apps.get(app_id)
            if dirty is not None:
                dirty.state = state_of(dirty)  # type: ignore[assignment]
                dirty.updated_at = now
                # (a copy: the journal writes what it is given when its turn comes)
                self.manager.journal.write(applications=[dirty.model_copy()])

    async def _apply(self, app: Application, actions: Actions) -> None:
        if actions.forget:
            gone = set(actions.forget)
            for instance in app.instances:
                if instance.id in gone:
                    self._by_task.pop(instance.task_id, None)
                    self._stopping.discard(instance.id)
            app.instances = [i for i in app.instances if i.id not in gone]
            self._dirty.add(app.id)
        for instance_id in actions.stop:
            if instance_id in self._stopping:
                continue  # asked already; it stays live until its task has ended
            self._stopping.add(instance_id)
            target = next((i for i in app.instances if i.id == instance_id), None)
            if target is not None:
                with contextlib.suppress(NotFound):
                    await self.manager.stop_task(target.task_id)
        if actions.create:
            await self._create(app, actions.create)

    async def _create(self, app: Application, creates: Sequence[Create]) -> None:
        services = {s.name: s for s in app.spec.services}
        specs, wanted = [], []
        for create in creates:
            service = services.get(create.service)
            if service is not None:
                specs.append(instance_spec(app, service, create))
                wanted.append(create)
        ids = [clocks.new_id() for _ in specs]
        # Instances are recorded before their tasks exist, so the commit listener never
        # misses their first states.
        for task_id, create in zip(ids, wanted, strict=True):
            self._by_task[task_id] = app.id
            app.instances.append(
                Instance(
                    id=task_id,
                    service=create.service,
                    index=create.index,
                    revision=create.revision,
                    task_id=task_id,
                    restarts=create.restarts,
                )
            )
        self._dirty.add(app.id)
        try:
            tasks = await self.manager.submit_specs(specs, ids=ids, origin="application")
        except Exception:
            # A spec the manager refuses (e.g. its artifact is bad) must not loop forever:
            # the instances show it as failed, and the restart backoff spaces out retries.
            log.exception("starting instances failed", extra={"application_id": app.id})
            now = self.clock.now()
            for instance in app.instances:
                if instance.task_id in ids:
                    instance.state = "failed"
                    instance.reason = "could not be submitted; see the log"
                    instance.ended_at = now
            return
        for task in tasks:
            for instance in app.instances:
                if instance.task_id == task.id:
                    self._update(app, instance, task)
