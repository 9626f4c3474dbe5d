"""A manager applies a worker's chute events once each, in order, whatever the delivery:
repeats, crossing batches, holes, a node that dropped events (``manager/chute_states.py``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgeplane.manager.chute_states import MAX_RECENT, apply
from edgeplane.model.worker import ChuteStates
from edgeplane.protocol import ChuteEvent, ChuteEvents

STREAM = "0123456789abcdef"


def event(seq: int, kind: str = "started", chute: str = "a", **fields: object) -> ChuteEvent:
    status = fields.pop("status", {"name": chute, "state": f"s{seq}"})
    return ChuteEvent.model_validate(
        {"seq": seq, "ts": float(seq), "kind": kind, "chute": chute, "status": status, **fields}
    )


def batch(seqs: list[int], after: int = 0, stream: str = STREAM) -> ChuteEvents:
    return ChuteEvents(worker_id="w", stream=stream, after=after, events=[event(s) for s in seqs])


#: the node's events: 1 to N
N = 40
# A delivery: what the node sent at some time, oldest held first: from just past its
# floor (the last ack it got, lost acks included: any seq up to what the manager has
# stored), some of its events; in any order and number with the others.
deliveries = st.lists(st.tuples(st.integers(0, N), st.integers(1, 12)), max_size=30)


@given(deliveries)
def test_each_event_is_applied_once_and_in_order(sends: list[tuple[int, int]]) -> None:
    kept: ChuteStates | None = None
    applied: list[int] = []
    for floor_choice, size in sends:
        stored = 0 if kept is None else kept.seq
        floor = min(floor_choice, stored)
        seqs = list(range(floor + 1, min(N, floor + size) + 1))
        if not seqs:
            continue
        result = apply(kept, batch(seqs, after=floor), 1.0)
        applied += [e.seq for e in result.events]
        kept = result.states
        assert result.upto == kept.seq
    # ...and at last the node sends everything it still holds
    floor = 0 if kept is None else kept.seq
    if floor < N:
        result = apply(kept, batch(list(range(floor + 1, N + 1)), after=floor), 1.0)
        applied += [e.seq for e in result.events]
        kept = result.states
    assert applied == list(range(1, N + 1))
    assert kept is not None and kept.seq == N and kept.lost == 0
    assert [e["seq"] for e in kept.events] == list(range(1, N + 1))[-MAX_RECENT:]


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(1, 5)), max_size=20))
def test_events_a_node_dropped_are_skipped_and_counted(sends: list[tuple[int, int]]) -> None:
    """The node held only what is past ``after`` (it dropped the rest): what the manager
    applies still goes up one by one, never twice, and the skipped count as lost."""
    kept: ChuteStates | None = None
    applied: list[int] = []
    for after, size in sends:
        result = apply(kept, batch(list(range(after + 1, after + size + 1)), after=after), 1.0)
        applied += [e.seq for e in result.events]
        kept = result.states
    assert applied == sorted(set(applied))
    if kept is not None:
        assert kept.lost == kept.seq - len(applied)


def test_a_hole_waits_for_the_events_before_it() -> None:
    first = apply(None, batch([1, 2]), 1.0)
    assert [e.seq for e in first.events] == [1, 2]
    crossing = apply(first.states, batch([4, 5], after=0), 2.0)
    assert crossing.events == [] and crossing.hole and crossing.upto == 2
    assert crossing.states.seq == 2
    whole = apply(crossing.states, batch([3, 4, 5], after=2), 3.0)
    assert [e.seq for e in whole.events] == [3, 4, 5] and whole.states.seq == 5


def test_repeats_change_nothing() -> None:
    first = apply(None, batch([1, 2, 3]), 1.0)
    again = apply(first.states, batch([1, 2, 3]), 2.0)
    assert again.states is first.states and again.events == [] and again.upto == 3


def test_statuses_snapshots_and_deletes() -> None:
    events = [
        event(1, "snapshot", "", status=None, chutes=[{"name": "old"}, {"name": "b"}]),
        event(2, "started", "a", status={"name": "a", "state": "running"}),
        event(3, "exited", "a", service="main", status={"name": "a", "state": "failed"}),
        event(4, "deleted", "b", status=None),
        # an install that rolled back: no chute
        event(5, "change_failed", "c", status=None),
    ]
    result = apply(None, ChuteEvents(worker_id="w", stream=STREAM, events=events), 7.0)
    states = result.states
    assert [d["name"] for d in states.items] == ["a", "old"]
    assert states.items[0]["state"] == "failed"
    assert states.reported_at == 7.0
    assert states.events[0] == {"seq": 1, "ts": 1.0, "kind": "snapshot", "chute": "", "chutes": 2}
    assert "status" not in states.events[2] and states.events[2]["service"] == "main"


def test_a_new_stream_starts_over() -> None:
    """A node whose data dir is new numbers its events from 1 again."""
    first = apply(None, batch([1, 2, 3]), 1.0)
    other = "fedcba9876543210"
    again = apply(first.states, batch([1], stream=other), 2.0)
    assert [e.seq for e in again.events] == [1]
    assert again.states.stream == other and again.states.seq == 1
