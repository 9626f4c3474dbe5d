"""A worker killed (SIGKILL) at each step of a host task's start runs its command at most
once, and a restarted worker learns which: the command waits at its gate until the
attempt's handle is on disk (``Runtime.start_held``/``begin``).

Each case starts a real worker agent in a child process that kills itself at one step,
then recovers from what it left, as a restarted worker does, and counts the command's
side effect.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from edgeplane.clock import SystemClock
from edgeplane.runtimes import Handle, HostRuntime
from edgeplane.runtimes.supervised import NEVER_RAN, UNSTARTED
from edgeplane.worker import recovery
from edgeplane.worker.handles import HandleStore
from faults.procs import wait_until

pytestmark = pytest.mark.timeout(60)

CHILD = r'''
import asyncio, os, signal, sys
from pathlib import Path
from edgeplane.protocol import Assignment
from edgeplane.runtimes import Handle, HostRuntime
from edgeplane.worker.agent import WorkerAgent, WorkerOptions, _Run, run_spec
from edgeplane.worker.handles import HandleStore

step, data, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def killing(original, nth, before):
    """``original``, killing the process before or after its ``nth`` call."""
    calls = []
    def patched(*args, **kwargs):
        calls.append(1)
        if before and len(calls) == nth:
            die()
        result = original(*args, **kwargs)
        if not before and len(calls) == nth:
            die()
        return result
    return patched

def killing_async(original):
    async def patched(*args, **kwargs):
        result = await original(*args, **kwargs)
        die()
        return result
    return patched

async def main():
    host = HostRuntime(base_dir=data / "host")
    agent = WorkerAgent(WorkerOptions("w1", "mqtt://127.0.0.1:1", data), {"host": host})
    if step == "before_intent":  # the first save is the intent's, the second the handle's
        agent.handles.save = killing(agent.handles.save, 1, before=True)
    elif step == "after_intent":
        agent.handles.save = killing(agent.handles.save, 1, before=False)
    elif step == "after_start_held":
        host.start_held = killing_async(host.start_held)
    elif step == "after_handle":
        agent.handles.save = killing(agent.handles.save, 2, before=False)
    elif step == "after_begin":
        host.begin = killing_async(host.begin)
    command = ["sh", "-c", 'echo ran >> "$0"', out]
    spec = run_spec(Assignment(task_id="t1", attempt=1, runtime="host", name="t", command=command))
    await agent._start(_Run(spec=spec), 0.0)
    await asyncio.Event().wait()  # not reached: every step kills the process

asyncio.run(main())
'''


def _ran(out: Path) -> int:
    return len(out.read_text().split()) if out.exists() else 0


def _exits(data: Path) -> list[str]:
    found = []
    for exit_file in (data / "host").glob("*/exit"):
        found.append(exit_file.read_text())
    return found


@pytest.mark.parametrize(
    ("step", "error", "runs"),
    [
        # nothing on disk, nothing started: the manager's hello rule re-places the task
        ("before_intent", "", 0),
        # an intent, nothing started: reported as never run (transient, tried again)
        ("after_intent", recovery.NEVER_STARTED, 0),
        # an intent and a process held at its gate: that exits unstarted, its directory
        # is removed, the attempt reported as never run
        ("after_start_held", recovery.NEVER_STARTED, 0),
        # the handle is saved, the gate not opened: recovered, it never ran (transient)
        ("after_handle", NEVER_RAN, 0),
        # the command was let run: recovered, it runs once and completes
        ("after_begin", None, 1),
    ],
)
def test_a_worker_killed_at_each_step_of_a_start_runs_the_command_at_most_once(
    tmp_path: Path, step: str, error: str | None, runs: int
) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, step, str(data), str(out)], timeout=30, check=False
    )
    assert child.returncode == -9, "the worker was not killed at its step"
    if step != "before_save" or (data / "host").exists():
        # whatever process it left ends: by its command's status or at its gate
        wait_until(lambda: all(e.endswith("\n") for e in _exits(data)), "the attempt's end", 20)
    if runs == 0:
        assert all(e == UNSTARTED for e in _exits(data))
    records = HandleStore(data / "handles").load()
    assert len(records) == (0 if error == "" else 1)

    async def recover() -> list[str | None]:
        host = HostRuntime(base_dir=data / "host", poll_s=0.02)
        found = await recovery.recover(records, {"host": host}, {}, SystemClock())
        ends = [(await host.wait(r.handle)) for r in found.resumed]
        # what the agent does once the final events are saved
        for record in found.finals:
            await host.release(Handle("t1", 1, "host", record.state))
        for resumed in found.resumed:
            await host.release(resumed.handle)
        await host.close()
        return [f.final.error for f in found.finals if f.final] + [o.error for o in ends]

    errors = asyncio.run(recover())
    assert errors == ([] if error == "" else [error])
    assert _ran(out) == runs
    # nothing is left behind once released (the directory of an attempt that never ran)
    assert list((data / "host").iterdir()) == [] if (data / "host").exists() else True
