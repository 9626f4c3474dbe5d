"""Envelope codec and message parsing: bad input is an Invalid, never a crash."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeplane.errors import Invalid
from edgeplane.protocol import Hello, StartTasks, Topics, decode, encode, parse_body
from edgeplane.protocol.terms import TermGate


def test_round_trip() -> None:
    raw = encode("task.stop", {"task_ids": ["a"]})
    envelope = decode(raw)
    assert envelope.type == "task.stop" and envelope.v == 1 and envelope.id
    assert parse_body(envelope.type, envelope.body).model_dump() == {"task_ids": ["a"]}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"not json", "payload"),
        (b"[1,2]", "payload"),
        (orjson.dumps({"v": 2, "type": "x", "body": {}}), "v"),
        (orjson.dumps({"v": 1, "body": {}}), "type"),
        (orjson.dumps({"v": 1, "type": "alive", "body": []}), "body"),
        (orjson.dumps({"v": 1, "type": "alive", "body": {}, "term": -1}), "term"),
        (orjson.dumps({"v": 1, "type": "alive", "body": {}, "term": "2"}), "term"),
        (orjson.dumps({"v": 1, "type": "alive", "body": {}, "term": True}), "term"),
    ],
)
def test_bad_envelopes(payload: bytes, field: str) -> None:
    with pytest.raises(Invalid) as caught:
        decode(payload)
    assert caught.value.field == field


def test_unknown_type_and_bad_body() -> None:
    with pytest.raises(Invalid, match="unknown message type"):
        parse_body("teleport", {})
    with pytest.raises(Invalid) as caught:
        parse_body("task.start", {"tasks": "t"})
    assert caught.value.field == "tasks"
    with pytest.raises(Invalid) as caught:
        parse_body("task.start", {"tasks": [], "seq": "first"})
    assert caught.value.field == "seq"


def test_a_bad_assignment_costs_only_itself() -> None:
    good = {"task_id": "g", "attempt": 1, "runtime": "wasm"}
    # what a manager's pydantic serialiser writes (orjson cannot write 2**64)
    raw = json.dumps(
        {
            "v": 1,
            "type": "task.start",
            "body": {
                "tasks": [
                    good,
                    {**good, "task_id": "fuel", "limits": {"fuel": 2**64}},
                    {**good, "task_id": "memory", "attempt": 2, "limits": {"memory_mb": 2**53}},
                    {"task_id": "no-attempt"},
                    [],
                    {**good, "task_id": "g2"},
                ],
                "seq": 7,
            },
        }
    )
    start = parse_body("task.start", decode(raw).body)
    assert isinstance(start, StartTasks)
    assert [a.task_id for a in start.tasks] == ["g", "g2"]
    assert start.seq == 7
    assert [(u.task_id, u.attempt) for u in start.unrunnable] == [("fuel", 1), ("memory", 2)]
    assert all("limits." in u.reason for u in start.unrunnable), start.unrunnable
    assert "memory_mb" in start.unrunnable[1].reason
    assert start.unreadable == 2
    # what the parse found is never sent on
    assert b"unrunnable" not in encode("task.start", start)


@given(st.binary(max_size=200))
def test_decode_never_raises_anything_but_invalid(data: bytes) -> None:
    try:
        envelope = decode(data)
        parse_body(envelope.type, envelope.body)
    except Invalid:
        pass


def test_hello_and_start_shapes() -> None:
    hello = Hello.model_validate(
        {"worker_id": "w", "session": "s", "capabilities": {"cpus": 2, "runtimes": ["wasm"]}}
    )
    assert hello.capabilities.cpus == 2
    start = StartTasks.model_validate(
        {"tasks": [{"task_id": "t", "attempt": 1, "runtime": "wasm"}]}
    )
    assert start.tasks[0].limits.timeout_s is None


def test_topics() -> None:
    topics = Topics("ep", "c1")
    assert topics.cmd("w1") == "ep/c1/workers/w1/cmd"
    assert topics.all_members("alive") == "ep/c1/workers/+/alive"
    assert topics.member_of("ep/c1/workers/w1/events") == ("w1", "events")
    assert topics.member_of("ep/c2/workers/w1/events") is None
    assert topics.member_of("garbage") is None
    root = Topics.for_root("ep")
    assert root.aggregate("c1") == "ep/clusters/c1/aggregate"
    assert root.member_of("ep/clusters/c1/hello") == ("c1", "hello")
    assert root.member_of("ep/c1/workers/w1/hello") is None


def test_a_leaders_term_travels_in_the_envelope() -> None:
    assert decode(encode("task.stop", {"task_ids": []}, term=7)).term == 7
    assert decode(encode("task.stop", {"task_ids": []})).term == 0
    assert b"term" not in encode("task.stop", {"task_ids": []})


def test_a_member_refuses_an_older_term() -> None:
    gate = TermGate()
    assert gate.admit(1) and gate.admit(3) and gate.admit(3)
    assert not gate.admit(2) and not gate.admit(0)
    assert (gate.term, gate.stale) == (3, 2)
