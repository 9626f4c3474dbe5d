"""A container task's health check on its worker (docs/services.md).

:func:`observe` is the rule, pure: given what was seen so far, one probe's result and how
long after the attempt's start it came, the next state and a verdict. :func:`watch` runs
it: it probes every ``interval_s``, calls back on the first pass (the worker then reports
the attempt ``running``: ``running`` means healthy) and returns why once the attempt is
unhealthy (the worker then stops it; it ends ``failed``, reason ``unhealthy``).

Rules: a pass resets the count of failures. A failure before the first pass counts only
once ``start_period_s`` has gone by since the start (a service may take a while to
listen). ``retries`` counted failures in a row make it unhealthy, before the first pass
(it never became healthy) or after (it stopped being healthy).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from edgeplane.model.service import HealthCheck

#: ``starting``: not passed yet, and not unhealthy; ``healthy``: this is the first pass;
#: ``passing``: a later pass; ``failing``: failed, has passed before, not unhealthy yet;
#: ``unhealthy``: ``retries`` counted failures in a row
Verdict = Literal["starting", "healthy", "passing", "failing", "unhealthy"]

#: the reason an attempt that is not (or no longer) healthy ends with
UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class Health:
    """What the checks of one attempt have seen."""

    #: it has passed a check since it started
    passed: bool = False
    #: counted failures in a row
    failures: int = 0


def observe(
    health: Health, ok: bool, elapsed_s: float, check: HealthCheck
) -> tuple[Health, Verdict]:
    """The state after one probe that passed (``ok``) or not, ``elapsed_s`` seconds after
    the attempt started, and what it means (rules in the module doc)."""
    if ok:
        return Health(passed=True, failures=0), "passing" if health.passed else "healthy"
    if not health.passed and elapsed_s < check.start_period_s:
        return health, "starting"
    failures = health.failures + 1
    after = Health(passed=health.passed, failures=failures)
    if failures >= check.retries:
        return after, "unhealthy"
    return after, "failing" if health.passed else "starting"


async def watch(
    probe: Callable[[], Awaitable[str | None]],
    check: HealthCheck,
    elapsed_s: Callable[[], float],
    on_healthy: Callable[[], None],
) -> str:
    """Probe (``probe`` returns None when healthy, else why not) every ``interval_s``
    until the attempt is unhealthy; returns the last failure's reason. ``on_healthy`` is
    called on the first pass. Runs until cancelled otherwise."""
    health = Health()
    while True:
        why = await probe()
        health, verdict = observe(health, why is None, elapsed_s(), check)
        if verdict == "healthy":
            on_healthy()
        elif verdict == "unhealthy":
            return why or UNHEALTHY
        await asyncio.sleep(check.interval_s)
