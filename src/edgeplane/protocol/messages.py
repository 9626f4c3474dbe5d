"""Bodies of the messages between manager and workers, one model per envelope type."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)

from edgeplane.errors import Invalid
from edgeplane.model import (
    Aggregate,
    Capabilities,
    ClusterInfo,
    Constraints,
    Limits,
    Task,
    Usage,
)
from edgeplane.model.bounds import Project, check_json
from edgeplane.model.service import MAX_PORTS, Endpoint, HealthCheck, Network, PortSpec
from edgeplane.model.task import NO_LIMITS, no_limits
from edgeplane.monitoring import PROFILES, Monitoring, resolve
from edgeplane.tracing import bounded


class _Body(BaseModel):
    #: (hide_input_in_errors: an assignment's error text must not carry its secret env)
    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)


#: How many held artifact digests a worker reports (its most recently used ones).
HELD_ARTIFACTS = 16
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _held(value: Any) -> list[str]:
    """The first :data:`HELD_ARTIFACTS` well-formed sha256 hex digests of ``value``.

    Lenient on purpose: the list only steers a soft scheduling preference, so a member
    that sends too many or odd entries loses those entries, never its heartbeat."""
    if not isinstance(value, list):
        return []
    found = [d for d in value if isinstance(d, str) and _SHA256_HEX.fullmatch(d)]
    return list(dict.fromkeys(found))[:HELD_ARTIFACTS]


class Hello(_Body):
    """worker → manager: registration, also sent after every reconnect."""

    worker_id: str
    session: str
    capabilities: Capabilities
    active: list[str] = Field(default_factory=list, description="ids of tasks it still runs")
    #: (epoch, seq) of the last ``task.start`` received, as in :class:`Alive`
    epoch: str = ""
    seq: int = 0
    #: set when the sender is a cluster registering with the root
    cluster: ClusterInfo | None = None
    aggregate: Aggregate | None = None
    #: a cluster's leader: its lease's lineage and its term (``edgeplane.store.leases``):
    #: a new session of a live cluster with its lineage and a later term is its new
    #: leader, which takes the cluster over at the root (empty: not a leader's hello)
    lineage: str = Field(default="", max_length=64)
    term: int = Field(default=0, ge=0, lt=2**63)
    #: digests of artifacts the worker holds, most recently used first (bounded)
    artifacts: list[str] = Field(default_factory=list)

    @field_validator("artifacts", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> list[str]:
        return _held(value)


class Welcome(_Body):
    """manager → worker (or root → cluster): registration accepted."""

    worker_id: str
    session: str
    heartbeat_s: float
    #: the broker the member should use from now on, and its credentials there
    #: (empty: keep the current broker, no credentials needed)
    broker_url: str = ""
    username: str = ""
    password: str = ""
    #: set: registration refused (another live process holds this member's id); the
    #: member must stop, saying why
    error: str = ""
    #: with ``error``: refused because a later leader of the same cluster holds it at the
    #: root (the sender was deposed: it stands by instead of stopping)
    superseded: bool = False


class Alive(_Body):
    """worker → manager heartbeat; the broker's last will sends ``online=False``."""

    online: bool = True
    #: with ``online=False``: sent by a worker that stopped its tasks as it left (not its
    #: last will): none of them will come back, so the manager re-places them at once
    leaving: bool = False
    session: str = ""
    active: list[str] = Field(default_factory=list)
    usage: Usage | None = None
    #: (epoch, seq) of the last ``task.start`` received: every task sent up to it must be
    #: in ``active``, so the manager can tell a lost command from one still in flight.
    epoch: str = ""
    seq: int = 0
    #: as in :class:`Hello`; None from a member that does not report them (then the last
    #: reported list stands)
    artifacts: list[str] | None = None

    @field_validator("artifacts", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> list[str] | None:
        return None if value is None else _held(value)


class Assignment(_Body):
    """What a worker needs to run one attempt of a task."""

    task_id: str
    attempt: int
    name: str = ""
    runtime: str
    mode: str = "function"
    entrypoint: str = ""
    artifact: str | None = None
    artifact_b64: str | None = Field(
        default=None, description="module bytes, sent once per worker session"
    )
    inputs: list[Any] = Field(default_factory=list)
    cli_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    #: the task's secret env, sealed to the receiving member (``sealing.py``) when the
    #: manager holds a key for it, else in the clear in ``secret_env`` (a broker edgeplane
    #: does not secure: docs/security.md, "Secrets"); the receiver merges it into ``env``
    sealed_env: str | None = Field(default=None, repr=False)
    secret_env: dict[str, str] = Field(default_factory=dict, repr=False)
    command: list[str] | None = None
    image: str | None = None
    #: container: its network, published ports and health check (docs/services.md)
    network: Network = "none"
    ports: list[PortSpec] = Field(default_factory=list, max_length=MAX_PORTS)
    healthcheck: HealthCheck | None = None
    limits: Limits = Field(default_factory=no_limits)
    daemon: bool = False
    #: the task's profile, resolved (None: not sampled; docs/metrics.md)
    monitoring: Monitoring | None = None
    #: root → cluster only: what the cluster's own scheduler needs (workers ignore them)
    retries: int = 0
    priority: int = 50
    constraints: Constraints | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    pinned_worker: str | None = None
    #: the task's project, which the cluster stores it in (docs/security.md "Projects")
    project: Project = "default"
    #: the W3C trace context of the attempt's dispatch (only when tracing is on; an
    #: ill-formed one is ignored and counted, never the assignment's failure)
    traceparent: str | None = None

    @field_validator("traceparent", mode="before")
    @classmethod
    def _traceparent(cls, value: Any) -> str | None:
        return bounded(value)

    @classmethod
    def of(
        cls,
        task: Task,
        *,
        artifact_b64: str | None = None,
        for_cluster: bool = False,
        secrets: Mapping[str, Any] | None = None,
    ) -> Assignment:
        """The one place an assignment is built from a task: what a worker needs, and
        ``for_cluster`` (root → cluster) also what the cluster's own scheduler and store
        need. ``secrets``: the task's secret env as its member may receive it (sealed to
        it, or in the clear; ``manager/dispatch.py``)."""
        extra: dict[str, Any] = dict(secrets or {})
        if for_cluster:
            extra |= {
                "retries": task.retries,
                "priority": task.priority,
                "constraints": task.constraints,
                "metadata": task.metadata,
                "pinned_worker": task.pinned_worker,
                "project": task.project,
            }
        return cls(
            task_id=task.id,
            attempt=task.attempt,
            name=task.name,
            runtime=task.runtime,
            mode=task.mode,
            entrypoint=task.entrypoint,
            artifact=task.artifact,
            artifact_b64=artifact_b64,
            inputs=task.inputs,
            cli_args=task.cli_args,
            env=task.env,
            command=task.command,
            image=task.image,
            network=task.network,
            ports=task.ports,
            healthcheck=task.healthcheck,
            limits=task.limits,
            daemon=task.daemon,
            monitoring=resolve(task.monitoring, daemon=task.daemon),
            **extra,
        )


#: The JSON of the named profiles, made once (a profile is a frozen default: see below).
_PROFILE_JSON: dict[int, dict[str, Any]] = {
    id(profile): profile.model_dump(mode="json")
    for profile in PROFILES.values()
    if profile is not None
}

#: The fields :func:`worker_assignment` fills in: every field of :class:`Assignment` but
#: the root → cluster ones and ``traceparent`` (a test holds this list to the model's).
WORKER_FIELDS: tuple[str, ...] = (
    "task_id", "attempt", "name", "runtime", "mode", "entrypoint", "artifact", "artifact_b64",
    "inputs", "cli_args", "env", "sealed_env", "secret_env", "command", "image", "network",
    "ports", "healthcheck", "limits", "daemon", "monitoring",
)  # fmt: skip


def _dumped(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_defaults=True)


def worker_assignment(
    task: Task, *, artifact_b64: str | None = None, secrets: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``Assignment.of(task, …)`` for a worker (not a cluster, no trace context) as it goes
    on the wire: exactly ``Assignment.of(…).model_dump(mode="json", exclude_defaults=True)``
    (what :func:`~edgeplane.protocol.codec.encode` sends), built straight from the task.

    Shortcut: building the model validated every field again (the task's were already) and
    serialising it compared each of its 28 fields with its default; for a no-op task that
    was 9.9 ms per 1,000 assignments and this 1.9 (encoded in ``task.start`` commands of
    8; min of 40 runs, perf_counter; f9378ab's, before the service fields and the
    profile, took 8.6). A field left at its default is left out, as the encoder does, so
    the receiver reads the same message; the resolved monitoring profile is still sent
    (a worker reads a profile left out as "off"). Tests hold it to the model's dump."""
    body: dict[str, Any] = {"task_id": task.id, "attempt": task.attempt, "runtime": task.runtime}
    if task.name:
        body["name"] = task.name
    if task.mode != "function":
        body["mode"] = task.mode
    entrypoint = task.entrypoint
    if entrypoint:
        body["entrypoint"] = entrypoint
    if task.artifact is not None:
        body["artifact"] = task.artifact
    if artifact_b64 is not None:
        body["artifact_b64"] = artifact_b64
    if task.inputs:
        body["inputs"] = task.inputs
    if task.cli_args:
        body["cli_args"] = task.cli_args
    if task.env:
        body["env"] = task.env
    if secrets:
        sealed, clear = secrets.get("sealed_env"), secrets.get("secret_env")
        if sealed is not None:
            body["sealed_env"] = sealed
        if clear:
            body["secret_env"] = dict(clear)
    if task.command is not None:
        body["command"] = task.command
    if task.image is not None:
        body["image"] = task.image
    if task.network != "none":
        body["network"] = task.network
    if task.ports:
        body["ports"] = [_dumped(port) for port in task.ports]
    if task.healthcheck is not None:
        body["healthcheck"] = _dumped(task.healthcheck)
    if task.limits is not NO_LIMITS and task.limits != NO_LIMITS:
        body["limits"] = _dumped(task.limits)
    if task.daemon:
        body["daemon"] = True
    monitoring = resolve(task.monitoring, daemon=task.daemon)
    if monitoring is not None:
        body["monitoring"] = _PROFILE_JSON.get(id(monitoring)) or monitoring.model_dump(mode="json")
    return body


class Unrunnable(_Body):
    """An assignment of a ``task.start`` that did not validate: the receiver fails that
    attempt with ``reason`` and runs the others."""

    task_id: str
    attempt: int
    reason: str


class StartTasks(_Body):
    tasks: list[Assignment]
    epoch: str = ""
    seq: int = 0
    #: the member session it is meant for (empty: any): a process that is not that
    #: session (another process with the same member id) leaves it alone
    session: str = ""
    #: filled when parsing, never sent: assignments that did not validate but name their
    #: task and attempt (the receiver fails them), and how many did not even name those
    #: (the receiver counts them as bad messages)
    unrunnable: list[Unrunnable] = Field(default_factory=list, exclude=True)
    unreadable: int = Field(default=0, exclude=True)

    @model_validator(mode="wrap")
    @classmethod
    def _each_assignment(cls, data: Any, handler: ModelWrapValidatorHandler[StartTasks]) -> Any:
        """One bad assignment must not cost the others (a command carries up to slots x
        prefetch tasks): when the command does not validate whole, each assignment is
        validated alone."""
        try:
            return handler(data)
        except ValidationError:
            if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
                raise
        good: list[Assignment] = []
        bad: list[Unrunnable] = []
        unreadable = 0
        for raw in data["tasks"]:
            try:
                good.append(Assignment.model_validate(raw))
            except ValidationError as exc:
                named = _named(raw)
                if named is None:
                    unreadable += 1
                else:
                    bad.append(Unrunnable(task_id=named[0], attempt=named[1], reason=_why(exc)))
        body = handler({**data, "tasks": good})
        body.unrunnable, body.unreadable = bad, unreadable
        return body


def start_tasks_body(
    tasks: list[dict[str, Any]], *, epoch: str, seq: int, session: str
) -> dict[str, Any]:
    """A :class:`StartTasks` of :func:`worker_assignment` bodies as the encoder would send
    it (fields at their defaults left out)."""
    body: dict[str, Any] = {"tasks": tasks}
    if epoch:
        body["epoch"] = epoch
    if seq:
        body["seq"] = seq
    if session:
        body["session"] = session
    return body


def _named(raw: Any) -> tuple[str, int] | None:
    """The task id and attempt of a raw assignment, when it names them properly."""
    if not isinstance(raw, dict):
        return None
    task_id, attempt = raw.get("task_id"), raw.get("attempt")
    if isinstance(task_id, str) and task_id and type(attempt) is int:
        return task_id, attempt
    return None


def _first_error(exc: ValidationError) -> tuple[str, str]:
    """Where (``limits.fuel``) and what of a validation's first error."""
    first = exc.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["msg"]


def _why(exc: ValidationError) -> str:
    where, what = _first_error(exc)
    return f"bad assignment: {where}: {what}"


class StopTasks(_Body):
    task_ids: list[str]


#: ``scheduled`` and ``rejected`` only come from a cluster to the root: placed on (or
#: taken back from) one of its workers, or refused because it cannot run the task.
EventState = Literal["scheduled", "running", "completed", "failed", "cancelled", "rejected"]
#: The states of a *final* event: the member keeps it until the parent acks it (sent again
#: meanwhile, and its task listed in the member's ``active``); the others are sent once.
FINAL_STATES: frozenset[str] = frozenset({"completed", "failed", "cancelled", "rejected"})


class TaskEvent(_Body):
    task_id: str
    attempt: int
    state: EventState
    results: Any = None
    error: str | None = None
    transient: bool = False
    #: on a failure: a short code of why (``artifact_not_found``, ``registry_unreachable``,
    #: ``digest_mismatch``), which becomes the task's ``reason``
    reason: str | None = None
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    ts: float = 0.0
    #: on a final event: when the attempt started (its "running" event may be left out)
    started_at: float | None = None
    #: the worker inside a cluster, when a cluster reports to the root
    worker_id: str | None = None
    #: on a ``running`` event: where the attempt's published ports are reached
    endpoints: list[Endpoint] = Field(default_factory=list, max_length=MAX_PORTS)
    #: on a final event: the W3C trace context of the attempt's run (tracing on; as in
    #: :class:`Assignment`)
    traceparent: str | None = None

    @field_validator("traceparent", mode="before")
    @classmethod
    def _traceparent(cls, value: Any) -> str | None:
        return bounded(value)


class TaskEvents(_Body):
    events: list[TaskEvent]


class EventKey(_Body):
    task_id: str
    attempt: int


class AckEvents(_Body):
    """manager → worker: these final events are stored; stop re-sending them.

    A key names a (task, attempt), not one event: only final events are acked (acking a
    cluster's ``scheduled`` event dropped the attempt's final event sent meanwhile)."""

    keys: list[EventKey]


MAX_MISSING = 65_536


class FetchArtifact(_Body):
    """worker → proxy: send me the chunks of an artifact (``artifacts/proxy.py``): all of
    them, or only ``missing`` when a delivery lost some. ``request`` is echoed in every
    chunk, so the worker refuses chunks it did not ask for."""

    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    request: str = Field(pattern=r"^[0-9a-f]{16}$")
    #: at most MAX_MISSING indices (a 512 MB blob has 2,048 chunks of 256 KiB; a worker
    #: missing more asks for the first ones, then the rest)
    missing: list[int] = Field(default_factory=list, max_length=MAX_MISSING)
    #: where the proxy gets a blob it does not hold: an ``oci://`` reference of the
    #: registry repository (None: the control plane's store, for inline modules)
    source: str | None = Field(default=None, max_length=1024)
    #: ``blob`` a blob of that repository, ``manifest`` a manifest by digest;
    #: ``resolve`` the manifest ``source``'s tag names now, sent under ``digest`` =
    #: sha256 of ``source`` (the worker hashes what it gets to learn the manifest digest)
    kind: Literal["blob", "manifest", "resolve"] = "blob"


class Reregister(_Body):
    """manager → worker: send ``hello`` again (the manager does not know this session)."""

    reason: str = ""


#: the largest body a chute call carries either way (a manifest, a change, the last
#: MiB of a service's log)
MAX_CHUTE_BODY = 2 << 20


_CHUTE_NAME = r"^[a-z0-9][a-z0-9-]{0,39}$"
_MEMBER = r"^[A-Za-z0-9._-]{1,128}$"


class ChuteRequest(_Body):
    """manager → worker: one call of the worker's Edge API made from afar (docs/chutes.md,
    "Through the control plane"). ``id`` is echoed in the :class:`ChuteResponse`. From a
    root to a cluster (on the cluster's ``cmd``), ``worker_id`` names the cluster's worker
    the call is for; the cluster's manager makes it."""

    id: str = Field(pattern=r"^[0-9a-f]{16,32}$")
    method: Literal["GET", "POST", "PUT", "DELETE"]
    #: below ``/api/v1`` of the Edge API: ``/chutes…`` or ``/changes/{id}``
    path: str = Field(pattern=r"^/(chutes|changes)(/[A-Za-z0-9._-]{1,64}){0,3}$")
    query: dict[str, str] = Field(default_factory=dict, max_length=8)
    body: Any = None
    worker_id: str = Field(default="", pattern=r"^([A-Za-z0-9._-]{1,128})?$")


class ChuteResponse(_Body):
    """worker → manager (or cluster → root), on its events topic: the answer to the
    request ``id``. ``unknown_worker``: a cluster has no worker of the request's
    ``worker_id`` (the root asks its other clusters)."""

    id: str = Field(pattern=r"^[0-9a-f]{16,32}$")
    status: int = Field(ge=100, le=599)
    body: Any = None
    unknown_worker: bool = False


#: events of one ``chute.events`` message at most (the rest follow in the next)
MAX_CHUTE_EVENTS = 100
#: chutes a node reports at most (a snapshot's, and what a manager keeps of a worker)
MAX_REPORTED_CHUTES = 256

ChuteEventKind = Literal[
    "snapshot",
    "started",
    "exited",
    "oom_killed",
    "unhealthy",
    "healthy",
    "restarted",
    "change_done",
    "change_failed",
    "deleted",
]


#: bytes of one chute's status in an event at most (a 16-service chute's is ~5 KB)
MAX_CHUTE_STATUS = 32 * 1024


def _chute_status(doc: dict[str, Any]) -> dict[str, Any]:
    """A chute's status from a worker, bounded before the manager keeps it."""
    check_json(doc)
    if len(json.dumps(doc)) > MAX_CHUTE_STATUS:
        raise ValueError(f"a chute status of more than {MAX_CHUTE_STATUS} bytes")
    return doc


class ChuteEvent(_Body):
    """Something that happened to a chute on a node (docs/chutes.md, "Chute events").
    ``seq`` counts the node's events from 1, in the order they happened."""

    seq: int = Field(ge=1)
    #: when it happened, on the node's clock (seconds since the epoch)
    ts: float
    kind: ChuteEventKind
    #: the chute ("" for a snapshot)
    chute: str = Field(default="", pattern=r"^([a-z0-9][a-z0-9-]{0,39})?$")
    service: str | None = Field(default=None, pattern=_CHUTE_NAME)
    change_id: str | None = Field(default=None, max_length=64)
    detail: str | None = Field(default=None, max_length=1000)
    #: the chute's status (as ``GET /api/v1/chutes/{name}``) after the event; None once
    #: deleted
    status: dict[str, Any] | None = None
    #: a snapshot: every chute's status, which replaces what the manager kept
    chutes: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_REPORTED_CHUTES)

    @field_validator("status")
    @classmethod
    def _status_bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _chute_status(value)

    @field_validator("chutes")
    @classmethod
    def _chutes_bounded(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        return None if value is None else [_chute_status(doc) for doc in value]


class ChuteEvents(_Body):
    """worker → manager, on its ``events`` leaf: the node's chute events it still holds,
    oldest first, sent again until acked (:class:`AckChuteEvents`). ``stream`` names the
    node's sequence (made once in its data dir); ``after``: the node holds no event up to
    that ``seq`` any more (acked, or dropped past its bound: ``dropped`` counts those)."""

    worker_id: str = Field(pattern=_MEMBER)
    stream: str = Field(pattern=r"^[0-9a-f]{8,32}$")
    after: int = Field(default=0, ge=0)
    dropped: int = Field(default=0, ge=0)
    events: list[ChuteEvent] = Field(max_length=MAX_CHUTE_EVENTS)


class AckChuteEvents(_Body):
    """manager → worker: its chute events up to ``seq`` of ``stream`` are stored."""

    stream: str = Field(pattern=r"^[0-9a-f]{8,32}$")
    seq: int = Field(ge=0)


class FollowChuteLogs(_Body):
    """manager → worker (or root → cluster, naming the ``worker_id``): send what a chute's
    service prints, as :class:`ChuteLogs` with this ``id``, for ``follow_s`` seconds
    (renewed while someone follows; 0: stop now)."""

    id: str = Field(pattern=r"^[0-9a-f]{16,32}$")
    chute: str = Field(pattern=_CHUTE_NAME)
    service: str | None = Field(default=None, pattern=_CHUTE_NAME)
    follow_s: float = Field(ge=0, le=60.0)
    worker_id: str = Field(default="", pattern=r"^([A-Za-z0-9._-]{1,128})?$")


#: characters of one chute log chunk: the rest follows in the next
MAX_CHUTE_LOG_CHUNK = 16 * 1024


class ChuteLogs(_Body):
    """worker → manager (or cluster → root), on its ``events`` leaf: output of the
    followed chute ``id``; ``end``: the follow is over (``reason`` says why: the chute was
    deleted, the follow expired, …)."""

    id: str = Field(pattern=r"^[0-9a-f]{16,32}$")
    data: str = Field(default="", max_length=MAX_CHUTE_LOG_CHUNK)
    end: bool = False
    reason: str | None = Field(default=None, max_length=500)


#: values per sample and samples per batch a receiver accepts (a bigger batch is bad)
MAX_SAMPLE_VALUES = 32
MAX_BATCH_SAMPLES = 10_000


class Sample(_Body):
    """One reading: when, and named numbers (``cpu_percent``, ``memory_mb``, …)."""

    ts: float
    values: dict[str, float] = Field(max_length=MAX_SAMPLE_VALUES)


class TaskSamples(_Body):
    """Samples of one attempt, and how many of them its manager keeps."""

    task_id: str
    attempt: int
    history: int = Field(ge=1, le=10_000)
    samples: list[Sample] = Field(max_length=MAX_BATCH_SAMPLES)


class ChuteSamples(_Body):
    """Samples of one running chute service (its cgroup), and how many its manager keeps."""

    chute: str = Field(max_length=64)
    service: str = Field(max_length=64)
    history: int = Field(ge=1, le=10_000)
    samples: list[Sample] = Field(max_length=MAX_BATCH_SAMPLES)


class Metrics(_Body):
    """worker → manager on the ``metrics`` leaf, QoS 0: what was sampled since the last
    batch (``chutes``: each running chute service's). At the root, from a cluster:
    ``node`` is the cluster's aggregate and ``workers`` each worker's node samples."""

    node: list[Sample] = Field(default_factory=list, max_length=MAX_BATCH_SAMPLES)
    tasks: list[TaskSamples] = Field(default_factory=list, max_length=MAX_BATCH_SAMPLES)
    workers: dict[str, list[Sample]] = Field(default_factory=dict, max_length=1000)
    chutes: list[ChuteSamples] = Field(default_factory=list, max_length=1000)


#: characters of one log chunk: the rest follows in the next
MAX_LOG_CHUNK = 16 * 1024
#: seconds a worker keeps following logs the manager asked for without a renewal
MAX_FOLLOW_S = 60.0


class FollowLogs(_Body):
    """manager → worker: send what the attempt prints, as it prints it, for ``follow_s``
    seconds (renewed while someone follows; 0: stop now)."""

    task_id: str
    attempt: int
    follow_s: float = Field(ge=0, le=MAX_FOLLOW_S)


class LogChunk(_Body):
    """Output of a followed attempt, as it was printed."""

    task_id: str
    attempt: int
    stream: Literal["stdout", "stderr"]
    #: where in the stream (characters from the start) ``data`` begins
    offset: int = Field(ge=0)
    data: str = Field(max_length=MAX_LOG_CHUNK)


class LogChunks(_Body):
    """worker → manager on the ``events`` leaf (so before the attempt's final event)."""

    chunks: list[LogChunk] = Field(max_length=64)


MESSAGE_TYPES: dict[str, type[BaseModel]] = {
    "metrics": Metrics,
    "task.logs.follow": FollowLogs,
    "task.logs": LogChunks,
    "chute.request": ChuteRequest,
    "chute.response": ChuteResponse,
    "chute.events": ChuteEvents,
    "chute.ack": AckChuteEvents,
    "chute.logs.follow": FollowChuteLogs,
    "chute.logs": ChuteLogs,
    "hello": Hello,
    "welcome": Welcome,
    "alive": Alive,
    "task.start": StartTasks,
    "task.stop": StopTasks,
    "task.events": TaskEvents,
    "task.ack": AckEvents,
    "reregister": Reregister,
    "artifact.fetch": FetchArtifact,
    "aggregate": Aggregate,
}


def parse_body(type_: str, body: dict[str, Any]) -> BaseModel:
    """Validate a body against its type's model; :class:`Invalid` when unknown or bad."""
    model = MESSAGE_TYPES.get(type_)
    if model is None:
        raise Invalid(f"unknown message type {type_!r}", field="type")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        where, what = _first_error(exc)
        raise Invalid(f"bad {type_} body: {where}: {what}", field=where) from None
