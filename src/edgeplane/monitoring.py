"""Monitoring profiles (as in Propeller): how often a task's usage is sampled on its
worker and how many samples its manager keeps (docs/metrics.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

#: the shortest interval a task may ask for: a sample costs a process-tree walk
MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 3600.0
MAX_HISTORY = 10_000

ProfileName = Literal["standard", "daemon", "off"]


class Monitoring(BaseModel):
    """A custom profile: one sample every ``interval_s``, the last ``history`` kept."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S, allow_inf_nan=False)
    history: int = Field(ge=1, le=MAX_HISTORY)


PROFILES: dict[str, Monitoring | None] = {
    "standard": Monitoring(interval_s=10.0, history=100),
    "daemon": Monitoring(interval_s=120.0, history=500),
    "off": None,
}


def _kind(value: Any) -> str:
    return "custom" if isinstance(value, dict | Monitoring) else "name"


#: what a task body's ``monitoring`` may be: a profile's name or a custom profile. The
#: discriminator picks the branch from the value's shape, so an error names what is wrong
#: with the value given (``monitoring.custom.interval_s``), not the other branch's rule.
MonitoringField = Annotated[
    Annotated[ProfileName, Tag("name")] | Annotated[Monitoring, Tag("custom")],
    Discriminator(_kind),
]


def resolve(given: MonitoringField | None, *, daemon: bool) -> Monitoring | None:
    """The profile a task runs with (None: not sampled). Left out, a daemon task (and so
    every service instance) gets ``daemon``, any other ``standard``."""
    if given is None:
        given = "daemon" if daemon else "standard"
    if isinstance(given, Monitoring):
        return given
    return PROFILES[given]
