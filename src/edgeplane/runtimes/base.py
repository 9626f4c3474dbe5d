"""The one runtime interface (DESIGN §6.2), modelled on Nomad's task drivers.

A runtime turns a :class:`~edgeplane.runtimes.spec.RunSpec` into a running unit of work
and reports an :class:`Outcome`. Every runtime passes the shared conformance suite in
``tests/integration/test_runtime_conformance.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from edgeplane.model.service import HealthCheck
from edgeplane.runtimes.spec import RunSpec

OutcomeState = Literal["completed", "failed", "cancelled"]

#: Captured stdout/stderr is cut to this many characters (the tail is kept).
MAX_LOG_CHARS = 64 * 1024


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended."""

    state: OutcomeState
    results: Any = None
    error: str | None = None
    transient: bool = False
    #: a short code of why it failed (``TaskFailure.reason``), the task's ``reason``
    reason: str | None = None
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""


@dataclass
class Handle:
    """A started task. ``state`` is JSON-serialisable so a restarted worker can recover."""

    task_id: str
    attempt: int
    runtime: str
    state: dict[str, Any] = field(default_factory=dict)


class Runtime(ABC):
    name: ClassVar[str]
    #: Whether an attempt outlives the worker process that started it (host and container
    #: tasks do; in-process wasm calls die with it), so a restarted worker can re-attach.
    recoverable: ClassVar[bool] = False

    @abstractmethod
    def fingerprint(self) -> dict[str, Any] | None:
        """What this runtime offers on this machine, or None when it cannot run here."""

    @abstractmethod
    async def start(self, spec: RunSpec, artifact: bytes | None) -> Handle:
        """Start one attempt; ``artifact`` holds the bytes of ``spec.artifact`` when the
        worker has them. Bad specs raise :class:`~edgeplane.errors.TaskFailure`."""

    async def start_held(self, spec: RunSpec, artifact: bytes | None) -> Handle:
        """Start one attempt as :meth:`start` does, but hold back its command until
        :meth:`begin`: the worker saves the handle in between, so that no command runs
        that a restarted worker would not know of. If the worker process dies before
        :meth:`begin`, the command never runs (``recover`` of the handle's state then ends
        ``failed``, transient), and nothing of the attempt runs on.

        Default (a runtime whose attempts die with the worker: nothing to hold back):
        :meth:`start`."""
        return await self.start(spec, artifact)

    async def begin(self, handle: Handle) -> None:  # noqa: B027 - optional hook
        """Let an attempt :meth:`start_held` started run its command. Idempotent; nothing
        for an attempt already stopped or ended. Default: nothing (already running)."""

    @abstractmethod
    async def wait(self, handle: Handle) -> Outcome:
        """Wait for the attempt to end; never raises for a task's own failure."""

    @abstractmethod
    async def stop(self, handle: Handle) -> None:
        """Stop the attempt; its ``wait`` then returns a ``cancelled`` outcome. Idempotent."""

    @abstractmethod
    def inspect(self, handle: Handle) -> dict[str, Any]:
        """Cheap status: at least ``{"running": bool}``."""

    @abstractmethod
    async def stats(self, handle: Handle) -> dict[str, float]:
        """Resource usage of a running attempt (cpu_percent, rss_mb, …); {} when unknown."""

    @abstractmethod
    async def recover(self, state: dict[str, Any]) -> Handle | None:
        """Re-attach to an attempt a previous worker process started, given its handle's
        ``state``: a handle whose ``wait`` says how the attempt ends (or how it ended while
        no worker watched it), or None when nothing of the attempt is left."""

    async def probe(self, handle: Handle, check: HealthCheck) -> str | None:
        """Run ``check`` against the running attempt once: None when healthy, else why
        not. Default: this runtime has no health checks (the API refuses them for it)."""
        return f"the {self.name} runtime has no health checks"

    def log_files(self, handle: Handle) -> dict[str, Path]:
        """Where the attempt's ``stdout`` and ``stderr`` are being written, for following
        them live ({}: this runtime keeps them elsewhere; they come with the outcome)."""
        return {}

    async def release(self, handle: Handle) -> None:  # noqa: B027 - optional hook
        """Forget an attempt that has ended, once the worker has saved its final event.

        Until then a runtime whose attempts outlive the worker keeps what ``recover``
        needs to say how the attempt ended (a host attempt's directory with its exit
        status and logs), so that a worker killed between the attempt's end and the save
        still reports the real outcome after its restart. Given a handle it does not know
        (a restarted worker releasing an attempt whose final event its previous process
        had saved), it removes what the handle's ``state`` names; given one with an empty
        ``state`` (the worker died before its :meth:`start_held` returned), what is left of
        that attempt whose command never ran. Afterwards ``wait``
        raises :class:`~edgeplane.errors.NotFound` and ``recover`` of that state is None.
        Idempotent; an attempt still running is left alone. Default: nothing to keep."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the runtime holds (threads, caches)."""
