"""A deterministic in-memory runtime for manager, scheduler and worker tests.

The spec's ``entrypoint`` (or ``name`` when empty) picks the behaviour:

- ``fail``: ``failed`` with error ``fake failure``
- ``transient``: ``failed`` with ``transient=True``
- ``sleep``: runs until stopped (``cancelled``) or until ``limits.timeout_s`` (``failed``)
- ``invalid``: ``start`` raises :class:`~edgeplane.errors.TaskFailure`, like a bad spec
- anything else: ``completed`` with ``results`` equal to ``inputs``
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from edgeplane.errors import Conflict, NotFound, TaskFailure
from edgeplane.runtimes.base import Handle, Outcome, Runtime
from edgeplane.runtimes.spec import RunSpec


class FakeRuntime(Runtime):
    """Outcomes chosen by the task's name; ``started`` records the spec of every attempt it ran."""

    name: ClassVar[str] = "fake"

    def __init__(self) -> None:
        self.started: list[RunSpec] = []
        self._outcomes: dict[tuple[str, int], asyncio.Future[Outcome]] = {}
        self._timers: dict[tuple[str, int], asyncio.TimerHandle] = {}

    def fingerprint(self) -> dict[str, Any]:
        return {"behaviours": ["fail", "transient", "sleep", "invalid", "echo"]}

    async def start(self, spec: RunSpec, artifact: bytes | None) -> Handle:
        behaviour = spec.entrypoint or spec.name
        if behaviour == "invalid":
            raise TaskFailure("fake invalid task", field="name")
        key = (spec.task_id, spec.attempt)
        if key in self._outcomes:
            raise Conflict(f"task {spec.task_id} attempt {spec.attempt} is already running")
        self.started.append(spec)
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[Outcome] = loop.create_future()
        self._outcomes[key] = outcome
        if behaviour == "fail":
            outcome.set_result(Outcome("failed", error="fake failure"))
        elif behaviour == "transient":
            outcome.set_result(Outcome("failed", error="fake transient failure", transient=True))
        elif behaviour == "sleep":
            timeout = spec.limits.timeout_s
            if timeout is not None:
                timed_out = Outcome("failed", error=f"timeout after {timeout}s")
                self._timers[key] = loop.call_later(timeout, self._finish, key, timed_out)
        else:
            outcome.set_result(Outcome("completed", results=list(spec.inputs)))
        return Handle(spec.task_id, spec.attempt, self.name, {})

    async def wait(self, handle: Handle) -> Outcome:
        key = (handle.task_id, handle.attempt)
        outcome = self._outcomes.get(key)
        if outcome is None:
            raise NotFound(f"no fake attempt {handle.attempt} of task {handle.task_id} is known")
        return await asyncio.shield(outcome)

    async def release(self, handle: Handle) -> None:
        key = (handle.task_id, handle.attempt)
        outcome = self._outcomes.get(key)
        if outcome is not None and outcome.done():
            del self._outcomes[key]

    async def stop(self, handle: Handle) -> None:
        self._finish((handle.task_id, handle.attempt), Outcome("cancelled", error="stopped"))

    def inspect(self, handle: Handle) -> dict[str, Any]:
        outcome = self._outcomes.get((handle.task_id, handle.attempt))
        return {"running": outcome is not None and not outcome.done()}

    async def stats(self, handle: Handle) -> dict[str, float]:
        running = self.inspect(handle)["running"]
        return {"cpu_percent": 0.0, "rss_mb": 0.0} if running else {}

    async def recover(self, state: dict[str, Any]) -> Handle | None:
        """Nothing outlives the object, so there is never anything to re-attach to."""
        return None

    async def close(self) -> None:
        for key in list(self._outcomes):
            self._finish(key, Outcome("cancelled", error="stopped"))

    def _finish(self, key: tuple[str, int], outcome: Outcome) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        future = self._outcomes.get(key)
        if future is not None and not future.done():
            future.set_result(outcome)
