"""Input bounds in the models: every free-form value, string, list and number has a range,
and a field the stored document needs is never null."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from edgeplane.limits import MAX_DEPTH, MAX_ITEMS, MAX_NODES, MAX_RETRIES, MAX_STRING
from edgeplane.model import (
    ApplicationSpec,
    Constraints,
    JobSpec,
    TaskPatch,
    TaskSpec,
    WorkflowSpec,
)
from edgeplane.model.bounds import check_json


def nested(depth: int) -> dict[str, Any]:
    """``{"a": {"a": … {}}}`` with ``depth`` objects in all."""
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


def field_of(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return ".".join(str(part) for part in exc.value.errors()[0]["loc"])


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (TaskSpec, {"metadata": nested(200)}, "metadata"),
        (TaskSpec, {"inputs": [nested(MAX_DEPTH + 1)]}, "inputs"),
        (TaskSpec, {"inputs": [0] * (MAX_ITEMS + 1)}, "inputs"),
        (TaskSpec, {"inputs": ["x" * (MAX_STRING + 1)]}, "inputs"),
        (TaskSpec, {"inputs": [2**64]}, "inputs"),
        (TaskSpec, {"inputs": [float("nan")]}, "inputs"),
        (TaskSpec, {"metadata": {"k": [[0] * 100] * 101}}, "metadata"),
        (TaskSpec, {"metadata": {"when": object()}}, "metadata"),
        (TaskSpec, {"retries": 1e30}, "retries"),
        (TaskSpec, {"retries": 2**70}, "retries"),
        (TaskSpec, {"retries": MAX_RETRIES + 1}, "retries"),
        (TaskSpec, {"retries": -2}, "retries"),
        (TaskSpec, {"priority": 101}, "priority"),
        (TaskSpec, {"name": "x" * 257}, "name"),
        (TaskSpec, {"command": ["a\x00b"]}, "command.0"),
        (TaskSpec, {"env": {"A": "b\x00"}}, "env.A"),
        (TaskSpec, {"cli_args": ["x"] * 1025}, "cli_args"),
        (TaskSpec, {"schedule": "*" * 257}, "schedule"),
        (TaskSpec, {"timezone": "Europe/Berlin" * 10}, "timezone"),
        (TaskSpec, {"depends_on": ["a"] * 10_001}, "depends_on"),
        (TaskSpec, {"inputs_from": {"task": "a", "index": 2**40}}, "inputs_from.0.index"),
        (TaskSpec, {"constraints": {"cpu": float("inf")}}, "constraints.cpu"),
        (TaskSpec, {"constraints": {"memory_mb": 2**64}}, "constraints.memory_mb"),
        (
            TaskSpec,
            {"constraints": {"labels": {f"k{i}": "v" for i in range(65)}}},
            "constraints.labels",
        ),
        (
            TaskSpec,
            {"constraints": {"geo": {"lat": 0, "lon": 0, "radius_km": 1e308}}},
            "constraints.geo.radius_km",
        ),
        (WorkflowSpec, {"tasks": [{}], "metadata": nested(40)}, "metadata"),
        (JobSpec, {"tasks": [{}] * 10_001}, "tasks"),
        (
            ApplicationSpec,
            {"name": "a\x00", "services": [{"name": "s"}]},
            "name",
        ),
        (
            ApplicationSpec,
            {"name": "a", "services": [{"name": "s", "resources": {"cpu": 1e9}}]},
            "services.0.resources.cpu",
        ),
        (
            ApplicationSpec,
            {"name": "a", "services": [{"name": "s"}], "metadata": nested(33)},
            "metadata",
        ),
    ],
)
def test_out_of_bounds_input_is_refused_naming_the_field(
    model: type[BaseModel], body: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        model.model_validate(body)
    assert field_of(exc) == field


def test_the_bounds_themselves_are_accepted() -> None:
    spec = TaskSpec.model_validate(
        {
            "metadata": nested(MAX_DEPTH),
            "inputs": [0] * MAX_ITEMS,
            "retries": MAX_RETRIES,
            "priority": 100,
            "constraints": {"labels": {f"k{i}": "v" for i in range(64)}},
        }
    )
    assert spec.retries == MAX_RETRIES


@pytest.mark.parametrize("field", sorted(TaskPatch.model_fields))
def test_a_patch_field_may_be_left_out_but_never_null(field: str) -> None:
    assert TaskPatch.model_validate({}).model_dump(exclude_unset=True) == {}
    with pytest.raises(ValidationError) as exc:
        TaskPatch.model_validate({field: None})
    assert field_of(exc) == field


def test_the_patch_schema_shows_no_null_and_no_default() -> None:
    for name, prop in TaskPatch.model_json_schema()["properties"].items():
        assert "default" not in prop, name
        assert "null" not in str(prop), name


@pytest.mark.parametrize(
    ("model", "field"),
    [
        (TaskSpec, "name"),
        (TaskSpec, "inputs"),
        (TaskSpec, "env"),
        (TaskSpec, "retries"),
        (TaskSpec, "priority"),
        (TaskSpec, "metadata"),
        (TaskSpec, "timezone"),
        (TaskSpec, "limits"),
        (TaskSpec, "constraints"),
        (Constraints, "labels"),
        (WorkflowSpec, "metadata"),
        (ApplicationSpec, "services"),
    ],
)
def test_fields_stored_as_values_refuse_null(model: type[BaseModel], field: str) -> None:
    base: dict[str, Any] = {"tasks": [{}]} if model is WorkflowSpec else {}
    if model is ApplicationSpec:
        base = {"name": "a", "services": [{"name": "s"}]}
    with pytest.raises(ValidationError) as exc:
        model.model_validate({**base, field: None})
    assert field_of(exc) == field


def test_nesting_far_past_the_stack_is_refused_without_recursion() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="nested deeper"):
        check_json(deep)


def test_values_in_all_are_bounded() -> None:
    wide = [[0] * 100 for _ in range(MAX_NODES // 100)]
    with pytest.raises(ValueError, match=f"more than {MAX_NODES} values"):
        check_json(wide)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=40,
)


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


@given(json_values, st.integers(min_value=0, max_value=MAX_DEPTH + 4))
@settings(max_examples=200)
def test_json_within_the_bounds_is_accepted_and_deeper_is_not(value: Any, wrap: int) -> None:
    for _ in range(wrap):
        value = {"w": value}
    if depth_of(value) <= MAX_DEPTH:
        assert check_json(value) is value
    else:
        with pytest.raises(ValueError, match="nested deeper"):
            check_json(value)
