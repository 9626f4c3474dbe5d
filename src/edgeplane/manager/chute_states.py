"""What a manager knows of a worker's chutes: its chute events applied in order, once
(pure: no I/O).

A worker sends the events its node still holds, oldest first, again until they are acked
(``chutes/events.py``), so a batch may repeat events already applied, and batches may
cross (a resend after a reconnect, next to a new event sent before it). Each event of the
node's ``stream`` is applied only when it is the next one, ``seq`` after ``seq``; one
already applied is skipped; one past a hole ends the batch (the hole's events come in the
next batch, which starts at the node's oldest). Events the node dropped past its bound
(``after`` beyond the last applied) are skipped over and counted in ``lost``; the node
sends a snapshot after dropping, which makes the view whole again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeplane.model.worker import ChuteStates
from edgeplane.protocol import ChuteEvent, ChuteEvents
from edgeplane.protocol.messages import MAX_REPORTED_CHUTES

#: events of a worker kept to show (the newest)
MAX_RECENT = 50


@dataclass(frozen=True)
class Applied:
    states: ChuteStates
    #: the events applied now, in order
    events: list[ChuteEvent] = field(default_factory=list)
    #: every event up to this seq is applied: what may be acked once stored
    upto: int = 0
    #: the batch skipped an event not seen yet: it is sent again
    hole: bool = False


def summary(event: ChuteEvent) -> dict[str, Any]:
    """An event as a worker's recent events show it (without the statuses it carried)."""
    found = event.model_dump(mode="json", exclude={"status", "chutes"}, exclude_none=True)
    if event.chutes is not None:
        found["chutes"] = len(event.chutes)
    return found


def apply(kept: ChuteStates | None, batch: ChuteEvents, now: float) -> Applied:
    """``kept`` with the events of ``batch`` that are new, applied in order."""
    if kept is None or kept.stream != batch.stream:
        # a new stream: the node's data dir is new; its snapshot comes with its start
        items = [] if kept is None else kept.items
        kept = ChuteStates(stream=batch.stream, items=items)
    last = kept.seq
    lost = kept.lost + max(0, batch.after - last)
    expected = max(last, batch.after) + 1
    chutes = {str(doc.get("name")): doc for doc in kept.items}
    recent = list(kept.events)
    applied: list[ChuteEvent] = []
    hole = False
    for event in sorted(batch.events, key=lambda e: e.seq):
        if event.seq < expected:
            continue  # applied before
        if event.seq > expected:
            hole = True
            break
        _apply_one(chutes, event)
        recent.append(summary(event))
        applied.append(event)
        expected += 1
    upto = expected - 1
    if not applied and upto == last and lost == kept.lost:
        return Applied(kept, upto=upto, hole=hole)
    names = sorted(chutes)[:MAX_REPORTED_CHUTES]
    states = ChuteStates(
        stream=batch.stream,
        seq=upto,
        reported_at=now if applied else kept.reported_at,
        items=[chutes[name] for name in names],
        events=recent[-MAX_RECENT:],
        lost=lost,
    )
    return Applied(states, applied, upto, hole)


def _apply_one(chutes: dict[str, dict[str, Any]], event: ChuteEvent) -> None:
    if event.kind == "snapshot":
        chutes.clear()
        for doc in event.chutes or []:
            name = doc.get("name")
            if isinstance(name, str) and name:
                chutes[name] = doc
        return
    if not event.chute:
        return
    if event.status is None:  # deleted, or never installed (an install rolled back)
        chutes.pop(event.chute, None)
    else:
        chutes[event.chute] = {**event.status, "name": event.chute}
