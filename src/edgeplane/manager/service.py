"""The manager: one per cluster (its members are workers) and one at the root (its
members are clusters, which report like workers do plus an aggregate of their capacity,
and may reject a task). At the root a task's ``cluster_id`` says where it was placed and
``worker_id`` is what the cluster reported; at a cluster ``worker_id`` is the member.

The manager composes its parts and routes members' messages to them:

- :class:`~edgeplane.manager.tasks.TaskService` — submit, read, wait, change; events;
- :class:`~edgeplane.manager.membership.Membership` — hello, alive, liveness, loss;
- :class:`~edgeplane.manager.dispatch.Dispatcher` — scheduling passes and ``task.start``;
- the level (``levels.py``) — what differs between placing on workers and on clusters;
- the journal — the one commit path of every document.

Workflows, schedules, the uplink and applications use :attr:`Manager.facade` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from edgeplane import clock as clocks
from edgeplane import tracing
from edgeplane.artifacts.proxy import ProxyStats
from edgeplane.config import Settings
from edgeplane.errors import Fenced, Invalid
from edgeplane.manager.audit import AuditTrail
from edgeplane.manager.chute_forward import ClusterChuteCalls
from edgeplane.manager.chute_store import ChuteStore
from edgeplane.manager.chutes import ChuteCalls
from edgeplane.manager.core import Core, ManagerStats
from edgeplane.manager.dispatch import Dispatcher
from edgeplane.manager.facade import Facade
from edgeplane.manager.follow import LogFollowers
from edgeplane.manager.holds import Holds
from edgeplane.manager.journal import Journal
from edgeplane.manager.levels import ClusterLevel, WorkerLevel
from edgeplane.manager.membership import Membership
from edgeplane.manager.tasks import TaskService
from edgeplane.model import Aggregate
from edgeplane.protocol import (
    Alive,
    ChuteEvents,
    ChuteLogs,
    ChuteResponse,
    FollowLogs,
    Hello,
    LogChunks,
    Metrics,
    TaskEvents,
    decode,
    parse_body,
    sealing,
)
from edgeplane.security.broker_auth import BrokerAuth
from edgeplane.store import Store
from edgeplane.telemetry import LoopLag
from edgeplane.transport import MqttLink, kept_client_id, without_credentials

log = logging.getLogger(__name__)

__all__ = ["Manager", "ManagerStats"]


class Manager:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        broker_url: str,
        *,
        clock: clocks.Clock | None = None,
        root: bool = False,
        auth: BrokerAuth | None = None,
        secret_keys: Mapping[str, bytes] | None = None,
    ) -> None:
        """``auth``: the identities of the broker edgeplane started (its own credentials,
        and the keys its commands are signed with); None for an external broker.
        ``secret_keys``: without ``auth``, the members' keys secret env is sealed with
        (``up --broker`` gives its own workers one)."""
        self.settings = settings
        self.store = store
        self.clock: clocks.Clock = clock or clocks.SystemClock()
        self.root = root
        #: the broker as workers and the root are told of it: never its credentials
        self.broker_url = without_credentials(broker_url)
        level = ClusterLevel(settings) if root else WorkerLevel(settings)
        self.member = level.member
        self.topics = level.topics
        self.journal = Journal(store)
        #: records of mutating API calls and broker identity changes (docs/security.md)
        self.audit = AuditTrail(
            self.journal,
            store,
            self.clock,
            retention_days=settings.audit_retention_days,
            max_rows=settings.audit_max_rows,
        )
        self.link = MqttLink(
            broker_url,
            # Its own (two managers of a cluster must not kick each other off the
            # broker), and the same after a restart on the same data dir: the broker
            # keeps what members publish while this manager is away (reconnecting, or
            # restarting: a result that ended meanwhile) and delivers it when it is back.
            client_id=kept_client_id(level.client_name, settings.data_dir),
            subscriptions=[self.topics.all_members(leaf) for leaf in level.leaves],
            on_message=self._on_message,
            clean_session=False,
            # (the members' liveness hears whether the manager itself can hear)
            on_connect=lambda: self.members.link_up(),
            on_disconnect=lambda: self.members.link_down(),
            ca=settings.ca,
            username=None if auth is None else auth.manager.username,
            password=None if auth is None else auth.manager.password,
        )
        core = Core(
            settings=settings,
            store=store,
            clock=self.clock,
            level=level,
            journal=self.journal,
            link=self.link,
            tracer=tracing.tracer(
                settings.otel_endpoint, "edgeplane-root" if root else "edgeplane-manager"
            ),
            holds=Holds(settings.max_held_answers),
        )
        #: traces of tasks' paths (None: off)
        self.tracer = core.tracer
        #: answers the API holds open (long polls) and their bound
        self.holds = core.holds
        if auth is not None:
            core.sign = auth.sign
            core.sealing_key = auth.sealing_key
            core.owner_at_join = auth.owner_of
        elif secret_keys:
            derived = {member: sealing.derive(key) for member, key in secret_keys.items()}
            core.sealing_key = derived.get
        self.registry = core.registry
        self.stats = core.stats
        #: the counters of this cluster's artifact proxy, once one serves (roles/control.py)
        self.proxy_stats: ProxyStats | None = None
        #: this manager process's id; task.start sequence numbers count within it
        epoch = clocks.new_id()
        core.registry.epoch = epoch
        self.dispatcher = Dispatcher(core, epoch)
        self.members = Membership(core, epoch, self.broker_url, self.dispatcher.send_batches)
        self.tasks = TaskService(core, self.dispatcher)
        #: workers' chutes managed from afar (``manager/chutes.py``); at a root, through
        #: the cluster that holds the worker (``chute_forward.py``)
        self.chutes = ClusterChuteCalls(core) if root else ChuteCalls(core)
        #: published chute manifests (``manager/chute_store.py``)
        self.chute_store = ChuteStore(store, self.clock)
        self._core = core
        self.series = core.series
        #: how late this process's event loop runs (``/metrics``)
        self.loop_lag = LoopLag()
        #: who follows which task's logs live (``follow.py``)
        self.log_followers = LogFollowers()
        self._loops: list[asyncio.Task[None]] = []
        self.facade = Facade(core, self.tasks, self.dispatcher, self.broker_url, self.chutes)
        # The manager's own calls are its parts' (the API and the roles use these).
        self.submit = self.tasks.submit
        self.admit = self.tasks.admit
        self.get = self.tasks.get
        self.list_tasks = self.tasks.list_tasks
        self.count_tasks = self.tasks.count_tasks
        self.wait = self.tasks.wait
        self.start_task = self.tasks.start_task
        self.stop_task = self.tasks.stop_task
        self.retry_task = self.tasks.retry_task
        self.patch_task = self.tasks.patch_task
        self.delete_task = self.tasks.delete_task
        self.task_counts = self.tasks.task_counts
        self.wait_reason = self.tasks.wait_reason
        self.workers = self.members.workers
        self.worker = self.members.worker
        self.drain_worker = self.members.drain_worker
        self.undrain_worker = self.members.undrain_worker
        self.set_owner = self.members.set_owner
        self.owner_of = self.members.owner_of
        self.disown = self.members.disown
        self.delete_worker = self.members.delete_worker

    @property
    def term(self) -> int:
        """The leadership term its commands carry (``manager/leadership.py``)."""
        return self._core.term

    @term.setter
    def term(self, term: int) -> None:
        self._core.term = term

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        workers, _ = await self.store.list_workers(limit=1_000_000)
        self.members.recover(workers, await self.store.unfinished_tasks())
        await self.link.start()
        self._loops = [
            asyncio.create_task(self.dispatcher.schedule_loop(), name="manager-schedule"),
            asyncio.create_task(self.members.liveness_loop(), name="manager-liveness"),
            asyncio.create_task(self.journal.run(), name="manager-journal"),
            asyncio.create_task(self.members.persist_loop(), name="manager-members"),
            asyncio.create_task(self.loop_lag.run(), name="manager-loop-lag"),
        ]
        self._core.kick.set()

    async def stop(self) -> None:
        try:
            await self.audit.flush()
            await self.journal.commit()
            await self.members.flush()
            await self.journal.commit()
        except Fenced:  # deposed: what is left is the new leader's to decide
            log.warning("stopped without the last writes: another process leads now")
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        await self.link.stop()
        self.tasks.cancel_waiters()
        if self.tracer is not None:
            await self.tracer.shutdown()

    async def follow_logs(self, task_id: str, attempt: int, member_id: str, seconds: float) -> None:
        """Ask the member running the attempt to send its output for ``seconds`` (0: stop)."""
        body = FollowLogs(task_id=task_id, attempt=attempt, follow_s=seconds)
        await self._core.send(member_id, "task.logs.follow", body)

    # ------------------------------------------------------------------ messages
    async def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.topics.probe:
            self.members.probe_back(payload)
            return
        where = self.topics.member_of(topic)
        try:
            if where is None:
                raise Invalid(f"unexpected topic {topic}", field="topic")
            envelope = decode(payload)
            body = parse_body(envelope.type, envelope.body)
        except Invalid as exc:
            self.stats.bad_messages += 1
            log.warning("bad message", extra={"topic": topic, "error": exc.detail})
            return
        member_id = where[0]
        if not (isinstance(body, Alive) and not body.online):  # a will is no sign of life
            self.members.seen(member_id, body.session if isinstance(body, Hello | Alive) else "")
        if isinstance(body, Hello):
            await self.members.on_hello(member_id, body)
        elif isinstance(body, Alive):
            await self.members.on_alive(member_id, body)
        elif isinstance(body, TaskEvents):
            await self.tasks.on_events(member_id, body.events)
        elif isinstance(body, ChuteResponse):
            if not self.chutes.on_response(member_id, body):
                log.info("a chute answer no call waits for", extra={"member": member_id})
        elif isinstance(body, ChuteEvents) and not self.root:
            self.chutes.on_events(member_id, body)
        elif isinstance(body, ChuteLogs):
            if not self.chutes.on_logs(member_id, body):
                log.debug("chute output nobody follows", extra={"member": member_id})
        elif isinstance(body, Metrics):
            self.series.ingest(member_id, body, root=self.root)
        elif isinstance(body, LogChunks):
            entry = self.registry.get(member_id)  # only the logs of tasks the member holds
            held = {} if entry is None else entry.tasks
            self.log_followers.on_chunks(c for c in body.chunks if c.task_id in held)
        elif isinstance(body, Aggregate) and self.root:
            self.members.on_aggregate(member_id, body)
        else:
            self.stats.bad_messages += 1
            log.warning("unexpected message", extra={"topic": topic, "type": envelope.type})
