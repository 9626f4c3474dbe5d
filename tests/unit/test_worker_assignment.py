"""A worker's ``task.start`` built straight from the tasks (``worker_assignment``, the
dispatcher's path when tracing is off) is the message the models would send: the same
JSON, and a worker decodes it to the same assignments."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.model import Task
from edgeplane.model.task import Limits
from edgeplane.monitoring import PROFILES
from edgeplane.protocol import (
    Assignment,
    StartTasks,
    decode,
    encode,
    start_tasks_body,
    worker_assignment,
)
from edgeplane.protocol.messages import WORKER_FIELDS

#: filled in for a cluster (root → cluster) or by the tracer only
OTHER_FIELDS = {
    "retries",
    "priority",
    "constraints",
    "metadata",
    "pinned_worker",
    "project",
    "traceparent",
}

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
names = st.from_regex(r"[a-z][a-z0-9-]{0,6}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=6,
)
envs = st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,5}", fullmatch=True), text, max_size=2)
ports = st.lists(
    st.fixed_dictionaries(
        {"port": st.integers(1, 65535)},
        optional={"protocol": st.sampled_from(["tcp", "udp"]), "name": names},
    ),
    max_size=2,
    unique_by=lambda p: (p["port"], p.get("protocol", "tcp")),
)
healthchecks = st.one_of(
    st.builds(lambda port: {"tcp": {"port": port}}, st.integers(1, 65535)),
    st.builds(
        lambda cmd, retries: {"exec": cmd, "retries": retries},
        st.lists(names, min_size=1, max_size=2),
        st.integers(1, 100),
    ),
)
limits = st.fixed_dictionaries(
    {},
    optional={
        "fuel": st.integers(1, 10**6),
        "timeout_s": st.floats(0.5, 100),
        "memory_mb": st.integers(1, 512),
    },
)
monitorings = st.one_of(
    st.none(),
    st.sampled_from(list(PROFILES)),
    st.builds(
        lambda i, h: {"interval_s": i, "history": h}, st.floats(0.1, 3600), st.integers(1, 99)
    ),
)
tasks = st.fixed_dictionaries(
    {"id": names, "attempt": st.integers(0, 5)},
    optional={
        "name": names,
        "runtime": st.sampled_from(["wasm", "host", "container"]),
        "mode": st.sampled_from(["function", "wasi"]),
        "export": names,
        "artifact": st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
        "inputs": st.lists(json_values, max_size=3),
        "cli_args": st.lists(text, max_size=2),
        "env": envs,
        "command": st.lists(text, max_size=2),
        "image": names,
        "network": st.sampled_from(["none", "bridge"]),
        "ports": ports,
        "healthcheck": healthchecks,
        "limits": limits,
        "daemon": st.booleans(),
        "monitoring": monitorings,
    },
).map(Task.model_validate)
secrets = st.one_of(
    st.none(),
    st.builds(lambda env: {"secret_env": env}, envs),
    st.builds(lambda sealed: {"sealed_env": sealed}, text),
)


def test_it_fills_every_field_a_worker_reads() -> None:
    assert set(WORKER_FIELDS) | OTHER_FIELDS == set(Assignment.model_fields)
    assert not set(WORKER_FIELDS) & OTHER_FIELDS


@settings(max_examples=300, deadline=None)
@given(tasks, st.none() | text, secrets)
def test_it_is_the_models_message(
    task: Task, artifact_b64: str | None, given_secrets: dict[str, Any] | None
) -> None:
    direct = worker_assignment(task, artifact_b64=artifact_b64, secrets=given_secrets)
    model = Assignment.of(task, artifact_b64=artifact_b64, secrets=given_secrets)
    # the same JSON as the encoder makes of the model (defaults left out)
    assert orjson.loads(orjson.dumps(direct)) == orjson.loads(
        model.__pydantic_serializer__.to_json(model, exclude_defaults=True)
    )
    # and a worker decodes the command to the same assignment
    body = start_tasks_body([direct], epoch="e", seq=3, session="s")
    received = StartTasks.model_validate(decode(encode("task.start", body)).body)
    sent = StartTasks(tasks=[model], epoch="e", seq=3, session="s")
    assert received.tasks == [model]
    assert received == StartTasks.model_validate(decode(encode("task.start", sent)).body)


def test_a_no_op_task_leaves_the_defaults_out() -> None:
    task = Task(id="t", name="noop", artifact="a" * 64, attempt=1)
    assert worker_assignment(task) == {
        "task_id": "t",
        "attempt": 1,
        "runtime": "wasm",
        "name": "noop",
        "entrypoint": "noop",
        "artifact": "a" * 64,
        # a profile left out means "off" to a worker (older ones included): always sent
        "monitoring": {"interval_s": 10.0, "history": 100},
    }
    off = worker_assignment(task.model_copy(update={"monitoring": "off"}))
    assert "monitoring" not in off
    assert StartTasks.model_validate({"tasks": [off]}).tasks[0].monitoring is None


def test_the_command_leaves_its_defaults_out() -> None:
    for epoch, seq, session in [("", 0, ""), ("e", 1, ""), ("e", 2, "s")]:
        body = start_tasks_body([], epoch=epoch, seq=seq, session=session)
        model = StartTasks(tasks=[], epoch=epoch, seq=seq, session=session)
        assert body == orjson.loads(
            model.__pydantic_serializer__.to_json(model, exclude_defaults=True)
        )


def test_an_int_past_64_bits_is_sent_as_the_model_sends_it() -> None:
    # (a task stored before limits had ranges: its worker fails that attempt, naming it)
    task = Task(id="t", attempt=1).model_copy(update={"limits": Limits.model_construct(fuel=2**64)})
    direct = encode(
        "task.start", start_tasks_body([worker_assignment(task)], epoch="e", seq=1, session="")
    )
    model = encode("task.start", StartTasks(tasks=[Assignment.of(task)], epoch="e", seq=1))
    assert orjson.loads(direct.split(b'"body":', 1)[1][:-1]) == orjson.loads(
        model.split(b'"body":', 1)[1][:-1]
    )
