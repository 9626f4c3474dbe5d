"""Bad input to the CLI is exit code 2 with one line on stderr, never a traceback, and
nothing is sent: numbers out of range, spec files past the bounds, YAML bombs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_cli import WASM, FakeApi, invoke, roles

from edgeplane.limits import MAX_OFFSET, MAX_RETRIES
from yaml_fixtures import LAUGHS

__all__ = ["roles"]  # the fixture, from test_cli

#: The bomb in a task spec file.
TASK_LAUGHS = LAUGHS.replace("services:", "tasks:")


def nested(depth: int) -> dict[str, object]:
    doc: dict[str, object] = {}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


def assert_refused(args: list[str], message: str) -> None:
    api = FakeApi()
    result = invoke(api, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 6  # typer's usage box or one line
    assert "Traceback" not in result.output
    assert api.requests == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["task", "list", "--offset", str(2**63)], "--offset"),
        (["task", "list", "--offset", str(MAX_OFFSET + 1)], "--offset"),
        (["task", "list", "--limit", "0"], "--limit"),
        (["job", "list", "--offset", str(2**64)], "--offset"),
        (["workflow", "list", "--offset", "-1"], "--offset"),
        (["schedule", "list", "--offset", str(2**63)], "--offset"),
        (["worker", "list", "--offset", str(2**63)], "--offset"),
        (["cluster", "list", "--offset", str(2**63)], "--offset"),
        (["app", "list", "--offset", str(2**63)], "--offset"),
        (["task", "run", "x.wasm", "add", "--retries", str(MAX_RETRIES + 1)], "--retries"),
        (["task", "run", "x.wasm", "add", "--retries", "1e30"], "--retries"),
        (["task", "create", "x.wasm", "add", "--priority", "101"], "--priority"),
    ],
)
def test_numbers_out_of_range_exit_2(args: list[str], message: str) -> None:
    assert_refused(args, message)


def test_an_input_past_the_64_bit_range_exits_2(tmp_path: Path) -> None:
    module = tmp_path / "add.wasm"
    module.write_bytes(WASM)
    assert_refused(["task", "run", str(module), "add", str(2**64)], "inputs")


@pytest.mark.parametrize("kind", ["job", "workflow"])
def test_a_billion_laughs_spec_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    """It once crashed the CLI (SIGSEGV) after expanding for minutes."""
    spec = tmp_path / "lol.yaml"
    spec.write_text(TASK_LAUGHS)
    command = ["job", "create"] if kind == "job" else ["workflow", "apply"]
    assert_refused([*command, str(spec)], "aliases are expanded")  # (the test's timeout
    # bounds it: expanding the bomb took minutes)


def test_a_billion_laughs_descriptor_is_refused(tmp_path: Path) -> None:
    descriptor = tmp_path / "app.yaml"
    descriptor.write_text(LAUGHS)
    assert_refused(["app", "apply", str(descriptor)], "aliases are expanded")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("deep.json", json.dumps({"tasks": [{"metadata": nested(200)}]}), "tasks[0].metadata"),
        ("deep.yaml", json.dumps({"tasks": [{"metadata": nested(35)}]}), "tasks[0].metadata"),
        ("bottomless.json", "[" * 100_000, "bad JSON"),
        ("bottomless.yaml", "[" * 100_000, "nested deeper than"),
        ("nan.json", '{"tasks": [{"inputs": [NaN]}]}', "bad JSON"),
        ("retries.yaml", "tasks: [{retries: 1e30}]", "tasks[0].retries"),
        ("nul.yaml", 'tasks: [{env: {A: "\\0"}}]', "tasks[0].env.A"),
        ("cycle.yaml", "tasks: &t [*t]", "inside its own anchor"),
    ],
)
def test_a_spec_past_the_bounds_exits_2_naming_where(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    spec = tmp_path / name
    spec.write_text(text)
    assert_refused(["job", "create", str(spec)], message)


def test_a_billion_laughs_config_file_is_refused(roles: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "edgeplane.yaml"
    config.write_text(TASK_LAUGHS)
    result = invoke(FakeApi(), "up", "--config", str(config))
    assert result.exit_code == 2, result.output
    assert "aliases are expanded" in result.stderr
    assert "up" not in roles


def test_the_client_refuses_a_body_that_is_not_json() -> None:
    from edgeplane.client import Client
    from edgeplane.errors import Invalid

    api = FakeApi()
    with (
        Client("http://x", "t", transport=httpx.MockTransport(api)) as client,
        pytest.raises(Invalid) as exc,
    ):
        client.create_task({"name": "add", "inputs": [2**64]})
    assert exc.value.field == "body"
    assert api.requests == []
