"""Usage series: ``GET …/metrics`` of a task, a worker or a cluster (docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel

from edgeplane.manager.series import DEFAULT_POINTS, MAX_POINTS, in_range
from edgeplane.protocol import Sample

Since = Annotated[
    float | None, Query(ge=0, description="from this time on (unix seconds); default: all kept")
]
Until = Annotated[float | None, Query(ge=0, description="up to this time (unix seconds)")]
Points = Annotated[
    int,
    Query(ge=1, le=MAX_POINTS, description="at most this many points (averaged buckets beyond)"),
]


class UsageSeries(BaseModel):
    id: str
    #: (a chute's: ``id`` is ``WORKER/CHUTE/SERVICE``)
    kind: Literal["task", "worker", "cluster", "chute"]
    #: oldest first; ``values`` by name (docs/metrics.md lists them)
    samples: list[Sample]
    #: whether the samples in range were more than ``points`` and were averaged
    downsampled: bool = False


def series(
    kind: Literal["task", "worker", "cluster"],
    ident: str,
    samples: Sequence[Sample],
    since: float | None,
    until: float | None,
    points: int = DEFAULT_POINTS,
    *,
    aggregated: bool = False,
) -> UsageSeries:
    chosen, downsampled = in_range(samples, since, until, points)
    return UsageSeries(id=ident, kind=kind, samples=chosen, downsampled=aggregated or downsampled)
