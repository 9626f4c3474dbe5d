"""Worker shapes: capabilities sent at registration and the worker document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeplane.model.cluster import Location

WorkerState = Literal["online", "offline", "draining"]


class Capabilities(BaseModel):
    model_config = ConfigDict(extra="ignore")

    hostname: str = ""
    addresses: list[str] = Field(default_factory=list)
    arch: str = ""
    os: str = ""
    cpus: int = 1
    memory_mb: int = 0
    disk_mb: int = 0
    runtimes: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    tee: list[str] = Field(default_factory=list)
    accelerators: list[str] = Field(default_factory=list)
    #: sensors and devices found (serial, i2c, spi, gpio, video, …), as device paths
    devices: list[str] = Field(default_factory=list)
    #: container/unikernel engines found on PATH (runc, docker, …), enabled or not
    engines: list[str] = Field(default_factory=list)
    location: Location | None = None
    slots: int = 1
    #: tasks the worker holds per slot (queued until one frees); 1 = no queue. Older
    #: workers do not send it, so the manager gives them no more than their slots.
    prefetch: int = 1
    #: the user host tasks run as (``--host-user``); None: no host tasks here
    host_user: str | None = None
    #: whether it can give container tasks a bridge network (``network: bridge``, ports):
    #: it runs containers and its bridge is configured and usable. Older workers do not
    #: send it: such tasks are not placed on them (docs/scheduling.md)
    bridge: bool = False


class Usage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    cpu_percent: float = 0.0
    memory_used_mb: int = 0
    memory_free_mb: int = 0
    rss_mb: float = 0.0


class ChuteStates(BaseModel):
    """A worker's chutes as its chute events last told its manager (docs/chutes.md,
    "Chute events"): kept so that they can be shown while the worker is offline."""

    model_config = ConfigDict(extra="ignore")

    #: the worker's event sequence (made once in its data dir) and the last event applied
    stream: str = ""
    seq: int = 0
    #: when the manager last applied an event of the worker (seconds since the epoch)
    reported_at: float = 0.0
    #: each chute's status after its last event (as ``GET /workers/{id}/chutes/{name}``)
    items: list[dict[str, Any]] = Field(default_factory=list)
    #: the latest events, oldest first (without the statuses they carried)
    events: list[dict[str, Any]] = Field(default_factory=list)
    #: events the worker dropped (its bound) before they could be delivered
    lost: int = 0


class Worker(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    cluster_id: str = "local"
    state: WorkerState = "online"
    capabilities: Capabilities = Field(default_factory=Capabilities)
    usage: Usage = Field(default_factory=Usage)
    active_tasks: int = 0
    registered_at: float = 0.0
    last_seen: float = 0.0
    #: the user who owns the node: may drain, delete and manage it whatever their role
    #: (docs/security.md); set by the join token it joined with, or by an admin
    owner: str | None = None
    #: the worker's chutes as last reported (None: it never reported any)
    chutes: ChuteStates | None = None
