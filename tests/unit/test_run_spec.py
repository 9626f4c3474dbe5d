"""The run spec a worker hands its runtimes (runtimes/spec.py), made from an MQTT
assignment in one place (worker/agent.py: run_spec) without validating it again."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.limits import MAX_FUEL, MAX_MEMORY_MB, MAX_TIMEOUT_S
from edgeplane.protocol import Assignment
from edgeplane.runtimes import RunSpec
from edgeplane.runtimes.spec import LOCAL_FIELDS
from edgeplane.worker.agent import run_spec

#: JSON values, as a command's inputs are (no NaN or infinity)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_limits = st.fixed_dictionaries(
    {},
    optional={
        "timeout_s": st.floats(min_value=0.001, max_value=MAX_TIMEOUT_S),
        "fuel": st.integers(min_value=1, max_value=MAX_FUEL),
        "memory_mb": st.integers(min_value=1, max_value=MAX_MEMORY_MB),
    },
)
#: assignments as a command carries them, with the fields runtimes do not get
_assignments = st.fixed_dictionaries(
    {
        "task_id": st.text(min_size=1, max_size=20),
        "attempt": st.integers(min_value=1, max_value=99),
        "runtime": st.sampled_from(["wasm", "host", "container", "fake"]),
    },
    optional={
        "name": st.text(max_size=10),
        "mode": st.sampled_from(["function", "wasi"]),
        "entrypoint": st.text(max_size=10),
        "artifact": st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
        "artifact_b64": st.none() | st.just("AGFzbQEAAAA="),
        "inputs": st.lists(_json, max_size=4),
        "cli_args": st.lists(st.text(max_size=8), max_size=3),
        "env": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
        "command": st.none() | st.lists(st.text(max_size=8), min_size=1, max_size=3),
        "image": st.none() | st.just("busybox:1"),
        "limits": _limits,
        "daemon": st.booleans(),
        "retries": st.integers(min_value=0, max_value=5),
        "priority": st.integers(min_value=0, max_value=100),
        "metadata": st.dictionaries(st.text(max_size=5), _json, max_size=2),
        "pinned_worker": st.none() | st.text(max_size=5),
        "network": st.sampled_from(["none", "bridge"]),
        "ports": st.lists(
            st.fixed_dictionaries(
                {"port": st.integers(1, 65535), "protocol": st.sampled_from(["tcp", "udp"])}
            ),
            max_size=3,
        ),
        "healthcheck": st.none() | st.just({"tcp": {"port": 80}, "interval_s": 0.5}),
    },
)


def test_every_field_of_a_run_spec_is_an_assignment_field_of_the_same_type() -> None:
    """What run_spec relies on to take the assignment's values over unchecked; the
    node-local ones (a netns, host mounts) are on no wire."""
    for name, field in RunSpec.model_fields.items():
        if name in LOCAL_FIELDS:
            assert name not in Assignment.model_fields, name
            assert field.get_default() is None, name
            continue
        wire = Assignment.model_fields.get(name)
        assert wire is not None, f"Assignment has no field {name!r}"
        assert wire.annotation == field.annotation, name
        assert wire.get_default(call_default_factory=True) == field.get_default(
            call_default_factory=True
        ), name


@settings(max_examples=200)
@given(document=_assignments)
def test_the_conversion_is_the_validated_one(document: dict[str, Any]) -> None:
    assignment = Assignment.model_validate(document)
    spec = run_spec(assignment)
    validated = RunSpec.model_validate(assignment.model_dump())
    assert spec == validated
    assert spec.model_dump() == validated.model_dump()
    assert spec.model_dump_json() == validated.model_dump_json()
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec
    assert spec.model_copy(update={"attempt": 7}).attempt == 7
    assert "artifact_b64" not in spec.model_dump()  # the module bytes stay out


def test_a_spec_an_older_version_stored_is_read() -> None:
    """Handle states and records written before RunSpec hold a whole Assignment."""
    older = Assignment(
        task_id="t1",
        attempt=2,
        runtime="host",
        command=["true"],
        artifact_b64="AGFzbQEAAAA=",
        retries=3,
        priority=80,
        metadata={"owner": "ops"},
        pinned_worker="w1",
    )
    spec = RunSpec.model_validate_json(older.model_dump_json())
    assert spec == run_spec(older)
    assert (spec.task_id, spec.attempt, spec.command) == ("t1", 2, ["true"])
