"""What a starting worker makes of the task handles its previous process left.

Each record becomes either an attempt re-attached to (it still runs, and the worker
reports it as its own) or a final event to report: the one the previous process had not
handed over yet, how the attempt ended while no worker watched it, or why it cannot go on.
An attempt the worker cannot continue is stopped here, before the worker takes any work.
The agent releases (``Runtime.release``) every attempt it reports a final event of here
once that event is saved: until then the runtimes keep what says how it ended.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from edgeplane.clock import Clock
from edgeplane.protocol import TaskEvent
from edgeplane.runtimes import Handle, Outcome, Runtime
from edgeplane.worker.handles import HandleRecord

log = logging.getLogger(__name__)

#: an intent (a record without the runtime's state): the worker died while it started the
#: attempt, before the handle was saved, so the command never ran (Runtime.start_held)
NEVER_STARTED = (
    "the worker stopped while it started this attempt, before its command could run: it "
    "never ran (tried again while retries allow)"
)
NOTHING_LEFT = (
    "the worker restarted and found nothing left of this attempt: how it ended is unknown"
)


@dataclass(frozen=True)
class Resumed:
    record: HandleRecord
    runtime: Runtime
    handle: Handle


@dataclass
class Recovered:
    resumed: list[Resumed] = field(default_factory=list)
    #: records with the final event to report (and keep until it is acked)
    finals: list[HandleRecord] = field(default_factory=list)


def final_of(record: HandleRecord, outcome: Outcome, now: float) -> HandleRecord:
    """``record`` with the final event of ``outcome``."""
    event = TaskEvent(
        task_id=record.spec.task_id,
        attempt=record.spec.attempt,
        state=outcome.state,
        started_at=record.started_at,
        results=outcome.results,
        error=outcome.error,
        transient=outcome.transient,
        exit_code=outcome.exit_code,
        stdout=outcome.stdout,
        stderr=outcome.stderr,
        ts=now,
    )
    return record.model_copy(update={"final": event})


async def recover(
    records: list[HandleRecord],
    runtimes: Mapping[str, Runtime],
    cleaners: Mapping[str, Runtime],
    clock: Clock,
) -> Recovered:
    """Re-attach to what runs on an enabled runtime; end the rest, with a final event each.

    ``cleaners`` are runtimes this worker does not offer any more (``--no-allow-host``
    after a run with it) but that can still find and stop what an earlier run left.
    """
    found = Recovered()
    for record in records:
        if record.final is not None:
            found.finals.append(record)
            continue
        name = record.spec.runtime
        if not record.state:  # an intent: the agent releases what its start left
            outcome = Outcome("failed", error=NEVER_STARTED, transient=True)
            found.finals.append(final_of(record, outcome, clock.now()))
            continue
        runtime = runtimes.get(name)
        if runtime is not None:
            handle = await runtime.recover(record.state)
            if handle is None:
                outcome = Outcome("failed", error=NOTHING_LEFT)
                found.finals.append(final_of(record, outcome, clock.now()))
            else:
                found.resumed.append(Resumed(record, runtime, handle))
            continue
        outcome = await _end(record, cleaners.get(name))
        found.finals.append(final_of(record, outcome, clock.now()))
    return found


async def _end(record: HandleRecord, cleaner: Runtime | None) -> Outcome:
    """The outcome of an attempt on a runtime no longer enabled here, stopped if it runs.

    One that ended by itself keeps its outcome. One stopped here did not get to finish,
    like one whose worker was lost: the failure is transient (retried when retries are left).
    """
    name = record.spec.runtime
    if cleaner is None:
        log.error(
            "cannot stop a task left by a previous run",
            extra={"task_id": record.spec.task_id, "runtime": name},
        )
        return Outcome(
            "failed",
            error=f"runtime {name!r} is not available to this worker any more: what its "
            "previous run left of the attempt could not be stopped",
            transient=True,
        )
    handle = await cleaner.recover(record.state)
    if handle is None:
        return Outcome("failed", error=NOTHING_LEFT)
    if cleaner.inspect(handle).get("running"):
        await cleaner.stop(handle)
    outcome = await cleaner.wait(handle)
    if outcome.state != "cancelled":
        return outcome
    return Outcome(
        "failed",
        error=f"runtime {name!r} is not enabled on this worker any more: the attempt its "
        "previous run left was stopped",
        transient=True,
        stdout=outcome.stdout,
        stderr=outcome.stderr,
    )
