"""What a networked container task asks for and gets (docs/services.md): its network, the
container ports it publishes, its health check, and the addresses it is reached at.

A task with ``network: bridge`` runs in a network namespace of its own on its worker's
bridge (the chutes' network, ``edgeplane.chutes.network``); each of its ``ports`` is
published on a *host port* the worker picks from its ``--service-ports`` range, so two
replicas on one worker asking for the same container port never collide. The worker
reports the host ports with the worker's address as the task's ``endpoints``.

A task with a ``healthcheck`` is reported ``running`` only once its check has passed:
``running`` means healthy. One that does not pass within ``start_period_s`` and then
``retries`` checks in a row (or fails ``retries`` in a row later) is stopped and ends
``failed`` with reason ``unhealthy``.

Every model here refuses unknown fields, so a typo is a 422 naming it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from edgeplane.limits import MAX_ARGS
from edgeplane.model.bounds import Arg

Network = Literal["none", "bridge"]
Protocol = Literal["tcp", "udp"]
PortNumber = Annotated[int, Field(ge=1, le=65535)]
#: the most ports one task publishes
MAX_PORTS = 32
PortName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]
HttpPath = Annotated[str, StringConstraints(pattern=r"^/[!-~]{0,255}$")]
#: an address a worker is reached at: an IP or a host name
Address = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:%-]{1,253}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PortSpec(_Strict):
    """A container port to publish on a host port of the worker's."""

    port: PortNumber
    protocol: Protocol = "tcp"
    #: a label for it (``http``, ``metrics``), shown with its endpoint
    name: PortName | None = None


class Endpoint(_Strict):
    """Where a published port is reached: ``address:host_port`` leads to ``port`` in the
    container."""

    address: Address
    host_port: PortNumber
    port: PortNumber
    protocol: Protocol = "tcp"
    name: PortName | None = None

    def __str__(self) -> str:
        label = f"{self.name}=" if self.name else ""
        return f"{label}{self.netloc}->{self.port}/{self.protocol}"

    @property
    def netloc(self) -> str:
        """``address:host_port`` (an IPv6 address in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.host_port}"


class HttpCheck(_Strict):
    """Healthy when ``GET path`` on the container's ``port`` answers 2xx or 3xx."""

    port: PortNumber
    path: HttpPath = "/"


class TcpCheck(_Strict):
    """Healthy when a TCP connection to the container's ``port`` is accepted."""

    port: PortNumber


class HealthCheck(_Strict):
    """How a container task proves it is healthy: exactly one of ``http``, ``tcp`` and
    ``exec`` (a command run in the container, healthy when it exits 0)."""

    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    exec: Annotated[list[Arg], Field(min_length=1, max_length=MAX_ARGS)] | None = None
    #: seconds between checks
    interval_s: float = Field(default=2.0, gt=0, le=300, allow_inf_nan=False)
    #: seconds one check may take; longer is a failure
    timeout_s: float = Field(default=1.0, gt=0, le=60, allow_inf_nan=False)
    #: failures in a row that make it unhealthy
    retries: int = Field(default=3, ge=1, le=100)
    #: seconds after the start during which failures do not count (until the first pass)
    start_period_s: float = Field(default=30.0, ge=0, le=3600, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_kind(self) -> HealthCheck:
        kinds = [k for k in ("http", "tcp", "exec") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of http, tcp, exec")
        return self

    def describe(self) -> str:
        """What is checked, for messages: ``http GET / on port 8000``."""
        if self.http is not None:
            return f"http GET {self.http.path} on port {self.http.port}"
        if self.tcp is not None:
            return f"tcp connect to port {self.tcp.port}"
        return f"exec {' '.join(self.exec or [])[:200]}"
