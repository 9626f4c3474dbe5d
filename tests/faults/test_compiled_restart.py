"""A restarted ``edgeplane worker`` process deserialises the module it compiled before
instead of compiling it again; a damaged entry is removed and rebuilt, and the task runs.

Compilations and loads are counted from the worker's own log lines ("compiled module",
"loaded compiled module from disk", "compiled module removed").
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

import wasm_fixtures
from edgeplane.transport import free_port
from faults.procs import TERMINAL, Api, Lab, Role, wait_until

pytestmark = pytest.mark.timeout(120)

MODULE = base64.b64encode(wasm_fixtures.math_wasm()).decode()


def counts(worker: Role) -> tuple[int, int, int]:
    """(compiled, loaded, removed) as the worker's log says, over all its runs."""
    text = worker.log.read_text(errors="replace")
    return (
        len(re.findall(r"(?<!loaded )compiled module(?! (from|removed))", text)),
        len(re.findall(r"loaded compiled module from disk", text)),
        len(re.findall(r"compiled module removed", text)),
    )


def run_add(api: Api, worker: Role, a: int, b: int) -> None:
    (task_id,) = api.submit([{"name": "add", "file": MODULE, "inputs": [a, b], "start": True}])

    def finished() -> dict[str, object] | None:
        task = api.http.get(f"/tasks/{task_id}").json()
        return task if task["state"] in TERMINAL else None

    task = wait_until(finished, f"task {task_id} to end", 60, watch=[worker])
    assert task["state"] == "completed", task
    assert task["results"] == [a + b], task


def test_restarted_worker_loads_instead_of_compiling(lab: Lab) -> None:
    port = free_port()
    manager = lab.manager(port).start()
    worker = lab.worker("w1").start()
    api = lab.api(port)
    api.wait_healthy(manager)
    api.wait_workers(["w1"], watch=[manager, worker])

    run_add(api, worker, 1, 2)
    assert counts(worker) == (1, 0, 0), lab.logs()

    worker.stop()
    worker.start()
    api.wait_workers(["w1"], watch=[manager, worker])
    run_add(api, worker, 3, 4)
    assert counts(worker) == (1, 1, 0), lab.logs()

    # Damage the entry on disk: the next run removes it, compiles again, and still runs.
    worker.stop()
    cache_dir: Path = lab.root / "w1" / "worker" / "modules" / "wasm"
    (entry,) = cache_dir.glob("*.cwasm")
    entry.write_bytes(entry.read_bytes()[:100] + b"garbage")
    worker.start()
    api.wait_workers(["w1"], watch=[manager, worker])
    run_add(api, worker, 5, 6)
    assert counts(worker) == (2, 1, 1), lab.logs()
    assert worker.running
