"""Cluster shapes: static metadata sent at registration, the aggregate sent every few
seconds, and the cluster document the root returns (``GET /clusters``).

Only aggregates go up to the root, never per-worker detail (Oakestra's design).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeplane.errors import Invalid
from edgeplane.limits import MAX_RADIUS_KM

ClusterState = Literal["online", "offline"]


class Location(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


def parse_location(text: str) -> Location | None:
    """``"52.52,13.40"`` → a :class:`Location`; empty → None."""
    if not text.strip():
        return None
    try:
        lat, lon = (float(part) for part in text.split(","))
        return Location(lat=lat, lon=lon)
    except (ValueError, ValidationError):
        raise Invalid(
            f"location must be 'lat,lon' in degrees, not {text!r}", field="location"
        ) from None


class GeoConstraint(Location):
    """Place only on clusters whose location lies within ``radius_km`` of this point."""

    radius_km: float = Field(gt=0, le=MAX_RADIUS_KM)


class FreeStats(BaseModel):
    """One free resource (cpu cores or memory MB) over a group of workers."""

    model_config = ConfigDict(extra="ignore")

    count: int = 0
    sum: float = 0.0
    mean: float = 0.0
    std: float = 0.0
    max: float = 0.0


class CapacityGroup(BaseModel):
    """The online workers of a cluster that offer one runtime and share one label set."""

    model_config = ConfigDict(extra="ignore")

    runtime: str
    labels: dict[str, str] = Field(default_factory=dict)
    workers: int = 0
    free_slots: int = 0
    cpu: FreeStats = Field(default_factory=FreeStats)
    memory_mb: FreeStats = Field(default_factory=FreeStats)
    #: workers of the group with a TEE / with at least one accelerator / that can give
    #: tasks a bridge network (``network: bridge``)
    tee: int = 0
    accelerators: int = 0
    bridge: int = 0


class Aggregate(BaseModel):
    """What a cluster tells the root about its capacity (``{d}/clusters/{c}/aggregate``)."""

    model_config = ConfigDict(extra="ignore")

    workers: int = Field(default=0, description="online, not draining")
    free_slots: int = 0
    groups: list[CapacityGroup] = Field(default_factory=list)
    max_free_cpu: float = 0.0
    max_free_memory_mb: int = 0
    tee: int = 0
    accelerators: int = 0
    #: workers that can give tasks a bridge network (``network: bridge``)
    bridge: int = 0
    location: Location | None = None
    ts: float = 0.0
    #: the root process (the ``epoch`` of its ``task.start``) and its last command whose
    #: tasks this aggregate counts: the root books the tasks it sent after that on top
    epoch: str = Field(default="", max_length=64)
    seq: int = Field(default=0, ge=0)
    #: digests of the artifacts most held by the cluster's workers (at most
    #: :data:`AGGREGATE_ARTIFACTS`): the root prefers this cluster for tasks needing them
    artifacts: list[str] = Field(default_factory=list)

    @field_validator("artifacts", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> list[str]:
        # lenient: a soft preference is not worth refusing a cluster's whole aggregate
        if not isinstance(value, list):
            return []
        found = [d for d in value if isinstance(d, str) and _SHA256_HEX.fullmatch(d)]
        return list(dict.fromkeys(found))[:AGGREGATE_ARTIFACTS]


#: How many artifact digests a cluster's aggregate names.
AGGREGATE_ARTIFACTS = 64
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ClusterInfo(BaseModel):
    """Static metadata a cluster registers with."""

    model_config = ConfigDict(extra="ignore")

    name: str = ""
    location: Location | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    broker_url: str = Field(default="", description="the cluster's own broker, for its workers")


class Cluster(BaseModel):
    """``GET /clusters/{id}``."""

    model_config = ConfigDict(extra="ignore")

    id: str
    name: str = ""
    state: ClusterState = "online"
    location: Location | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    broker_url: str = ""
    aggregate: Aggregate | None = None
    active_tasks: int = 0
    registered_at: float = 0.0
    last_seen: float = 0.0
