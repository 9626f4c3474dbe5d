"""A cluster's link to its root (``edgeplane manager --root mqtt://…``).

Towards the root a cluster behaves like a worker does towards its manager: it dials out to
the root's broker, says hello (its metadata and a capability summary), heartbeats, runs
what it is sent and reports task events, keeping final events until the root acks them.
On top of that it sends an *aggregate* of its workers' free capacity every
``aggregate_interval_s`` and at once on a significant change, and it *rejects* a task that
none of its workers could ever run, so the root tries the next cluster.

A task the root places here is stored by this cluster's manager under the root's id
(``{id}.{attempt}`` from the second attempt on), in the task's project, and scheduled on
a worker as usual; the journal's commit listener turns its committed states into events
for the root.

On a root's own broker the cluster has an identity, as a worker has on its manager's
(docs/broker-security.md): it joins once with a token (``--join``), keeps the answer in
``<data dir>/uplink/credentials.json`` and logs in with it; the root's commands carry a
MAC with the cluster's key, checked before anything is parsed.

Through a bridge (``--root-via-bridge``, ``manager/bridge.py``) the uplink talks to the
cluster's own broker instead, which a Mosquitto bridge logged in as the cluster links to
the root's; the kept identity's key still checks every command.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from pydantic import BaseModel

from edgeplane import clock as clocks
from edgeplane.config import Settings
from edgeplane.errors import Invalid
from edgeplane.manager.facade import Facade
from edgeplane.manager.series import aggregate as usage_aggregate
from edgeplane.model import (
    Aggregate,
    Capabilities,
    ClusterInfo,
    Constraints,
    Task,
    TaskSpec,
)
from edgeplane.model.cluster import parse_location
from edgeplane.model.task import Spread, spread_key
from edgeplane.protocol import (
    AckEvents,
    Alive,
    Assignment,
    ChuteLogs,
    ChuteRequest,
    EventOutbox,
    FollowChuteLogs,
    Hello,
    Metrics,
    Reregister,
    Sample,
    StartTasks,
    StopTasks,
    TaskEvent,
    TaskEvents,
    TaskSamples,
    Topics,
    Unrunnable,
    Welcome,
    decode,
    encode,
    parse_body,
    sealing,
)
from edgeplane.protocol.signing import verify
from edgeplane.protocol.terms import TermGate
from edgeplane.scheduling.aggregate import aggregate, significant_change
from edgeplane.scheduling.eligibility import (
    Requirement,
    candidates,
    matches,
    mismatch_reason,
    pinned_reason,
)
from edgeplane.scheduling.snapshot import WorkerView
from edgeplane.security import joining
from edgeplane.transport import (
    MqttLink,
    Will,
    parse_broker_urls,
    unique_client_id,
    without_credentials,
)

log = logging.getLogger(__name__)

Key = tuple[str, int]
#: Seconds events wait to be published together (as on a worker).
EVENT_WINDOW_S = 0.002
#: How often the aggregate is recomputed to look for a significant change.
AGGREGATE_CHECK_S = 0.5
#: samples of one worker or task sent up in one batch at most (the newest)
MAX_UP_SAMPLES = 100
_SEEN_LIMIT = 100_000
ROOT_TASK = "root_task"
#: where a cluster keeps its identity at the root (``credentials.json``), in its data dir
IDENTITY_DIR = "uplink"


def _anti_affinity(
    project: str,
    spread: Spread,
    live: Mapping[str, Mapping[str, int]],
    able: Sequence[WorkerView],
) -> str | None:
    """Why required anti-affinity leaves no worker of this cluster for a task (None: it
    does not; ``live``: worker id → its live tasks per group). The root judged from its
    own counts; a cluster that disagrees says so at once (the root then tries another)
    instead of keeping the task waiting here."""
    key = spread_key(project, spread)
    if key is None or spread.anti_affinity != "required":
        return None
    if spread.over == "cluster":
        if any(counts.get(key) for counts in live.values()):
            return (
                "anti-affinity required (spread over clusters): this cluster already runs "
                f"a task of spread group '{spread.group}'"
            )
    elif all(live.get(w.id, {}).get(key) for w in able):
        return (
            "anti-affinity required (spread over workers): every eligible worker already "
            f"runs a task of spread group '{spread.group}'"
        )
    return None


async def root_identity(settings: Settings, root_url: str) -> joining.Identity | None:
    """A cluster's identity at its root: the one kept in its data dir (or in the file
    ``settings.root_credentials``, which must exist), else one bought with
    ``settings.join_token`` at the root's broker ``root_url`` (and kept), else None (the
    root's broker is then reached with what ``--root``'s URL carries, or what the bridge's
    config does). ``Invalid`` if the root refuses the token, or the identity is another
    cluster's."""
    given = settings.root_credentials
    path = given or settings.data_dir / IDENTITY_DIR / joining.CREDENTIALS_FILE
    identity = joining.load(path.parent, path.name)
    if given is not None and identity is None:
        raise Invalid(f"{given} does not exist (--root-credentials)", field="root_credentials")
    if identity is None and settings.join_token:
        if not root_url:
            raise Invalid("a join token is for a root: give --root too", field="root")
        identity = await joining.join(
            root_url,
            Topics.for_root(settings.domain),
            settings.join_token,
            settings.cluster_id,
            ca=settings.ca,
        )
        joining.save(path.parent, identity)
        log.info("joined the root", extra={"cluster": identity.member_id, "kept": str(path)})
    if identity is not None and identity.member_id != settings.cluster_id:
        raise Invalid(
            f"{path} is cluster {identity.member_id}'s identity at the root, not "
            f"{settings.cluster_id}'s: start with --cluster-id {identity.member_id}, or "
            "delete the file and join anew",
            field="cluster_id",
        )
    return identity


def local_id(task_id: str, attempt: int) -> str:
    """The id a root task's attempt has in this cluster's store."""
    return task_id if attempt <= 1 else f"{task_id}.{attempt}"


class Uplink:
    def __init__(
        self,
        manager: Facade,
        root_url: str,
        *,
        link_url: str | None = None,
        clock: clocks.Clock | None = None,
    ) -> None:
        settings = manager.settings
        self.manager = manager
        self.cluster_id = settings.cluster_id
        self.clock: clocks.Clock = clock or clocks.SystemClock()
        self.topics = Topics.for_root(settings.domain)
        self.session = clocks.new_id()
        self.heartbeat_s = settings.heartbeat_s
        self.interval_s = settings.aggregate_interval_s
        self.metrics_interval_s = settings.metrics_interval_s
        #: the newest sample time sent up, per worker and per local task id
        self._metrics_sent: dict[str, float] = {}
        self.info = ClusterInfo(
            name=settings.cluster_name or settings.cluster_id,
            location=parse_location(settings.location),
            labels=dict(settings.labels),
            # the root shows it: never the password a --broker URL may carry
            broker_url=without_credentials(manager.broker_url),
        )
        self.registered = asyncio.Event()
        #: set when the root refused this manager (another live one has its cluster id)
        self.refused = asyncio.Event()
        self.refusal = ""
        #: set when the root refused it for a later leader of this cluster: this process
        #: was deposed (it stands by again, roles/control.py)
        self.superseded = asyncio.Event()
        #: this process's lease as its leader (set by the control plane once it leads):
        #: the root lets a later term of the lineage take the cluster over (Hello.term)
        self.lineage = ""
        self.term = 0
        self.rejected = 0
        self.bad_messages = 0
        #: messages refused for want of a valid MAC (also counted in ``bad_messages``)
        self.unsigned = 0
        #: this cluster's identity on the root's broker (see :meth:`join`)
        self.identity: joining.Identity | None = None
        #: local task id → (root task id, root attempt), for tasks the root placed here
        self._owned: dict[str, Key] = {}
        #: last (state, worker) reported per local id, so only changes go up
        self._reported: dict[str, tuple[str, str | None]] = {}
        self._seen: OrderedDict[Key, None] = OrderedDict()
        self.events = EventOutbox(self._send_events, self.clock, EVENT_WINDOW_S)
        self._epoch, self._seq = "", 0
        #: refuses commands of a deposed root leader (protocol/terms.py)
        self.terms = TermGate()
        self._last_aggregate: Aggregate | None = None
        self._aggregate_sent = 0.0
        self._loops: list[asyncio.Task[None]] = []
        #: the root's chute calls being answered (each waits on a worker)
        self._chute_calls: set[asyncio.Task[None]] = set()
        #: chute output relayed up but dropped (the link's outbox was full)
        self.chute_logs_dropped = 0
        self._attached = False
        #: where the cluster joins the root (``--root``; empty through a bridge whose
        #: identity is kept)
        self.root_url = root_url
        #: where the uplink talks to the root: its broker, or this cluster's own broker
        #: bridged to it (``--root-via-bridge``, docs/brokers.md)
        self.link_url = link_url or root_url
        self.via_bridge = link_url is not None
        #: what the root seals the secret env of the tasks it places here with: derived
        #: from this cluster's key on the root's broker (:meth:`join`); without one the
        #: root sends it in the clear (docs/security.md, "Secrets")
        self._sealing_key: bytes | None = None
        self.link = self._new_link()

    async def join(self) -> joining.Identity | None:
        """This cluster's identity at the root (:func:`root_identity`); ``Invalid`` if the
        root refuses the token, or the identity is another cluster's."""
        identity = await root_identity(self.manager.settings, self.root_url)
        if self.via_bridge:
            if identity is None:
                log.warning(
                    "reaching the root through a bridge without an identity: the root's "
                    "commands are not checked; join once with --root URL --join TOKEN "
                    "(docs/brokers.md)",
                )
        elif identity is None and any(
            node.username is None for node in parse_broker_urls(self.root_url)
        ):
            log.warning(
                "registering with the root without credentials: a root that started its own "
                "broker refuses that; join with --join TOKEN (docs/broker-security.md)",
                extra={"root": self.root_url},
            )
        self.identity = identity
        if identity is not None:  # the token's labels, under the cluster's own (--label)
            self.info.labels = {**identity.labels, **self.info.labels}
            # the root seals the secret env of the tasks it places here to this key
            self._sealing_key = sealing.derive(identity.mac_key)
        self.link = self._new_link()
        return identity

    def _new_link(self) -> MqttLink:
        """A link for the current session (the last will names it)."""
        # Through a bridge, the bridge logs in at the root as the cluster; the uplink logs
        # in to its own broker with what that URL carries, as the manager does.
        identity = None if self.via_bridge else self.identity
        return MqttLink(
            self.link_url,
            client_id=unique_client_id(
                f"edgeplane-cluster-{self.manager.settings.domain}-{self.cluster_id}"
            ),
            subscriptions=[self.topics.cmd(self.cluster_id), self.topics.welcome(self.cluster_id)],
            on_message=self._on_message,
            will=Will(
                topic=self.topics.alive(self.cluster_id),
                payload=encode("alive", Alive(online=False, session=self.session)),
                qos=1,
            ),
            on_connect=self._send_hello,
            ca=self.manager.settings.ca,
            username=None if identity is None else identity.username,
            password=None if identity is None else identity.password,
        )

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Register with the root (again: a restart is a new session)."""
        if self._loops:
            raise RuntimeError("uplink already started")
        await self.attach()
        await self.link.start()
        self._loops = [
            asyncio.create_task(self._heartbeat_loop(), name="uplink-heartbeat"),
            asyncio.create_task(self.events.run(), name="uplink-events"),
            asyncio.create_task(self._aggregate_loop(), name="uplink-aggregate"),
        ]
        if self.metrics_interval_s > 0:
            self._loops.append(asyncio.create_task(self._metrics_loop(), name="uplink-metrics"))

    async def attach(self) -> None:
        """Know the root's unfinished tasks here and follow their commits. A restarted
        cluster manager does this before its manager starts: the results its workers kept
        while it was down are committed then, and must go up to the root."""
        if self._attached:
            return
        for task in await self.manager.documents.unfinished_tasks():
            owner = task.metadata.get(ROOT_TASK)
            if isinstance(owner, str):
                self._owned[task.id] = (owner, int(task.metadata.get("root_attempt", 1)))
        self.manager.on_commit(self._on_commit)
        self._attached = True

    async def stop(self) -> None:
        """Leave the root: it sees this cluster offline at once."""
        await self.events.flush()
        await self._publish(
            self.topics.alive(self.cluster_id),
            "alive",
            Alive(online=False, session=self.session),
        )
        await self.stop_silently()

    async def stop_silently(self) -> None:
        """Drop the link without a word (a test's stand-in for a dead network or process):
        the root finds out by missed heartbeats. :meth:`start` registers anew."""
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        await self.link.stop()
        self.manager.off_commit(self._on_commit)
        self._attached = False
        self.session = clocks.new_id()
        self.registered.clear()
        self.link = self._new_link()

    # ------------------------------------------------------------------ what goes up
    def current_aggregate(self) -> Aggregate:
        """The workers' free capacity now, with the root's last command it counts: its
        tasks were placed (or queued) here before ``_seq`` moved (``_on_message``)."""
        return aggregate(
            self.manager.schedulable(),
            location=self.info.location,
            ts=self.clock.now(),
            epoch=self._epoch,
            seq=self._seq,
        )

    def summary(self) -> Capabilities:
        """The whole cluster as one capability record (the root's member document)."""
        online = list(self.manager.capabilities(online=True).values())
        return Capabilities(
            hostname=self.info.name,
            cpus=sum(c.cpus for c in online) or 1,
            memory_mb=sum(c.memory_mb for c in online),
            disk_mb=sum(c.disk_mb for c in online),
            runtimes=sorted({r for c in online for r in c.runtimes}),
            labels=self.info.labels,
            tee=sorted({t for c in online for t in c.tee}),
            accelerators=sorted({a for c in online for a in c.accelerators}),
            location=self.info.location,
            bridge=any(c.bridge for c in online),
            slots=sum(c.slots for c in online),
        )

    def _active(self) -> list[str]:
        return list({*(owner for owner, _ in self._owned.values()), *self.events.unacked_tasks()})

    async def _send_hello(self) -> None:
        self._last_aggregate = self.current_aggregate()
        self._aggregate_sent = self.clock.monotonic()
        hello = Hello(
            worker_id=self.cluster_id,
            session=self.session,
            capabilities=self.summary(),
            active=self._active(),
            epoch=self._epoch,
            seq=self._seq,
            cluster=self.info,
            aggregate=self._last_aggregate,
            lineage=self.lineage,
            term=self.term,
        )
        await self._publish(self.topics.hello(self.cluster_id), "hello", hello)

    async def _aggregate_loop(self) -> None:
        while True:
            await asyncio.sleep(min(AGGREGATE_CHECK_S, self.interval_s))
            try:
                await self._maybe_send_aggregate()
            except Exception:
                log.exception("sending the aggregate failed")

    async def _maybe_send_aggregate(self) -> None:
        now = self.clock.monotonic()
        current = self.current_aggregate()
        due = now - self._aggregate_sent >= self.interval_s
        if due or significant_change(self._last_aggregate, current):
            self._last_aggregate, self._aggregate_sent = current, now
            await self._publish(self.topics.aggregate(self.cluster_id), "aggregate", current)

    def alive(self) -> Alive:
        """The heartbeat to the root: what this cluster holds, and the last command (seq)
        whose tasks are all in that list."""
        return Alive(session=self.session, active=self._active(), epoch=self._epoch, seq=self._seq)

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.metrics_interval_s)
            try:
                batch = self.metrics_batch()
                if batch.node or batch.tasks:
                    # QoS 0 as a worker's: a lost batch is not worth an acknowledgement
                    await self.link.publish(
                        self.topics.metrics(self.cluster_id), encode("metrics", batch), qos=0
                    )
            except Exception:
                log.exception("sending metrics failed")

    def metrics_batch(self) -> Metrics:
        """What the root has not had yet: each worker's new node samples, one sample of
        their aggregate (the cluster's), and new samples of the root's tasks here."""
        series = self.manager.series
        sent = self._metrics_sent
        workers: dict[str, list[Sample]] = {}
        for worker_id in series.members():
            new = [s for s in series.member(worker_id) if s.ts > sent.get(worker_id, 0.0)]
            if new:
                workers[worker_id] = new[-MAX_UP_SAMPLES:]
                sent[worker_id] = new[-1].ts
        tasks = []
        for local, (root_id, attempt) in self._owned.items():
            key = "task:" + local
            new = [s for s in series.task(local) if s.ts > sent.get(key, 0.0)]
            if new:
                sent[key] = new[-1].ts
                history = series.history(local)
                tasks.append(
                    TaskSamples(
                        task_id=root_id,
                        attempt=attempt,
                        history=history,
                        samples=new[-MAX_UP_SAMPLES:],
                    )
                )
        for key in [k for k in sent if k.startswith("task:") and k[5:] not in self._owned]:
            del sent[key]
        node = usage_aggregate(list(workers.values()), 1)
        return Metrics(node=node, tasks=tasks, workers=workers)

    async def _heartbeat_loop(self) -> None:
        while True:
            alive = self.alive()
            # QoS 0 as a worker's: a lost heartbeat costs nothing (3 must be missed).
            await self.link.publish(
                self.topics.alive(self.cluster_id), encode("alive", alive), qos=0
            )
            self.events.resend(older_than=self.heartbeat_s)
            await asyncio.sleep(self.heartbeat_s)

    # ------------------------------------------------------------------ what comes down
    async def _on_message(self, topic: str, payload: bytes) -> None:
        key = None if self.identity is None else self.identity.mac_key
        if key is not None and not verify(key, payload):
            self.bad_messages += 1
            self.unsigned += 1
            log.warning("command refused: no valid MAC from the root", extra={"topic": topic})
            return
        try:
            envelope = decode(payload)
            body = parse_body(envelope.type, envelope.body)
        except Invalid as exc:
            self.bad_messages += 1
            log.warning("bad message from root", extra={"topic": topic, "error": exc.detail})
            return
        if not self.terms.admit(envelope.term):
            log.warning(
                "command refused: from a root process that no longer leads",
                extra={"topic": topic, "term": envelope.term, "leader_term": self.terms.term},
            )
            return
        if isinstance(body, StartTasks):
            if body.session not in ("", self.session):
                return  # meant for another process with this cluster id (agent.py)
            if body.epoch != self._epoch:
                self._epoch, self._seq = body.epoch, 0
            await self._accept(body.tasks)
            # Only once its tasks are held: a heartbeat with this seq tells the root every
            # task of the command is in ``active``, and the root counts one that is not as
            # lost. Admission awaits (a module is encoded in a thread), so a heartbeat sent
            # meanwhile made the root fail tasks that then completed (bench.scale
            # --hierarchy: a quarter of 4,000).
            self._seq = max(self._seq, body.seq)
            for bad in body.unrunnable:  # that task fails, the others run (as on a worker)
                if (bad.task_id, bad.attempt) not in self._seen:
                    self._seen[(bad.task_id, bad.attempt)] = None
                    self._final(bad, TaskEvent(task_id="", attempt=0, state="failed"), bad.reason)
            if body.unreadable:
                self.bad_messages += 1
        elif isinstance(body, StopTasks):
            await self._stop(body.task_ids)
        elif isinstance(body, AckEvents):
            self.events.ack(body.keys)
        elif isinstance(body, Welcome):
            if body.session == self.session and body.error:
                self.refusal = body.error
                if body.superseded:
                    log.warning("superseded at the root", extra={"reason": body.error})
                    self.superseded.set()
                else:
                    log.error("refused by the root", extra={"reason": body.error})
                    self.refused.set()
            elif body.session == self.session:
                self.heartbeat_s = body.heartbeat_s
                self.registered.set()
                self.events.resend()
        elif isinstance(body, Reregister):
            await self._send_hello()
        elif isinstance(body, ChuteRequest):
            # off the message loop: the call waits on a worker of this cluster
            call = asyncio.create_task(self._answer_chute(body), name=f"root-chute-{body.id}")
            self._chute_calls.add(call)
            call.add_done_callback(self._chute_calls.discard)
        elif isinstance(body, FollowChuteLogs):
            await self.manager.chutes.relay_logs(body, self._relay_chute_logs)
        else:
            self.bad_messages += 1
            log.warning("unexpected message from root", extra={"type": envelope.type})

    async def _answer_chute(self, request: ChuteRequest) -> None:
        """A root's call for a chute of one of this cluster's workers, made through this
        cluster's manager (its rules: offline, stale, owners); the answer goes up."""
        response = await self.manager.chutes.answer(request)
        try:
            await self._publish(self.topics.events(self.cluster_id), "chute.response", response)
        except Exception as exc:  # the root times out and says so
            log.warning("chute answer not sent to the root", extra={"error": str(exc)})

    def _relay_chute_logs(self, logs: ChuteLogs) -> None:
        """A worker's chute output the root follows, passed up as it comes."""
        try:
            self.link.publish_nowait(
                self.topics.events(self.cluster_id), encode("chute.logs", logs)
            )
        except Exception:  # the outbox is full: dropped, counted (not held for the root)
            self.chute_logs_dropped += 1

    async def _accept(self, assignments: Sequence[Assignment]) -> None:
        admitted: list[Task] = []
        for spec in assignments:
            key = (spec.task_id, spec.attempt)
            if key in self._seen:
                continue  # a command delivered twice: the task is here already
            why = self._cannot_run(spec)
            if why is None:
                try:
                    admitted.extend(await self._admit(spec))
                except Invalid as exc:
                    self._final(spec, TaskEvent(task_id="", attempt=0, state="failed"), exc.detail)
                    continue
                # Only what was taken is remembered: a rejection keeps the root's attempt
                # number, so a task offered again (the cluster's capacity changed) must be
                # judged again, not dropped as a duplicate (it then sat `scheduled` at the
                # root until the heartbeats made it `worker_lost`).
                self._seen[key] = None
                while len(self._seen) > _SEEN_LIMIT:
                    self._seen.popitem(last=False)
                continue
            self.rejected += 1
            log.info("task rejected", extra={"task_id": spec.task_id, "reason": why})
            self._final(spec, TaskEvent(task_id="", attempt=0, state="rejected"), why)
        if admitted:
            await self.manager.submit(admitted, origin="root")

    def _final(self, spec: Assignment | Unrunnable, event: TaskEvent, error: str) -> None:
        event = event.model_copy(
            update={
                "task_id": spec.task_id,
                "attempt": spec.attempt,
                "error": error,
                "ts": self.clock.now(),
            }
        )
        self.events.emit_final(event)

    def _cannot_run(self, spec: Assignment) -> str | None:
        """Why no worker of this cluster could ever run ``spec`` (None: one could): the
        cluster scheduler's own eligibility rules, plus whether a worker is big enough."""
        wanted = self._local(spec.constraints or Constraints())
        ring = self.manager.schedulable()
        req = Requirement(
            spec.runtime,
            tuple(sorted(wanted.labels.items())),
            wanted.tee,
            spec.pinned_worker,
            spec.runtime == "container" and spec.network == "bridge",
        )
        if req.worker_id is None:
            able = [ring[pos] for pos in candidates(ring, req)]
            if not able:
                return mismatch_reason(ring, req)
        else:
            pinned = next((w for w in ring if w.id == req.worker_id), None)
            if pinned is None or not matches(pinned, req):
                return pinned_reason(pinned, req)
            able = [pinned]
        cpu, memory = wanted.cpu or 0.0, wanted.memory_mb or 0
        sizes = self.manager.capabilities(online=False)
        if not any(sizes[w.id].cpus >= cpu and sizes[w.id].memory_mb >= memory for w in able):
            return f"no worker has {cpu:g} cpu and {memory} MB"
        if wanted.spread is None:
            return None
        return _anti_affinity(spec.project, wanted.spread, self.manager.spread(), able)

    def _local(self, wanted: Constraints) -> Constraints:
        """The constraints left for this cluster's workers: a label the cluster itself
        carries (``--label region=eu`` on its manager) is met by every worker of it, as
        the root's placement took it to be."""
        own = self.info.labels
        labels = {k: v for k, v in wanted.labels.items() if own.get(k) != v}
        return wanted if labels == wanted.labels else wanted.model_copy(update={"labels": labels})

    async def _admit(self, spec: Assignment) -> list[Task]:
        # The module goes to admission as the root sent it (admission checks it, off the
        # loop when it is big); one the cluster keeps already is encoded in a thread.
        file = spec.artifact_b64
        if file is None and spec.artifact is not None:
            data = await self.manager.artifact(spec.artifact)
            if data is None:
                raise Invalid(f"artifact {spec.artifact} is missing", field="artifact")
            file = (await asyncio.to_thread(base64.b64encode, data)).decode()
        constraints = self._local(spec.constraints or Constraints()).model_copy(
            update={"clusters": [], "geo": None}
        )
        secret_env = spec.secret_env
        if spec.sealed_env is not None:
            if self._sealing_key is None:
                raise Invalid(
                    "secret_env came sealed but this cluster has no key", field="secret_env"
                )
            secret_env = sealing.unseal(
                self._sealing_key,
                spec.sealed_env,
                task_id=spec.task_id,
                attempt=spec.attempt,
                member_id=self.cluster_id,
            )
        task_spec = TaskSpec(
            name=spec.name,
            runtime=spec.runtime,
            mode=spec.mode,
            export=spec.entrypoint or None,
            file=file,
            inputs=spec.inputs,
            cli_args=spec.cli_args,
            env=spec.env,
            secret_env=secret_env,
            command=spec.command,
            image=spec.image,
            network=spec.network,
            ports=spec.ports,
            healthcheck=spec.healthcheck,
            limits=spec.limits,
            retries=spec.retries,
            priority=spec.priority,
            constraints=constraints,
            daemon=spec.daemon,
            monitoring=spec.monitoring or "off",
            worker_id=spec.pinned_worker,
            metadata={**spec.metadata, ROOT_TASK: spec.task_id, "root_attempt": spec.attempt},
            project=spec.project,
            start=True,
        )
        ident = local_id(spec.task_id, spec.attempt)
        tasks = await self.manager.admit([task_spec], batch=False, ids=[ident])
        if self.manager.tracer is not None and spec.traceparent is not None:
            # the task's path here continues the root's trace (its dispatch to us)
            self.manager.tracer.expect(ident, spec.traceparent)
        self._owned[ident] = (spec.task_id, spec.attempt)
        return tasks

    async def _stop(self, task_ids: Sequence[str]) -> None:
        wanted = set(task_ids)
        for ident, (owner, _) in list(self._owned.items()):
            if owner in wanted:
                await self.manager.stop_task(ident)

    # ------------------------------------------------------------------ events
    def _on_commit(self, tasks: list[Task]) -> None:
        """Committed versions of tasks the root owns become events for the root."""
        for task in tasks:
            owner = self._owned.get(task.id)
            if owner is None:
                continue
            root_id, attempt = owner
            seen = (task.state, task.worker_id)
            if task.terminal:
                del self._owned[task.id]
                self._reported.pop(task.id, None)
                event = TaskEvent(
                    task_id=root_id,
                    attempt=attempt,
                    state="completed"
                    if task.state == "completed"
                    else ("failed" if task.state == "failed" else "cancelled"),
                    results=task.results,
                    error=task.error,
                    reason=task.reason if task.state == "failed" else None,
                    exit_code=task.exit_code,
                    stdout=task.stdout,
                    stderr=task.stderr,
                    worker_id=task.worker_id,
                    started_at=task.started_at,
                    ts=task.finished_at or self.clock.now(),
                )
                self.events.emit_final(event)
                continue
            if self._reported.get(task.id) == seen:
                continue
            previous = self._reported.get(task.id)
            self._reported[task.id] = seen
            if task.state == "pending":
                if previous is None or previous[1] is None:
                    continue  # still waiting for a worker: nothing new for the root
                state, worker = "scheduled", None  # taken back from a lost worker
            else:
                state, worker = task.state, task.worker_id
            self.events.emit(
                TaskEvent(
                    task_id=root_id,
                    attempt=attempt,
                    state=state,
                    worker_id=worker,
                    endpoints=task.endpoints if state == "running" else [],
                    ts=task.started_at or self.clock.now(),
                )
            )

    async def _send_events(self, events: TaskEvents) -> None:
        await self._publish(self.topics.events(self.cluster_id), "task.events", events)

    async def _publish(self, topic: str, type_: str, body: BaseModel) -> None:
        await self.link.publish(topic, encode(type_, body))
