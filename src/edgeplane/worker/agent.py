"""The worker agent: registers with its manager, runs assigned tasks, reports events.

Only dials out (to the cluster broker). Final events are kept until the manager acks
them and re-sent after a reconnect, so a result survives a manager or broker restart;
start commands are de-duplicated by (task id, attempt), so a redelivery runs nothing twice.

Attempts that outlive the worker process (host and container tasks) have their handles
kept on disk (``handles.py``): a worker restarted after a crash re-attaches to those still
running and reports them in its hello, so the manager leaves them with it, and reports how
the others ended, all before it takes new work (``recovery.py``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import psutil
from pydantic import BaseModel

from edgeplane import clock as clocks
from edgeplane.artifacts.blobs import DEFAULT_MAX_BYTES as DEFAULT_CACHE_BYTES
from edgeplane.artifacts.blobs import DIGEST, BlobStore
from edgeplane.artifacts.fetch import Fetcher
from edgeplane.errors import Invalid, TaskFailure
from edgeplane.model import Capabilities
from edgeplane.model.service import Endpoint
from edgeplane.monitoring import Monitoring
from edgeplane.protocol import (
    AckChuteEvents,
    AckEvents,
    Alive,
    Assignment,
    ChuteEvents,
    ChuteLogs,
    ChuteRequest,
    ChuteResponse,
    EventOutbox,
    FollowChuteLogs,
    FollowLogs,
    Hello,
    LogChunks,
    Metrics,
    Reregister,
    StartTasks,
    StopTasks,
    TaskEvent,
    TaskEvents,
    Topics,
    Unrunnable,
    Welcome,
    decode,
    encode,
    parse_body,
    sealing,
    signing,
)
from edgeplane.protocol.messages import HELD_ARTIFACTS
from edgeplane.protocol.terms import TermGate
from edgeplane.protocol.topics import check_segment
from edgeplane.runtimes import ContainerRuntime, Handle, HostRuntime, Outcome, RunSpec, Runtime
from edgeplane.runtimes.spec import LOCAL_FIELDS
from edgeplane.telemetry import Histogram
from edgeplane.transport import MqttLink, Will, unique_client_id
from edgeplane.worker import capabilities, health, held, recovery
from edgeplane.worker.handles import HandleRecord, HandleStore
from edgeplane.worker.monitor import Monitor, NodeSampler
from edgeplane.worker.tails import Tails

if TYPE_CHECKING:
    from edgeplane.otel import Tracer

log = logging.getLogger(__name__)

Key = tuple[str, int]
#: answers one chute call from afar: (HTTP status, JSON body)
ChuteHandler = Callable[[ChuteRequest], Awaitable[tuple[int, Any]]]


class ChuteEventSource(Protocol):
    """The node's undelivered chute events (``chutes/events.py``'s ``EventLog``)."""

    #: set when there is something new to send
    changed: asyncio.Event

    def batch(self, worker_id: str) -> ChuteEvents | None: ...

    async def ack(self, stream: str, seq: int) -> int: ...


class ChuteLogSource(Protocol):
    """Chute output followed from afar (``chutes/remote.py``'s ``RemoteLogs``)."""

    def __call__(self, ask: FollowChuteLogs) -> None: ...

    async def close(self) -> None: ...


#: Seconds a chute event waits for others to be sent with it.
CHUTE_EVENT_WINDOW_S = 0.05
_SEEN_LIMIT = 100_000
_MEMORY_ARTIFACTS = 64
#: Concurrent tasks per CPU by default: short wasm calls queue cheaply in the runtime.
DEFAULT_SLOTS_PER_CPU = 8
#: Seconds events wait to be published together.
EVENT_WINDOW_S = 0.002


#: why a module could not be had that another attempt would meet again
_PERMANENT = frozenset({"artifact_not_found", "artifact_too_large"})

#: An artifact whose base64 is at most this long is decoded, hashed and written on the
#: event loop (well under a millisecond); longer ones in a thread.
INLINE_ARTIFACT_CHARS = 64 * 1024


def _decode_artifact(encoded: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("artifact is not valid base64", field="artifact") from None


#: RunSpec's fields but the node-local ones, all of them Assignment's too
#: (tests/unit/test_run_spec.py checks it)
_RUN_FIELDS = tuple(name for name in RunSpec.model_fields if name not in LOCAL_FIELDS)
_LOCAL = dict.fromkeys(LOCAL_FIELDS)
_setattr = object.__setattr__


def run_spec(assignment: Assignment) -> RunSpec:
    """What the runtime is given of an assignment: the one place a worker converts them.

    On every task's path (a short wasm task starts in tens of µs), so the fields are taken
    over as they are, not validated again: the assignment was validated, against the same
    types, when its command was parsed. Shortcut: pydantic's ``model_construct`` would
    loop over the fields in Python (~5 µs, more than validating again: ~3 µs, growing
    with the inputs); setting the instance attributes it sets costs ~1.7 µs whatever the
    inputs. tests/unit/test_run_spec.py checks that the result equals the validated
    conversion and behaves as a model. The lists and dicts are shared with the
    assignment, which the worker drops once converted.
    """
    values = assignment.__dict__
    spec = RunSpec.__new__(RunSpec)
    _setattr(spec, "__dict__", {**{name: values[name] for name in _RUN_FIELDS}, **_LOCAL})
    _setattr(spec, "__pydantic_fields_set__", set(_RUN_FIELDS))
    _setattr(spec, "__pydantic_extra__", None)
    _setattr(spec, "__pydantic_private__", None)
    return spec


@dataclass
class _Run:
    spec: RunSpec
    #: the module's bytes, base64, as the command brought them: until they are stored
    artifact_b64: str | None = None
    job: asyncio.Task[None] | None = None
    handle: Handle | None = None
    runtime: Runtime | None = None
    stopped: bool = False
    #: when it started: set from the start of the attempt's handle when re-attached to it
    started_at: float | None = None
    #: its monitoring profile (None: not sampled; nor is an attempt re-attached to)
    monitoring: Monitoring | None = None
    #: the trace context of its dispatch (tracing on at the manager; not kept on disk)
    traceparent: str | None = None


@dataclass
class WorkerStats:
    bad_messages: int = 0
    #: commands refused for a missing or wrong MAC (also counted in bad_messages)
    unsigned: int = 0
    started: int = 0
    finished: int = 0
    duplicates: int = 0
    #: commands meant for another session of this worker id (left alone)
    foreign_commands: int = 0
    #: seconds a runtime took to start an attempt (``start``, or ``start_held`` and
    #: ``begin`` with the handle's save between), by runtime
    start_latency: dict[str, Histogram] = field(default_factory=dict)


class ArtifactCache:
    """Module bytes by sha256: a few in memory, all of them in a size-bounded blob store
    on disk (``artifacts/blobs.py``). Used from the event loop; what may take long (a
    file read, a big payload) runs in a thread."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.directory = directory
        _adopt_legacy(directory)
        self.blobs = BlobStore(directory, max_bytes)
        self._memory: OrderedDict[str, bytes] = OrderedDict()

    async def load(self, digest: str) -> bytes | None:
        """The bytes of ``digest``, from memory or from its file (read and checked in a
        thread); None when not held."""
        data = self._memory.get(digest)
        if data is None and digest in self.blobs:
            data = await asyncio.to_thread(self.blobs.open, digest)
            if data is not None:
                self._remember(digest, data)
        return data

    async def store(self, digest: str, encoded: str) -> bytes:
        """Decode base64 ``encoded``, check it against ``digest``, keep it; return it. A
        payload longer than :data:`INLINE_ARTIFACT_CHARS` is decoded, hashed and written in
        a thread (a 5 MB module: tens of ms)."""
        if len(encoded) <= INLINE_ARTIFACT_CHARS:
            data = _decode_artifact(encoded)
            self.blobs.put(digest, data)
        else:
            data = await asyncio.to_thread(self._decode_and_write, digest, encoded)
        self._remember(digest, data)
        return data

    async def keep(self, digest: str, data: bytes) -> None:
        """Keep verified bytes (delivered by the proxy): written in a thread when big."""
        if len(data) <= INLINE_ARTIFACT_CHARS:
            self.blobs.put(digest, data)
        else:
            await asyncio.to_thread(self.blobs.put, digest, data)
        self._remember(digest, data)

    def _decode_and_write(self, digest: str, encoded: str) -> bytes:
        data = _decode_artifact(encoded)
        self.blobs.put(digest, data)
        return data

    def _remember(self, digest: str, data: bytes) -> None:
        self._memory[digest] = data
        self._memory.move_to_end(digest)
        while len(self._memory) > _MEMORY_ARTIFACTS:
            self._memory.popitem(last=False)


def _adopt_legacy(directory: Path) -> None:
    """Earlier versions kept modules as ``<digest>.wasm``: renamed to the blob store's
    ``<digest>`` (checked against it when first read), so an upgraded worker neither
    fetches them again nor leaves them behind."""
    with contextlib.suppress(FileNotFoundError):
        for path in directory.glob("*.wasm"):
            if DIGEST.fullmatch(path.stem):
                with contextlib.suppress(OSError):
                    os.replace(path, directory / path.stem)


@dataclass
class WorkerOptions:
    worker_id: str
    broker_url: str
    data_dir: Path
    domain: str = "edgeplane"
    cluster_id: str = "local"
    labels: Mapping[str, str] = field(default_factory=dict)
    slots: int = 0
    #: tasks accepted per slot; those beyond the slots wait here, in order, for one to free
    prefetch: int = 1
    heartbeat_s: float = 5.0
    #: the CA an ``mqtts://`` broker's certificate must chain to (None: the system's)
    ca: Path | None = None
    #: this worker's broker identity (given when it joined; None on an anonymous broker)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: the key the manager's commands must be signed with (None: unsigned accepted)
    mac_key: bytes | None = field(default=None, repr=False)
    #: the key secret env is sealed to this worker with is derived from this one, else
    #: from ``mac_key`` (``up --broker`` gives its own workers one: their broker is not
    #: edgeplane's, so they have no ``mac_key``)
    secret_key: bytes | None = field(default=None, repr=False)
    #: seconds between samples of this node's usage on the ``metrics`` leaf (0: none)
    metrics_interval_s: float = 10.0
    #: bytes of delivered artifacts kept on disk (``--artifact-cache-mb``); also the
    #: largest artifact this worker takes
    artifact_cache_bytes: int = DEFAULT_CACHE_BYTES
    #: seconds a fetch from the proxy waits for a chunk before asking again
    artifact_retry_s: float = 5.0
    #: the address its tasks' published ports are reached at (empty: its first
    #: reachable address, see ``capabilities.address``)
    advertise_address: str = ""


class WorkerAgent:
    def __init__(
        self,
        options: WorkerOptions,
        runtimes: Mapping[str, Runtime],
        *,
        clock: clocks.Clock | None = None,
        cleaners: Mapping[str, Runtime] | None = None,
    ) -> None:
        """``cleaners``: runtimes not offered any more that can still stop what an earlier
        run of this worker left on them (see :func:`recovery.recover`)."""
        self.options = options
        self.id = check_segment(options.worker_id, "worker_id", "a worker id")
        self.runtimes = dict(runtimes)
        self.cleaners = dict(cleaners or {})
        self.handles = HandleStore(options.data_dir / "handles")
        key = options.secret_key or options.mac_key
        self._sealing_key = None if key is None else sealing.derive(key)
        #: attempts with a handle record on disk
        self._persisted: set[Key] = set()
        #: attempts whose final event is saved and being released by their runtime: their
        #: record stays until that is done, even once acked (True), so a worker killed
        #: meanwhile releases them when it restarts instead of leaving their directory
        self._releasing: dict[Key, bool] = {}
        self.clock: clocks.Clock = clock or clocks.SystemClock()
        self.session = clocks.new_id()
        self.topics = Topics(options.domain, options.cluster_id)
        self.slots = options.slots or DEFAULT_SLOTS_PER_CPU * (psutil.cpu_count() or 1)
        self.prefetch = options.prefetch
        self.heartbeat_s = options.heartbeat_s
        self.stats = WorkerStats()
        self.registered = asyncio.Event()
        #: set when the manager refused this process (another live one has its id)
        self.refused = asyncio.Event()
        self.refusal = ""
        self.artifacts = ArtifactCache(options.data_dir / "artifacts", options.artifact_cache_bytes)
        self._chunks_topic = self.topics.chunks(self.id)
        fetch_topic = self.topics.fetch(self.id)
        self.fetcher = Fetcher(
            lambda request: self.link.publish(fetch_topic, request),
            max_bytes=options.artifact_cache_bytes,
            clock=self.clock,
            retry_s=options.artifact_retry_s,
        )
        #: every accepted attempt by task id: running, or waiting in ``_queue`` for a slot
        self._runs: dict[str, _Run] = {}
        self._queue: deque[_Run] = deque()
        self._running = 0
        self._seen: OrderedDict[Key, None] = OrderedDict()
        self.events = EventOutbox(
            self._send_events, self.clock, EVENT_WINDOW_S, busy=lambda: bool(self._runs)
        )
        self._epoch, self._seq = "", 0
        #: refuses commands of a deposed leader (protocol/terms.py)
        self.terms = TermGate()
        #: set by :meth:`stop`: start commands are not taken any more
        self.leaving = False
        #: answers chute calls from the control plane (``edgeplane.chutes.remote``); None
        #: on a worker without the Edge API
        self.chutes: ChuteHandler | None = None
        #: the node's chute events, delivered to the manager until acked; None on a
        #: worker without the Edge API
        self.chute_events: ChuteEventSource | None = None
        #: chute output followed from afar (None: no chutes here)
        self.chute_logs: ChuteLogSource | None = None
        self._chute_calls: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._process = psutil.Process()
        self.monitor = Monitor(
            self._send_metrics,
            self.clock,
            node=NodeSampler(options.data_dir, self.clock),
            node_interval_s=options.metrics_interval_s,
        )
        self.tails = Tails(self._send_logs, self.clock)
        #: traces of its tasks' runs (``edgeplane.otel``; None: off, nothing else is done)
        self.tracer: Tracer | None = None
        #: where this worker's published ports are reached (found at the first use)
        self._address = options.advertise_address
        self.link = MqttLink(
            options.broker_url,
            client_id=unique_client_id(
                f"edgeplane-worker-{options.domain}-{options.cluster_id}-{self.id}"
            ),
            subscriptions=[
                self.topics.cmd(self.id),
                self.topics.welcome(self.id),
                self._chunks_topic,
            ],
            on_message=self._on_message,
            will=Will(
                topic=self.topics.alive(self.id),
                payload=encode("alive", Alive(online=False, session=self.session)),
                qos=1,
            ),
            on_connect=self._send_hello,
            ca=options.ca,
            username=options.username,
            password=options.password,
        )

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self._reattach()
        await self.link.start()
        self._loops = [
            asyncio.create_task(self._heartbeat_loop(), name=f"worker-{self.id}-heartbeat"),
            asyncio.create_task(self.events.run(), name=f"worker-{self.id}-events"),
            asyncio.create_task(self.monitor.run(), name=f"worker-{self.id}-monitor"),
        ]
        if self.chute_events is not None:
            self._loops.append(
                asyncio.create_task(
                    self._chute_events_loop(self.chute_events), name=f"worker-{self.id}-chutes"
                )
            )

    async def stop(self) -> None:
        """Leave: the manager sees us offline and re-places our tasks (no "cancelled").

        Every attempt is stopped at once, so leaving takes one runtime grace period at
        most (SIGTERM, SIGKILL after it), however many tasks run. A start command that
        comes meanwhile is not taken: the manager re-places what it sent with the rest
        of our tasks when we say we leave. (Taken, it ran a command the manager then ran
        elsewhere too, and the wait below waited its 5 s for it.)"""
        self.events.closed = True
        self.leaving = True
        stops = [self._stop_run(run) for run in list(self._runs.values())]
        for failed in await asyncio.gather(*stops, return_exceptions=True):
            if isinstance(failed, Exception):  # the others are stopped all the same
                log.error("a task did not stop", exc_info=failed)
        jobs = [run.job for run in self._runs.values() if run.job is not None]
        if jobs:
            await asyncio.wait(jobs, timeout=5)
        gone = Alive(online=False, session=self.session, leaving=True)
        await self.link.publish(self.topics.alive(self.id), encode("alive", gone))
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        if self.chute_logs is not None:
            await self.chute_logs.close()
        await self.tails.close()
        await self.fetcher.close()
        await self.link.stop()
        for runtime in self.runtimes.values():
            await runtime.close()
        if self.tracer is not None:
            await self.tracer.shutdown()

    @property
    def running(self) -> int:
        """Attempts running now (holding a slot)."""
        return self._running

    def capabilities(self) -> Capabilities:
        host = self.runtimes.get("host")
        container = self.runtimes.get("container")
        return capabilities.detect(
            runtimes=self.runtimes,
            labels=self.options.labels,
            slots=self.slots,
            data_dir=self.options.data_dir,
            prefetch=self.prefetch,
            host_user=host.user.name if isinstance(host, HostRuntime) else None,
            # a bridge configured and usable (roles/worker.py: node_network), else the
            # runtime has none and such tasks would fail no_network here
            bridge=isinstance(container, ContainerRuntime) and container.network is not None,
        )

    def held_artifacts(self) -> list[str]:
        """The digests of the modules and container images it holds, most recently used
        first and bounded (worker/held.py): the scheduler prefers it for tasks naming one."""
        container = self.runtimes.get("container")
        images = (
            container.puller.recent(HELD_ARTIFACTS)
            if isinstance(container, ContainerRuntime)
            else []
        )
        return held.report(self.artifacts.blobs.recent(HELD_ARTIFACTS), images)

    def _active(self) -> list[str]:
        return list({*self._runs, *self.events.unacked_tasks()})

    async def _send_hello(self) -> None:
        hello = Hello(
            worker_id=self.id,
            session=self.session,
            capabilities=self.capabilities(),
            active=self._active(),
            epoch=self._epoch,
            seq=self._seq,
            artifacts=self.held_artifacts(),
        )
        await self.link.publish(self.topics.hello(self.id), encode("hello", hello))

    # ------------------------------------------------------------------ messages
    async def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self._chunks_topic:
            # binary and unsigned: each blob is checked against the digest its (signed)
            # start command named before anything runs it (artifacts/fetch.py)
            self.fetcher.on_chunk(payload)
            return
        key = self.options.mac_key
        if key is not None and not signing.verify(key, payload):
            self.stats.bad_messages += 1
            self.stats.unsigned += 1
            log.warning("command refused: no valid MAC from the manager", extra={"topic": topic})
            return
        try:
            envelope = decode(payload)
            body = parse_body(envelope.type, envelope.body)
        except Invalid as exc:
            self.stats.bad_messages += 1
            log.warning("bad message", extra={"topic": topic, "error": exc.detail})
            return
        if not self.terms.admit(envelope.term):
            log.warning(
                "command refused: from a manager that no longer leads",
                extra={"topic": topic, "term": envelope.term, "leader_term": self.terms.term},
            )
            return
        if isinstance(body, StartTasks):
            if self.leaving:  # re-placed by the manager once it hears we left (stop)
                log.info("tasks not taken: leaving", extra={"count": len(body.tasks)})
                return
            if body.session not in ("", self.session):
                # Another process with this id holds the tasks (a restart's older process,
                # or a live twin this one is refused in favour of): not ours to run.
                self.stats.foreign_commands += 1
                return
            if body.epoch != self._epoch:
                self._epoch, self._seq = body.epoch, 0
            self._seq = max(self._seq, body.seq)
            for spec in body.tasks:
                self._accept(spec)
            for bad in body.unrunnable:
                self._refuse(bad)
            if body.unreadable:
                self.stats.bad_messages += 1
                log.warning(
                    "assignments without a task id and attempt",
                    extra={"topic": topic, "count": body.unreadable},
                )
        elif isinstance(body, StopTasks):
            for task_id in body.task_ids:
                run = self._runs.get(task_id)
                if run is not None:
                    await self._stop_run(run)
        elif isinstance(body, AckEvents):
            self.events.ack(body.keys)
            done = [k for k in ((e.task_id, e.attempt) for e in body.keys) if k in self._persisted]
            for pending in [k for k in done if k in self._releasing]:
                self._releasing[pending] = True  # removed once released
                done.remove(pending)
            if done:  # the manager has the results: nothing to recover of these any more
                self._persisted.difference_update(done)
                await asyncio.to_thread(self.handles.remove, done)
        elif isinstance(body, Welcome):
            if body.session == self.session and body.error:
                log.error("refused by the manager", extra={"reason": body.error})
                self.refusal = body.error
                self.refused.set()
            elif body.session == self.session:
                self.heartbeat_s = body.heartbeat_s
                self.registered.set()
                self.events.resend()
                if self.chute_events is not None:  # what the node kept while cut off
                    self.chute_events.changed.set()
        elif isinstance(body, Reregister):
            await self._send_hello()
        elif isinstance(body, AckChuteEvents):
            if self.chute_events is not None:
                await self.chute_events.ack(body.stream, body.seq)
        elif isinstance(body, FollowChuteLogs):
            if self.chute_logs is not None:
                self.chute_logs(body)
            elif body.follow_s > 0:
                end = ChuteLogs(id=body.id, end=True, reason=f"worker {self.id} serves no chutes")
                await self.send_chute_logs(end)
        elif isinstance(body, ChuteRequest):
            # off the message loop: a call may wait on the node's change queue
            call = asyncio.create_task(self._answer_chute(body), name=f"chute-{body.id}")
            self._chute_calls.add(call)
            call.add_done_callback(self._chute_calls.discard)
        elif isinstance(body, FollowLogs):
            self._follow(body)
        else:
            self.stats.bad_messages += 1
            log.warning("unexpected message", extra={"topic": topic, "type": envelope.type})

    async def _answer_chute(self, request: ChuteRequest) -> None:
        if self.chutes is None:
            status, answer = (
                501,
                {
                    "title": "Not Implemented",
                    "status": 501,
                    "detail": f"worker {self.id} serves no chutes (start it with --api)",
                },
            )
        else:
            status, answer = await self.chutes(request)
        response = ChuteResponse(id=request.id, status=status, body=answer)
        try:
            await self.link.publish(self.topics.events(self.id), encode("chute.response", response))
        except Exception as exc:  # the caller times out and says so
            log.warning("chute answer not sent", extra={"id": request.id, "error": str(exc)})

    def _follow(self, ask: FollowLogs) -> None:
        run = self._runs.get(ask.task_id)
        if run is None or run.spec.attempt != ask.attempt:
            return  # not here (any more): the manager has, or will have, its final logs
        if run.handle is None or run.runtime is None:
            return  # not started yet: the next renewal finds it running
        self.tails.follow(ask.task_id, ask.attempt, run.runtime.log_files(run.handle), ask.follow_s)

    def _first_time(self, key: Key) -> bool:
        """Whether ``(task id, attempt)`` is new; a redelivered command runs nothing twice."""
        if key in self._seen:
            self.stats.duplicates += 1
            return False
        self._remember(key)
        return True

    def _refuse(self, bad: Unrunnable) -> None:
        """An assignment this worker cannot even read ends ``failed`` with the reason (not
        transient: sending it again would not help); the rest of its command runs."""
        if not self._first_time((bad.task_id, bad.attempt)):
            return
        self._fail_unrunnable(bad.task_id, bad.attempt, bad.reason)

    def _fail_unrunnable(self, task_id: str, attempt: int, reason: str) -> None:
        log.warning("assignment refused", extra={"task_id": task_id, "reason": reason})
        event = TaskEvent(
            task_id=task_id, attempt=attempt, state="failed", error=reason, ts=self.clock.now()
        )
        self.events.emit_final(event)

    def _accept(self, assignment: Assignment) -> None:
        if not self._first_time((assignment.task_id, assignment.attempt)):
            return
        spec = run_spec(assignment)
        if assignment.sealed_env is not None or assignment.secret_env:
            try:
                spec.env = {**spec.env, **self._secret_env(assignment)}
            except Invalid as exc:  # not transient: the same key would fail again
                self._fail_unrunnable(spec.task_id, spec.attempt, exc.detail)
                return
        previous = self._runs.get(spec.task_id)
        if previous is not None:  # a newer attempt replaces an abandoned one
            previous.stopped = True
        run = _Run(
            spec=spec,
            artifact_b64=assignment.artifact_b64,
            monitoring=assignment.monitoring,
            traceparent=assignment.traceparent,
        )
        self._runs[spec.task_id] = run
        self._queue.append(run)
        self._start_queued()

    def _secret_env(self, assignment: Assignment) -> dict[str, str]:
        """The assignment's secret env: opened with this worker's key when sealed."""
        if assignment.sealed_env is None:
            return assignment.secret_env
        if self._sealing_key is None:
            raise Invalid(
                "secret_env came sealed but this worker has no key (it did not join)",
                field="secret_env",
            )
        return sealing.unseal(
            self._sealing_key,
            assignment.sealed_env,
            task_id=assignment.task_id,
            attempt=assignment.attempt,
            member_id=self.id,
        )

    def _remember(self, key: Key) -> None:
        """An attempt this worker has: a start command for it again is a duplicate."""
        self._seen[key] = None
        while len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)

    def _start_queued(self) -> None:
        """Start waiting attempts, in the order they came, while slots are free. The
        manager sends up to slots * prefetch, so the next tasks are already here when a
        slot frees instead of one round trip away."""
        while self._queue and self._running < self.slots:
            self._launch(self._queue.popleft())

    def _launch(self, run: _Run) -> None:
        self._running += 1
        run.job = asyncio.create_task(self._execute(run), name=f"task-{run.spec.task_id}")

    # ------------------------------------------------------------------ running
    async def _execute(self, run: _Run) -> None:
        spec = run.spec
        # stopped while it waited for a slot: it never starts
        started = None if run.stopped else (run.started_at or self.clock.now())
        try:
            if started is None:
                outcome = Outcome(state="cancelled", error="stopped")
            else:
                outcome = await self._start_and_wait(run, started)
        finally:
            self._running -= 1
            self._start_queued()
            if run.monitoring is not None:
                self.monitor.unwatch(spec.task_id, spec.attempt)
        if run.stopped and outcome.state != "cancelled":
            outcome = Outcome(
                state="cancelled", error="stopped", stdout=outcome.stdout, stderr=outcome.stderr
            )
        self.stats.finished += 1
        event = TaskEvent(
            task_id=spec.task_id,
            attempt=spec.attempt,
            state=outcome.state,
            started_at=started,
            results=outcome.results,
            error=outcome.error,
            transient=outcome.transient,
            reason=outcome.reason,
            exit_code=outcome.exit_code,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            ts=self.clock.now(),
        )
        if self.tracer is not None:
            event.traceparent = self.tracer.ran(
                run.traceparent,
                task_id=spec.task_id,
                attempt=spec.attempt,
                runtime=spec.runtime,
                worker_id=self.id,
                state=event.state,
                started=started,
                ended=event.ts,
            )
        if self.tails.following(spec.task_id):  # its last lines before its end
            await self.tails.last(spec.task_id, spec.attempt)
        # Still in _runs meanwhile: a heartbeat must not leave the attempt out.
        await self._keep_final(run, event)
        key = (spec.task_id, spec.attempt)
        if key in self._persisted:
            self._releasing[key] = False
        self.events.emit_final(event)
        if self._runs.get(spec.task_id) is run:
            del self._runs[spec.task_id]
        if not self._runs:
            self.events.settled()  # nothing runs: no more events are coming soon
        # Only now: until the final event was on disk, what the runtime kept of the
        # attempt (its exit status) was all a restarted worker could learn its end from.
        if run.runtime is not None and run.handle is not None:
            await self._release(run.runtime, run.handle)
        if self._releasing.pop(key, False):  # acked meanwhile: the record can go now
            self._persisted.discard(key)
            await asyncio.to_thread(self.handles.remove, [key])

    async def _start_and_wait(self, run: _Run, started: float) -> Outcome:
        spec = run.spec
        try:
            if run.handle is None:  # else re-attached to: it runs already
                self.stats.started += 1
                ended = await self._start(run, started)
                if ended is not None:
                    return ended
            assert run.runtime is not None and run.handle is not None
            if spec.healthcheck is not None:
                return await self._wait_checked(run, started)
            return await run.runtime.wait(run.handle)
        except asyncio.CancelledError:
            return Outcome(state="cancelled", error="stopped")
        except Exception as exc:  # a runtime bug must not take the worker down
            log.exception("runtime error", extra={"task_id": spec.task_id})
            return Outcome(state="failed", error=f"internal runtime error: {exc}", transient=True)

    async def _start(self, run: _Run, started: float) -> Outcome | None:
        """Start the attempt: None once it runs (reported running), else how it ended."""
        spec = run.spec
        runtime = self.runtimes.get(spec.runtime)
        if runtime is None:
            return Outcome(
                state="failed", error=f"runtime {spec.runtime!r} is not enabled on this worker"
            )
        try:
            artifact = await self._artifact(run)
        except Invalid as exc:
            # a module that does not exist or is too big stays so; anything else (the
            # proxy unreachable, deliveries spoiled) another attempt may not meet
            transient = exc.reason not in _PERMANENT
            return Outcome(state="failed", error=exc.detail, transient=transient, reason=exc.reason)
        key = (spec.task_id, spec.attempt)
        began = time.perf_counter()
        try:
            if runtime.recoverable:
                # The intent first: a worker killed before the handle's save finds it and
                # removes what the start left (whose command never ran) and reports that.
                # Not synced (~0.1 ms, not the several ms of an fsync): it is needed only
                # after the worker process's death, which does not lose what it wrote; a
                # machine's crash ends the attempt's processes as well.
                intent = HandleRecord(spec=spec, state={}, started_at=started)
                await asyncio.to_thread(self.handles.save, intent, sync=False)
                self._persisted.add(key)
                run.handle = await runtime.start_held(spec, artifact)
            else:
                run.handle = await runtime.start(spec, artifact)
        except TaskFailure as exc:
            if key in self._persisted:
                self._persisted.discard(key)
                await asyncio.to_thread(self.handles.remove, [key])
            return Outcome(
                state="failed", error=exc.detail, transient=exc.transient, reason=exc.reason
            )
        run.runtime = runtime
        if runtime.recoverable:
            # On disk before its command runs and before it is reported running: whatever
            # the manager counts on this worker for, and every command that runs, a
            # restarted worker finds again. Killed before the save, the worker leaves a
            # process that never runs its command (Runtime.start_held).
            # Not synced either, as the intent above: what it guards against is the worker
            # process dying, which loses nothing written; a machine's crash ends the
            # attempt too. The command waits for this save, and an fsync cost it 0.6 ms
            # (median; 2.5-4 ms at the 90th percentile) on this machine.
            record = HandleRecord(spec=spec, state=run.handle.state, started_at=started)
            try:
                await asyncio.to_thread(self.handles.save, record, sync=False)
            except BaseException:
                await runtime.stop(run.handle)  # held: it ends without running anything
                raise
            self._persisted.add(record.key)
            await runtime.begin(run.handle)
        latency = self.stats.start_latency.get(spec.runtime)
        if latency is None:
            latency = self.stats.start_latency[spec.runtime] = Histogram()
        latency.observe(time.perf_counter() - began)
        if spec.healthcheck is None:  # else once its check passes (_wait_checked)
            self._report_running(run, started)
        if run.monitoring is not None:
            handle = run.handle  # (bound now: the lambda must not see a later attempt's)
            self.monitor.watch(
                spec.task_id, spec.attempt, run.monitoring, lambda: runtime.stats(handle)
            )
        if run.stopped:
            await runtime.stop(run.handle)
        return None

    def _report_running(self, run: _Run, started: float) -> None:
        spec = run.spec
        event = TaskEvent(
            task_id=spec.task_id,
            attempt=spec.attempt,
            state="running",
            ts=started,
            endpoints=self._endpoints(run.handle),
        )
        self.events.emit(event)

    def _endpoints(self, handle: Handle | None) -> list[Endpoint]:
        """Where the attempt's published ports are reached: this worker's address and
        the host ports its runtime picked (``ports`` in the handle's state)."""
        if handle is None:
            return []
        ports = handle.state.get("ports") or []
        if not ports:
            return []
        if not self._address:
            self._address = capabilities.address()
        try:
            return [Endpoint.model_validate({**p, "address": self._address}) for p in ports]
        except (ValueError, TypeError):  # a state an older version wrote: nothing to show
            log.warning("unreadable published ports", extra={"task_id": handle.task_id})
            return []

    async def _wait_checked(self, run: _Run, started: float) -> Outcome:
        """Wait for an attempt with a health check: reported running once it passes,
        stopped and ``failed`` (reason ``unhealthy``) once it is unhealthy
        (``health.py``)."""
        runtime, handle, check = run.runtime, run.handle, run.spec.healthcheck
        assert runtime is not None and handle is not None and check is not None
        ended = asyncio.ensure_future(runtime.wait(handle))
        watcher = asyncio.ensure_future(
            health.watch(
                lambda: runtime.probe(handle, check),
                check,
                lambda: self.clock.now() - started,
                lambda: self._report_running(run, started),
            )
        )
        try:
            await asyncio.wait({ended, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            ended.cancel()  # (only the wait: the attempt's outcome is shielded)
            watcher.cancel()
            raise
        if not watcher.done():  # it ended on its own: its outcome stands
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            return await ended
        failure = watcher.exception()
        if failure is not None:  # a probe's bug must not end the task: it runs unchecked
            log.error("health check failed to run", exc_info=failure)
            return await ended
        why = f"{check.describe()}: {watcher.result()}"
        log.warning("task unhealthy: stopping it", extra={"task_id": handle.task_id, "why": why})
        await runtime.stop(handle)
        outcome = await ended
        if run.stopped:  # stopped meanwhile for another reason: cancelled as asked
            return outcome
        return Outcome(
            state="failed",
            error=f"{health.UNHEALTHY}: {why}",
            reason=health.UNHEALTHY,
            exit_code=outcome.exit_code,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
        )

    async def _keep_final(self, run: _Run, event: TaskEvent) -> None:
        """Write the final event into the attempt's handle record (until the manager acks
        it), or drop the record when the worker is leaving: the manager re-places what a
        leaving worker stopped, so nothing of it is to be reported later."""
        key = (event.task_id, event.attempt)
        if key not in self._persisted:
            return
        if self.events.closed:
            self._persisted.discard(key)
            await asyncio.to_thread(self.handles.remove, [key])
            return
        state = run.handle.state if run.handle is not None else {}
        record = HandleRecord(spec=run.spec, state=state, started_at=event.started_at, final=event)
        await asyncio.to_thread(self.handles.save, record)

    async def _release(self, runtime: Runtime, handle: Handle) -> None:
        """Let the runtime forget an attempt whose final event is saved (or not needed)."""
        try:
            await runtime.release(handle)
        except Exception:  # a runtime bug must not take the worker down; a restart retries
            log.exception("runtime release failed", extra={"task_id": handle.task_id})

    async def _reattach(self) -> None:
        """Take back what the previous process of this worker left (see ``recovery.py``):
        re-attach to the attempts still running, report how the others ended."""
        records = await asyncio.to_thread(self.handles.load)
        if not records:
            return
        found = await recovery.recover(records, self.runtimes, self.cleaners, self.clock)
        for record in found.finals:
            assert record.final is not None
            await asyncio.to_thread(self.handles.save, record)
            self._persisted.add(record.key)
            self._remember(record.key)
            self.events.emit_final(record.final)
        # Saved: what the runtimes kept of those attempts (an earlier process may have
        # saved the final event and died before releasing) is not needed any more.
        for record in found.finals:
            name = record.spec.runtime
            runtime = self.runtimes.get(name) or self.cleaners.get(name)
            if runtime is not None:
                handle = Handle(record.spec.task_id, record.spec.attempt, name, record.state)
                await self._release(runtime, handle)
        for cleaner in self.cleaners.values():
            await cleaner.close()
        for resumed in found.resumed:
            spec = resumed.record.spec
            run = _Run(
                spec=spec,
                handle=resumed.handle,
                runtime=resumed.runtime,
                started_at=resumed.record.started_at,
            )
            self._persisted.add(resumed.record.key)
            self._remember(resumed.record.key)
            self._runs[spec.task_id] = run
            self._launch(run)
        log.info(
            "took back the tasks of the previous run",
            extra={"reattached": len(found.resumed), "ended": len(found.finals)},
        )

    async def _artifact(self, run: _Run) -> bytes | None:
        spec = run.spec
        if spec.artifact is None:
            return None
        if run.artifact_b64 is not None:
            data = await self.artifacts.store(spec.artifact, run.artifact_b64)
            run.artifact_b64 = None  # kept in the cache now: no need to hold a second copy
            return data
        cached = await self.artifacts.load(spec.artifact)
        if cached is None:
            # not held (its start command carried its digest only, or the cache dropped
            # it): the proxy delivers it, verified
            cached = await self.fetcher.fetch(spec.artifact)
            await self.artifacts.keep(spec.artifact, cached)
        return cached

    async def _stop_run(self, run: _Run) -> None:
        run.stopped = True
        if run in self._queue:  # not started: it ends now, as cancelled, taking no slot long
            self._queue.remove(run)
            self._launch(run)
        elif run.handle is not None and run.runtime is not None:
            await run.runtime.stop(run.handle)
        elif run.job is not None:
            run.job.cancel()

    # ------------------------------------------------------------------ events
    async def _chute_events_loop(self, source: ChuteEventSource) -> None:
        """Send the chute events the node holds, oldest first: at once when there are new
        ones, and again every heartbeat until the manager acks them (it applies each once,
        so a repeat is harmless). Nothing while the link is down: they wait on the node."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(source.changed.wait(), self.heartbeat_s)
            await asyncio.sleep(CHUTE_EVENT_WINDOW_S)  # the rest of a burst goes along
            source.changed.clear()
            if not self.link.connected.is_set():
                continue
            batch = source.batch(self.id)
            if batch is not None:
                try:
                    await self._publish(self.topics.events(self.id), "chute.events", batch)
                except Exception as exc:  # kept on the node: sent again
                    log.warning("chute events not sent", extra={"error": str(exc)})

    async def send_chute_logs(self, logs: ChuteLogs) -> None:
        """A followed chute's output; dropped while the link is down (the follower's
        manager ends the follow then)."""
        if self.link.connected.is_set():
            await self._publish(self.topics.events(self.id), "chute.logs", logs)

    async def _send_logs(self, chunks: LogChunks) -> None:
        await self._publish(self.topics.events(self.id), "task.logs", chunks)

    async def _send_metrics(self, metrics: Metrics) -> None:
        # QoS 0: a lost sample is not worth a PUBACK per batch
        await self.link.publish(self.topics.metrics(self.id), encode("metrics", metrics), qos=0)

    async def _send_events(self, events: TaskEvents) -> None:
        await self._publish(self.topics.events(self.id), "task.events", events)

    async def _heartbeat_loop(self) -> None:
        while True:
            alive = Alive(
                session=self.session,
                active=self._active(),
                usage=capabilities.usage(self._process),
                epoch=self._epoch,
                seq=self._seq,
                # what it holds, so the scheduler can prefer it for tasks needing those
                artifacts=self.held_artifacts(),
            )
            # QoS 0: a lost heartbeat costs nothing (3 must be missed), and with 10,000
            # workers the manager would otherwise send 2,000 PUBACKs a second.
            await self.link.publish(self.topics.alive(self.id), encode("alive", alive), qos=0)
            self.events.resend(older_than=self.heartbeat_s)
            await asyncio.sleep(self.heartbeat_s)

    async def _publish(self, topic: str, type_: str, body: BaseModel) -> None:
        await self.link.publish(topic, encode(type_, body))
