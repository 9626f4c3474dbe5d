"""Applications: long-running multi-service deployments kept at their replica counts
(Oakestra's SLA descriptor). A service is a task body plus replicas, resources and a
restart policy; each replica is an *instance*, run as a daemon task placed by the root.

A service may be written as a chute manifest (``chute:``, docs/services.md): its one
service becomes the service's container (image, command, env, ports, health check, and
``resources`` as limits), filled in when the descriptor is read."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgeplane.chutes.manifest import Manifest
from edgeplane.chutes.manifest import Resources as ChuteResources
from edgeplane.chutes.manifest import parse as parse_manifest
from edgeplane.errors import Invalid
from edgeplane.limits import MAX_REPLICAS, MAX_SERVICES
from edgeplane.model.bounds import Cpus, JsonObject, MemoryMb, Name, Project
from edgeplane.model.service import Endpoint
from edgeplane.model.task import AntiAffinity, Constraints, Spread, TaskSpec, TaskState

RestartPolicy = Literal["always", "on-failure", "never"]

#: Service fields that do not change what an instance runs (a change rolls nothing).
_NOT_IN_REVISION = {"replicas", "restart", "start", "metadata"}


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: Cpus | None = None
    memory_mb: MemoryMb | None = None
    storage_mb: MemoryMb | None = None


class ServicePlacement(BaseModel):
    """How a service's replicas are kept apart (docs/scheduling.md).

    ``spread``: ``worker`` (default) puts each replica where the fewest replicas of the
    service run, worker by worker, and at the root prefers the cluster with the fewest
    per eligible worker; ``cluster`` spreads over clusters first (then workers);
    ``none`` leaves it to the scheduler (``--pack`` may then put them together).
    ``anti_affinity``: ``preferred`` (default) is soft; ``required`` never puts two
    replicas on one worker (``spread: worker``) or in one cluster (``spread: cluster``),
    and a replica with nowhere left to go waits ``pending`` with the rule as its reason.
    """

    model_config = ConfigDict(extra="forbid")

    spread: Literal["worker", "cluster", "none"] = "worker"
    anti_affinity: AntiAffinity = "preferred"

    @field_validator("anti_affinity")
    @classmethod
    def _required_needs_spread(cls, value: str, info: ValidationInfo) -> str:
        if value == "required" and info.data.get("spread") == "none":
            raise ValueError("'required' needs spread 'worker' or 'cluster'")
        return value

    def constraint(self, group: str) -> Spread | None:
        """The task constraint that applies it to instances of ``group``."""
        if self.spread == "none":
            return None
        return Spread(group=group, over=self.spread, anti_affinity=self.anti_affinity)


_DEFAULT_PLACEMENT = ServicePlacement()


class ServiceSpec(TaskSpec):
    """One service of an application: a task body plus how many and how to keep them."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)
    resources: Resources = Field(default_factory=Resources)
    restart: RestartPolicy = "always"
    #: the service as a chute manifest of one service (docs/services.md): its container
    #: fields are filled in from it
    chute: Manifest | None = None
    placement: ServicePlacement = Field(default_factory=ServicePlacement)

    @field_validator("constraints")
    @classmethod
    def _spread_by_placement(cls, value: Constraints) -> Constraints:
        if value.spread is not None:
            raise ValueError("a service spreads its replicas with placement, not spread")
        return value

    def revision(self) -> str:
        """Hash of what an instance runs: instances of an older revision are rolled over.

        Secret values are left out (their names are in): the revision is shown to every
        reader, and a hash of a weak secret could be searched for offline. A default
        ``placement`` is left out too, so services stored before it existed keep their
        revision (an upgrade rolls nothing); a changed one rolls the replicas to where
        it puts them."""
        exclude: dict[str, Any] = dict.fromkeys(_NOT_IN_REVISION, True)
        exclude["constraints"] = {"spread"}
        if self.placement == _DEFAULT_PLACEMENT:
            exclude["placement"] = True
        body = self.model_dump(mode="json", exclude=exclude)
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class ApplicationSpec(BaseModel):
    """``POST /applications`` / ``PUT /applications/{id}`` (YAML or JSON descriptor)."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    name: Name = Field(min_length=1, max_length=128)
    #: the application's project, which its instances are in too
    project: Project = "default"
    services: list[ServiceSpec] = Field(min_length=1, max_length=MAX_SERVICES)
    metadata: JsonObject = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _chutes(cls, data: Any) -> Any:
        """Services written as chute manifests, with their container fields filled in."""
        if not isinstance(data, dict) or not isinstance(data.get("services"), list):
            return data
        services = []
        for index, service in enumerate(data["services"]):
            if isinstance(service, dict) and "chute_file" in service:
                raise Invalid(
                    "chute_file is read by `edgeplane app apply`; send the manifest as chute",
                    field=f"services[{index}].chute_file",
                )
            if isinstance(service, dict) and service.get("chute") is not None:
                service = from_chute(service, f"services[{index}]")
            services.append(service)
        return {**data, "services": services}

    @model_validator(mode="after")
    def _unique_services(self) -> ApplicationSpec:
        seen: set[str] = set()
        for service in self.services:
            if service.name in seen:
                raise ValueError(f"service name {service.name!r} is used twice")
            seen.add(service.name)
        return self


#: a chute's disk when its manifest gives none (not applied to instances: see from_chute)
DEFAULT_DISK_MB: int = ChuteResources.model_fields["disk_mb"].default
#: Service fields a chute manifest fills in (``limits`` only in part).
_FROM_CHUTE = ("runtime", "network", "image", "command", "env", "ports", "healthcheck")


def from_chute(service: dict[str, Any], where: str) -> dict[str, Any]:
    """The service ``service`` (raw, with a ``chute`` manifest) with the fields its
    manifest gives filled in; :class:`Invalid` naming the field (under ``where``) when the
    manifest is bad, is not one an instance can run, or the service gives a field the
    manifest gives too, otherwise. Filling in what is there already is a no-op, so a
    stored descriptor reads back the same."""
    try:
        manifest = parse_manifest(service["chute"])
    except Invalid as exc:
        field = f"{where}.chute.{exc.field}" if exc.field else f"{where}.chute"
        raise Invalid(exc.detail, field=field) from None
    if len(manifest.services) != 1:
        raise Invalid(
            "an application service runs one container: give a manifest of one service "
            "(and one application service for each of the others)",
            field=f"{where}.chute.services",
        )
    # (by value, not by the fields given: a stored descriptor holds every default)
    resources = manifest.resources
    bandwidth = resources.bandwidth_kbit
    for key, used in (
        ("disk_mb", resources.disk_mb != DEFAULT_DISK_MB),
        ("bandwidth_kbit", bandwidth.egress is not None or bandwidth.ingress is not None),
    ):
        if used:
            raise Invalid(
                f"{key} is not applied to application instances: leave it out",
                field=f"{where}.chute.resources.{key}",
            )
    if manifest.config:
        raise Invalid(
            "an application service has no chute config: give it env instead",
            field=f"{where}.chute.config",
        )
    one = manifest.services[0]
    web = manifest.web.port if manifest.web is not None else None
    derived: dict[str, Any] = {
        "runtime": "container",
        "network": "bridge",
        "image": one.image,
        "command": list(one.command) if one.command is not None else None,
        "env": dict(one.env),
        # the manifest's host ports are not used: each instance's are picked by its
        # worker, so that replicas never collide (docs/services.md)
        "ports": [
            {"port": p.chute, "protocol": p.protocol, **({"name": "web"} if p.chute == web else {})}
            for p in one.ports
        ],
        "healthcheck": None if one.healthcheck is None else one.healthcheck.model_dump(),
    }
    try:
        mine = TaskSpec.model_validate({k: service[k] for k in _FROM_CHUTE if k in service})
        theirs = TaskSpec.model_validate(derived)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise Invalid(f"{field}: {first['msg']}", field=f"{where}.{field}") from None
    for key in _FROM_CHUTE:
        if key in service and getattr(mine, key) != getattr(theirs, key):
            raise Invalid(
                f"{key} is given by the chute manifest too: leave it out here",
                field=f"{where}.{key}",
            )
    raw = service.get("limits")
    if raw is not None and not isinstance(raw, dict):
        return {**service, **derived}  # (refused as it is by the service's model)
    limits = dict(raw or {})
    for key, value in (
        ("cpu_shares", resources.cpu_shares),
        ("memory_mb", resources.memory_mb),
        ("pids", resources.pids),
    ):
        if value is None:
            continue
        if limits.get(key, value) != value:
            raise Invalid(
                f"limits.{key} is given by the chute manifest's resources too: leave it out",
                field=f"{where}.limits.{key}",
            )
        limits[key] = value
    return {**service, **derived, "limits": limits}


class Instance(BaseModel):
    """One replica of a service, as ``GET /applications/{id}`` shows it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    service: str
    index: int
    revision: str
    #: the daemon task currently running this instance
    task_id: str
    cluster_id: str | None = None
    worker_id: str | None = None
    state: TaskState = "pending"
    reason: str | None = None
    restarts: int = 0
    #: when its task ended (None while it runs); a restart waits for a backoff after it
    ended_at: float | None = None
    #: while it runs: where its published ports are reached (worker address, host port)
    endpoints: list[Endpoint] = Field(default_factory=list)


class ServiceStatus(BaseModel):
    name: str
    replicas: int
    restart: RestartPolicy
    revision: str
    running: int = 0
    instances: list[Instance] = Field(default_factory=list)


ApplicationState = Literal["deploying", "running", "degraded", "deleting"]


class Application(BaseModel):
    """The stored application: its descriptor and the instances the root keeps for it."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    id: str
    #: the project it belongs to (docs/security.md): who may see and touch it
    project: str = "default"
    name: str
    spec: ApplicationSpec
    generation: int = 1
    state: ApplicationState = "deploying"
    instances: list[Instance] = Field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0


class ApplicationView(BaseModel):
    """``GET /applications/{id}``: an application with each service's instances."""

    id: str
    name: str
    state: str
    generation: int
    services: list[ServiceStatus]
    spec: ApplicationSpec
    created_at: float
    updated_at: float
