"""The chute manifest (``chute.yaml``): what an owner installs on one node.

Every field is bounded and unknown fields are refused (``extra="forbid"``), so a typo is a
422 naming it rather than a setting silently dropped. Checks across fields: no two
services share a name, no two ports share a host port, ``depends_on`` names known services
and has no cycle, ``web`` names a service.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from edgeplane import safeyaml
from edgeplane.artifacts import reference
from edgeplane.errors import EdgeplaneError, Invalid
from edgeplane.monitoring import Monitoring, MonitoringField, resolve

NAME = r"^[a-z0-9][a-z0-9-]{0,39}$"
VERSION = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
#: config and env keys: plain identifiers, never a path.
KEY = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
MAX_SERVICES = 16
MAX_PORTS = 32
MAX_ARGS = 64
MAX_ENV = 64
MAX_CONFIG = 64
MAX_STRING = 4096

Name = Annotated[str, StringConstraints(pattern=NAME)]
Key = Annotated[str, StringConstraints(pattern=KEY)]
Text = Annotated[str, StringConstraints(max_length=MAX_STRING)]
Port = Annotated[int, Field(ge=1, le=65535)]
Image = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^\S+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PortMap(_Strict):
    """A node port mapped to a chute port."""

    host: Port
    chute: Port
    protocol: Literal["tcp", "udp"] = "tcp"


class HttpCheck(_Strict):
    port: Port
    path: Annotated[str, StringConstraints(pattern=r"^/[!-~]{0,255}$")] = "/"


class TcpCheck(_Strict):
    port: Port


class Healthcheck(_Strict):
    """How a service proves it is healthy; a service without one is healthy while running."""

    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    exec: Annotated[list[Text], Field(min_length=1, max_length=MAX_ARGS)] | None = None
    interval_s: float = Field(default=2.0, gt=0, le=300)
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    retries: int = Field(default=3, ge=1, le=100)

    @model_validator(mode="after")
    def _one_kind(self) -> Healthcheck:
        kinds = [k for k in ("http", "tcp", "exec") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of http, tcp, exec")
        return self


class Service(_Strict):
    name: Name
    image: Image
    command: Annotated[list[Text], Field(max_length=MAX_ARGS)] | None = None
    env: Annotated[dict[Key, Text], Field(max_length=MAX_ENV)] = Field(default_factory=dict)
    ports: Annotated[list[PortMap], Field(max_length=MAX_PORTS)] = Field(default_factory=list)
    healthcheck: Healthcheck | None = None
    depends_on: Annotated[list[Name], Field(max_length=MAX_SERVICES)] = Field(default_factory=list)

    @field_validator("image")
    @classmethod
    def _reference(cls, value: str) -> str:
        """An ``oci://`` reference follows the registry grammar (docs/artifacts.md): a bad
        one is a 422 naming ``services.N.image`` before any change is queued."""
        if reference.is_oci(value):
            try:
                reference.parse(value, field="image")
            except EdgeplaneError as exc:
                raise ValueError(exc.detail) from None
        return value


class Bandwidth(_Strict):
    egress: int | None = Field(default=None, ge=8, le=10_000_000)
    ingress: int | None = Field(default=None, ge=8, le=10_000_000)


class Resources(_Strict):
    cpu_shares: int = Field(default=1024, ge=2, le=262144)
    memory_mb: int | None = Field(default=None, ge=4, le=1 << 20)
    pids: int | None = Field(default=None, ge=1, le=1 << 22)
    disk_mb: int = Field(default=1024, ge=1, le=1 << 24)
    bandwidth_kbit: Bandwidth = Field(default_factory=Bandwidth)


class Web(_Strict):
    service: Name
    port: Port


ConfigValue = str | int | float | bool | None


class Manifest(_Strict):
    name: Name
    version: Annotated[str, StringConstraints(pattern=VERSION)]
    #: no NUL: the chute store keeps it in a text column (PostgreSQL refuses NUL in text)
    description: Annotated[str, StringConstraints(max_length=1024, pattern=r"^[^\x00]*$")] = ""
    services: Annotated[list[Service], Field(min_length=1, max_length=MAX_SERVICES)]
    resources: Resources = Field(default_factory=Resources)
    web: Web | None = None
    config: Annotated[dict[Key, ConfigValue], Field(max_length=MAX_CONFIG)] = Field(
        default_factory=dict
    )
    #: how often each running service's cgroup is sampled and how many samples its
    #: manager keeps (docs/metrics.md); left out: ``daemon``
    monitoring: MonitoringField | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [s.name for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError("services: two services share a name")
        hosts: set[tuple[int, str]] = set()
        for service in self.services:
            for port in service.ports:
                if (port.host, port.protocol) in hosts:
                    raise ValueError(
                        f"services: host port {port.host}/{port.protocol} is mapped twice"
                    )
                hosts.add((port.host, port.protocol))
            for dep in service.depends_on:
                if dep not in names:
                    raise ValueError(f"services: {service.name} depends on unknown {dep!r}")
        start_order(self.services)  # raises on a cycle
        if self.web is not None and self.web.service not in names:
            raise ValueError(f"web: no service {self.web.service!r}")
        return self

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def profile(self) -> Monitoring | None:
        """The services' monitoring profile (None: ``off``, not sampled)."""
        return resolve(self.monitoring, daemon=True)


def start_order(services: list[Service]) -> list[str]:
    """Service names, each after those it depends on (a cycle is a ValueError)."""
    deps = {s.name: list(s.depends_on) for s in services}
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ValueError("services: depends_on has a cycle: " + " -> ".join((*path, name)))
        state[name] = 1
        for dep in deps.get(name, []):
            visit(dep, (*path, name))
        state[name] = 2
        order.append(name)

    for name in deps:
        visit(name, ())
    return order


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def parse(data: Any) -> Manifest:
    """A manifest from decoded JSON/YAML; :class:`Invalid` naming the field otherwise."""
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field(tuple(first.get("loc", ())))
        if first.get("type") == "extra_forbidden":
            raise Invalid(f"{field}: unknown field", field=field) from None
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        named = re.match(r"(services|web): ", message)
        if not first.get("loc") and named is not None:  # a rule across fields names its own
            field, message = named.group(1), message.removeprefix(named.group(0))
        raise Invalid(f"{field}: {message}", field=field) from None


def load(text: str | bytes, where: str = "chute.yaml") -> Manifest:
    """A manifest from YAML (or JSON, a subset) through the project's safe loader."""
    return parse(safeyaml.load(text, where))


def valid_name(name: str) -> bool:
    return re.fullmatch(NAME.strip("^$"), name) is not None


def valid_version(version: str) -> bool:
    return re.fullmatch(VERSION.strip("^$"), version) is not None


class _Config(_Strict):
    config: Annotated[dict[Key, ConfigValue], Field(max_length=MAX_CONFIG)]


def parse_config(data: Any) -> dict[str, ConfigValue]:
    """A chute's config (keys are identifiers, values scalars); Invalid naming the key."""
    try:
        return dict(_Config.model_validate({"config": data}).config)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field(tuple(first.get("loc", ())))
        raise Invalid(f"{field}: {first.get('msg', 'invalid')}", field=field) from None
