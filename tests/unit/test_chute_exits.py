"""The exit watcher names an exit by its cause: an OOM kill of a service's main
process is counted in its cgroup a moment before the process is gone, so the check
that sees the kill may still see it alive, and the next one sees the exit
(``chutes/node.py``; CI once told that exit as "its main process ended")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgeplane.chutes import manifest
from edgeplane.chutes import node as node_mod
from edgeplane.chutes.node import Life, Node

SPEC = manifest.parse(
    {
        "name": "ev",
        "version": "1",
        "services": [{"name": "main", "image": "busybox"}],
        "resources": {"memory_mb": 16},
    }
)


async def checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seen: list[tuple[bool, int]]
) -> list[tuple[str, str | None]]:
    """Run one check per (alive, OOM kills counted) and return what was reported."""
    node = Node(tmp_path / "w", tmp_path / "images", runc="/bin/false")
    told: list[tuple[str, str | None]] = []
    now: dict[str, Any] = {}

    async def report(kind: str, name: str = "", **fields: Any) -> None:
        told.append((kind, fields.get("detail")))

    async def running(cid: str) -> tuple[bool, int]:
        return now["alive"], 7

    monkeypatch.setattr(node_mod, "_same_process", lambda life: now["alive"])
    monkeypatch.setattr(node_mod, "_oom_kills", lambda cid: now["ooms"])
    monkeypatch.setattr(node, "_report", report)
    monkeypatch.setattr(node, "_running", running)
    monkeypatch.setattr(node, "_load", lambda name: {"run": True})
    node._lives["c"] = Life(7, 1.0, 0)
    for now["alive"], now["ooms"] in seen:
        await node._check_service("ev", "main", "c", SPEC)
    return told


async def test_a_kill_seen_before_the_exit_names_the_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    told = await checks(tmp_path, monkeypatch, [(True, 0), (True, 1), (False, 1)])
    assert [kind for kind, _ in told] == ["oom_killed", "exited"]
    assert told[-1][1] == "OOM-killed"


async def test_a_kill_and_the_exit_seen_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    told = await checks(tmp_path, monkeypatch, [(True, 0), (False, 1)])
    assert told == [
        ("oom_killed", "1 process(es) OOM-killed at the memory limit of 16 MB; the service exited"),
        ("exited", "OOM-killed"),
    ]


async def test_a_child_killed_long_before_an_exit_is_not_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    told = await checks(tmp_path, monkeypatch, [(True, 1), (True, 1), (False, 1)])
    assert told == [
        ("oom_killed", "1 process(es) OOM-killed at the memory limit of 16 MB"),
        ("exited", "its main process ended"),
    ]
