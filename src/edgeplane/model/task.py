"""Task shapes: what users send (:class:`TaskSpec`) and what they get back (:class:`Task`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from edgeplane.limits import (
    MAX_CPU_SHARES,
    MAX_FUEL,
    MAX_ITEMS,
    MAX_MEMORY_MB,
    MAX_PIDS,
    MAX_RUN_TASKS,
    MAX_TIMEOUT_S,
)
from edgeplane.model.bounds import (
    Args,
    Cpus,
    Cron,
    Env,
    JsonArray,
    JsonObject,
    Labels,
    MemoryMb,
    Name,
    Priority,
    Project,
    Refs,
    Retries,
    Timezone,
    Url,
)
from edgeplane.model.cluster import GeoConstraint
from edgeplane.model.secrets import Redacted, SecretDict, check_disjoint
from edgeplane.model.service import MAX_PORTS, Endpoint, HealthCheck, Network, PortSpec
from edgeplane.monitoring import MonitoringField

Runtime = Literal["wasm", "host", "container"]
WasmMode = Literal["function", "wasi"]
RunIf = Literal["success", "failure", "always"]
CatchUp = Literal["none", "last", "all"]
TaskState = Literal[
    "pending", "scheduled", "running", "completed", "failed", "skipped", "cancelled"
]

#: Every state, in a task's order of life.
TASK_STATES: tuple[str, ...] = get_args(TaskState)
TERMINAL_STATES: frozenset[str] = frozenset({"completed", "failed", "skipped", "cancelled"})
ACTIVE_STATES: frozenset[str] = frozenset({"scheduled", "running"})


class Limits(BaseModel):
    """What one attempt may use. Ranges are checked wherever limits come in (API, CLI, a
    worker's ``task.start``); a stored task document is loaded as it is (see
    :meth:`Task._stored_limits`). Frozen, so that one instance can stand for "no limits"
    in every model that leaves them out (:data:`NO_LIMITS`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)
    fuel: int | None = Field(default=None, ge=1, le=MAX_FUEL)
    memory_mb: int | None = Field(default=None, ge=1, le=MAX_MEMORY_MB)
    cpu_shares: int | None = Field(default=None, ge=2, le=MAX_CPU_SHARES)
    pids: int | None = Field(default=None, ge=1, le=MAX_PIDS)


_LIMITS = frozenset(Limits.model_fields)

#: The limits of whatever sets none, shared (frozen, so nobody can change it for the
#: others). Shortcut: ``default_factory=Limits`` built and validated a new model for every
#: task spec, document and assignment that left limits out; with the shared default (and
#: :data:`NO_CONSTRAINTS`) validating a batch of 1,000 no-op specs went from 4.7 to
#: 2.4 ms (docs/benchmarks.md, "No-op throughput regained").
NO_LIMITS = Limits()


def no_limits() -> Limits:
    """The default factory of every ``limits`` field (a factory, as for constraints: the
    schema then shows no default, as before)."""
    return NO_LIMITS


SpreadLevel = Literal["worker", "cluster"]
AntiAffinity = Literal["preferred", "required"]


class Spread(BaseModel):
    """Keep the live tasks of one group apart (Nomad's ``spread`` and ``distinct_hosts``,
    Kubernetes' pod anti-affinity): each goes where the fewest of its group run.

    ``over: worker`` spreads over workers (and, at the root, weighs a cluster by its
    group's tasks per eligible worker); ``over: cluster`` spreads over clusters first.
    ``anti_affinity: required`` never puts two on one worker (``over: worker``) or in
    one cluster (``over: cluster``): a task that would have to waits ``pending``.
    Groups are per project (docs/scheduling.md)."""

    model_config = ConfigDict(extra="forbid")

    group: Name = Field(min_length=1)
    over: SpreadLevel = "worker"
    anti_affinity: AntiAffinity = "preferred"


class Constraints(BaseModel):
    """Where a task may run. Frozen, as :class:`Limits`, for the shared
    :data:`NO_CONSTRAINTS` (its lists and dicts are never changed in place either:
    versions of a task made by ``model_copy`` share them already)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    labels: Labels = Field(default_factory=dict)
    tee: Literal["any", "required", "none"] = "any"
    cpu: Cpus | None = None
    memory_mb: MemoryMb | None = None
    #: root placement only: allowed clusters (empty: any) and a geo point with a radius
    clusters: Refs = Field(default_factory=list)
    geo: GeoConstraint | None = None
    #: spread the live tasks of a group apart (an application's service sets it from its
    #: ``placement``)
    spread: Spread | None = None


#: The constraints of whatever sets none, shared (see :data:`NO_LIMITS`). A factory, not
#: a default: pydantic would deep-copy a default that holds a dict, for every model.
NO_CONSTRAINTS = Constraints()


def _no_constraints() -> Constraints:
    return NO_CONSTRAINTS


def spread_key(project: str, spread: Spread | None) -> str | None:
    """The scheduler's key of a task's spread group: groups are per project (a project
    name has no ``/``), so one project's tasks never push another's around."""
    return None if spread is None else f"{project}/{spread.group}"


class InputRef(BaseModel):
    """An input taken from a dependency's results: ``results[index]`` of task ``task``
    (a name or id in the same workflow or job)."""

    model_config = ConfigDict(extra="forbid")

    task: Name = Field(min_length=1)
    index: int = Field(default=0, ge=0, le=MAX_ITEMS)


#: The default of a :class:`TaskPatch` field: never validated (a field left out is not set,
#: ``model_dump(exclude_unset=True)`` leaves it out) and not shown in the schema.
_UNSET: Any = None


def _no_defaults(schema: dict[str, Any]) -> None:
    for field in schema.get("properties", {}).values():
        field.pop("default", None)


class TaskSpec(BaseModel):
    """A task as a user submits it (DESIGN §3). Unknown fields are ignored."""

    #: (hide_input_in_errors here and on every model holding task bodies: the text of a
    #: validation error, which may be logged, must not carry secret env values)
    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    name: Name = ""
    #: the project the task belongs to: one of the caller's (docs/security.md)
    project: Project = "default"
    runtime: Runtime = "wasm"
    mode: WasmMode = "function"
    export: Name | None = None
    #: bounded by the body limit only (``Settings.max_body_mb``)
    file: str | None = Field(default=None, description="base64 of a .wasm module")
    image_url: Url | None = None
    inputs: JsonArray = Field(default_factory=list)
    cli_args: Args = Field(default_factory=list)
    env: Env = Field(default_factory=dict)
    #: env whose values are secret: given to the runtime merged with ``env``, shown as
    #: ``***`` by every read, sent only to the worker that runs the task (docs/security.md)
    secret_env: Annotated[Env, Redacted] = Field(default_factory=dict, repr=False)
    command: Args | None = None
    image: Name | None = None
    #: container: ``bridge`` for a network namespace on the worker's bridge, ``none`` for
    #: loopback only; left out: ``bridge`` when it has ``ports`` (docs/services.md)
    network: Network | None = None
    #: container: ports to publish on host ports the worker picks (never colliding)
    ports: Annotated[list[PortSpec], Field(max_length=MAX_PORTS)] = Field(default_factory=list)
    #: container: reported ``running`` only once this passes; failing, it ends ``unhealthy``
    healthcheck: HealthCheck | None = None
    limits: Limits = Field(default_factory=no_limits)
    retries: Retries = 0
    priority: Priority = 50
    constraints: Constraints = Field(default_factory=_no_constraints)
    depends_on: Refs = Field(default_factory=list)
    run_if: RunIf = "success"
    #: appended to ``inputs`` when the task starts, from its dependencies' results
    inputs_from: list[InputRef] = Field(default_factory=list, max_length=MAX_RUN_TASKS)
    schedule: Cron | None = None
    timezone: Timezone = "UTC"
    catch_up: CatchUp = "last"
    daemon: bool = False
    #: how its usage is sampled (docs/metrics.md); None: by kind (daemon or standard)
    monitoring: MonitoringField | None = None
    worker_id: Name | None = None
    cluster_id: Name | None = None
    metadata: JsonObject = Field(default_factory=dict)
    start: bool = False

    @field_validator("inputs_from", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("secret_env")
    @classmethod
    def _not_in_env(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if value:
            check_disjoint(info.data.get("env") or {}, value)
        return value


class TaskPatch(BaseModel):
    """Fields a user may change on a task that has not started yet. A field left out stays
    as it is; none may be null (the task document has no null for any of them)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_no_defaults)

    name: Name = _UNSET
    inputs: JsonArray = _UNSET
    cli_args: Args = _UNSET
    env: Env = _UNSET
    limits: Limits = _UNSET
    retries: Retries = _UNSET
    priority: Priority = _UNSET
    metadata: JsonObject = _UNSET


class TaskResults(BaseModel):
    """``GET /tasks/{id}/results``."""

    model_config = ConfigDict(extra="allow")

    task_id: str
    state: TaskState
    results: Any = None
    error: str | None = None
    exit_code: int | None = None


class TaskLogs(BaseModel):
    """``GET /tasks/{id}/logs``."""

    model_config = ConfigDict(extra="allow")

    task_id: str
    stdout: str = ""
    stderr: str = ""


class Placement(BaseModel):
    """One attempt of the root to place a task on a cluster."""

    model_config = ConfigDict(extra="ignore")

    cluster_id: str
    outcome: Literal["placed", "rejected", "lost"]
    reason: str | None = None
    at: float = 0.0


class Task(BaseModel):
    """The task document: stored, returned by the API, updated by the manager."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    id: str
    #: the project it belongs to (docs/security.md): who may see and touch it
    project: str = "default"
    name: str = ""
    state: TaskState = "pending"
    reason: str | None = None
    started: bool = False
    runtime: Runtime = "wasm"
    mode: WasmMode = "function"
    export: str | None = None
    artifact: str | None = Field(default=None, description="sha256 of the module")
    image_url: str | None = None
    inputs: list[Any] = Field(default_factory=list)
    cli_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    #: stored as given; every read shows ``***`` for each value (``model.secrets``)
    secret_env: SecretDict = Field(default_factory=dict, repr=False)
    command: list[str] | None = None
    image: str | None = None
    network: Network = "none"
    ports: list[PortSpec] = Field(default_factory=list)
    healthcheck: HealthCheck | None = None
    #: where its published ports are reached, as its worker reported when it started
    endpoints: list[Endpoint] = Field(default_factory=list)
    limits: Limits = Field(default_factory=no_limits)
    retries: int = 0
    priority: int = 50
    constraints: Constraints = Field(default_factory=_no_constraints)
    depends_on: list[str] = Field(default_factory=list)
    run_if: RunIf = "success"
    inputs_from: list[InputRef] = Field(default_factory=list)
    daemon: bool = False
    monitoring: MonitoringField | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    job_id: str | None = None
    workflow_id: str | None = None
    schedule_id: str | None = None
    #: the ended task this one is a retry of (``POST /tasks/{id}/retry``)
    retry_of: str | None = None
    pinned_worker: str | None = None
    #: root only: the cluster the user asked for (placement passes through to it)
    pinned_cluster: str | None = None
    worker_id: str | None = None
    cluster_id: str | None = None
    attempt: int = 0
    results: Any = None
    error: str | None = None
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    not_before: float = 0.0
    #: root only: every placement attempt, and the clusters that rejected the current one
    placements: list[Placement] = Field(default_factory=list)
    rejected_by: list[str] = Field(default_factory=list)

    @field_validator("limits", mode="wrap")
    @classmethod
    def _stored_limits(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Limits:
        """Limits out of range are kept as stored: a task stored before :class:`Limits` had
        ranges must still load (nothing in the store may stop a manager from starting),
        and the worker that gets it rejects that attempt, naming the field."""
        try:
            limits: Limits = handler(value)
        except ValidationError:
            if not isinstance(value, dict):
                raise
            return Limits.model_construct(**{k: v for k, v in value.items() if k in _LIMITS})
        return limits

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def results_view(self) -> TaskResults:
        return TaskResults(
            task_id=self.id,
            state=self.state,
            results=self.results,
            error=self.error,
            exit_code=self.exit_code,
        )

    def logs_view(self) -> TaskLogs:
        return TaskLogs(task_id=self.id, stdout=self.stdout, stderr=self.stderr)

    @property
    def entrypoint(self) -> str:
        """The wasm export a function-mode task calls."""
        return self.export or self.name
