"""The change queue: every mutating operation on a node is a change, run one at a time.

A change is a plan of :class:`Step` s, each with an ``undo``. :func:`execute` (pure: it
knows nothing of chutes or files) runs the steps in order; when one fails it undoes the
steps already done — and the failing one, which may have half happened — in reverse, so
the node is as before. A step without an undo is a point of no return: once it has begun,
the change can only go forward.

:class:`ChangeQueue` persists every change as a journal file ``<dir>/<seq>-<id>.json``,
rewritten (fsync'd, renamed, directory fsync'd) at every step's transition. A worker
killed mid-change finds the change ``running`` at start (:meth:`ChangeQueue.start`) and
rolls it back, or forward when it had passed a point of no return. So every ``do`` and
``undo`` must be idempotent and an ``undo`` must cope with a ``do`` that half happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from edgeplane.clock import Clock, SystemClock
from edgeplane.errors import EdgeplaneError, NotFound

log = logging.getLogger(__name__)

ChangeState = Literal["queued", "running", "done", "failed", "rolled_back"]
StepState = Literal["pending", "running", "done", "failed", "undone"]
TERMINAL = ("done", "failed", "rolled_back")
#: Finished changes kept in the journal (the oldest are removed past this).
KEEP_FINISHED = 200
MAX_LOG = 200

Action = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    name: str
    do: Action
    #: None: a point of no return (see the module's doc)
    undo: Action | None = None


class StepRecord(BaseModel):
    name: str
    state: StepState = "pending"


class Change(BaseModel):
    id: str
    seq: int
    kind: str
    chute: str
    #: what the planner needs to rebuild the plan after a restart
    args: dict[str, Any] = Field(default_factory=dict)
    #: where an install's or update's manifest came from: ``{"store": "NAME@VERSION",
    #: "digest": "sha256:…"}`` for the chute store's, None for one given as it is
    source: dict[str, str] | None = None
    #: an install's or update's ``oci://`` images as its "prepare images" step pinned
    #: them: service → ``oci://HOST/REPO:TAG@sha256:…`` (the manifest digest the tag named
    #: then); every later start of this version runs exactly that
    images: dict[str, str] = Field(default_factory=dict)
    state: ChangeState = "queued"
    steps: list[StepRecord] = Field(default_factory=list)
    log: list[str] = Field(default_factory=list)
    error: str | None = None
    created: float = 0.0
    finished: float | None = None

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"args", "seq"})


Report = Callable[[], Awaitable[None]]


def _say(change: Change, line: str) -> None:
    change.log.append(line)
    del change.log[:-MAX_LOG]


def _why(exc: BaseException) -> str:
    if not isinstance(exc, EdgeplaneError):
        return f"{type(exc).__name__}: {exc}"
    # a reason code (artifact_not_found, registry_unreachable, …) leads, as a task's does
    return exc.detail if exc.reason is None else f"{exc.reason}: {exc.detail}"


async def execute(
    change: Change, steps: list[Step], report: Report, *, resume: bool = False
) -> None:
    """Run ``steps`` (recorded in ``change.steps``), calling ``report`` after every change
    of state. ``resume``: the change was cut short by a crash, ``change.steps`` says how
    far it got; it is rolled back, or forward past a point of no return."""
    if not resume:
        change.steps = [StepRecord(name=s.name) for s in steps]
    change.state = "running"
    await report()
    start = 0
    if resume:
        begun = [i for i, r in enumerate(change.steps) if r.state in ("running", "done", "failed")]
        forward = any(steps[i].undo is None for i in begun)
        if not forward:
            _say(change, "the worker stopped mid-change: rolling back")
            await _undo(change, steps, begun, report)
            change.state = "rolled_back"
            change.error = change.error or "interrupted by a worker restart"
            await report()
            return
        _say(change, "the worker stopped mid-change past its point of no return: finishing it")
        start = next((i for i, r in enumerate(change.steps) if r.state != "done"), len(steps))
    for i in range(start, len(steps)):
        step, record = steps[i], change.steps[i]
        record.state = "running"
        await report()
        try:
            await step.do()
        except Exception as exc:  # every failure of a step rolls the change back
            record.state = "failed"
            change.error = f"{step.name}: {_why(exc)}"
            _say(change, f"{step.name} failed: {_why(exc)}")
            await report()
            if any(steps[j].undo is None for j in range(i)):
                change.state = "failed"  # past a point of no return: nothing to undo to
            else:
                await _undo(change, steps, list(range(i + 1)), report)
                change.state = "rolled_back"
            await report()
            return
        record.state = "done"
        _say(change, f"{step.name} done")
        await report()
    change.state = "done"
    await report()


async def _undo(change: Change, steps: list[Step], indexes: list[int], report: Report) -> None:
    for i in reversed(indexes):
        step, record = steps[i], change.steps[i]
        if step.undo is None:
            continue
        try:
            await step.undo()
        except Exception as exc:  # keep undoing the rest: the most we can put back
            _say(change, f"undo of {step.name} failed: {_why(exc)}")
            log.error("undo failed", extra={"change": change.id, "step": step.name})
            continue
        if record.state != "failed":  # the failed step keeps saying why the change failed
            record.state = "undone"
        _say(change, f"{step.name} undone")
        await report()


Planner = Callable[[Change], list[Step]]
#: told of every change that ended (the node reports it to its manager)
Ended = Callable[[Change], Awaitable[None]]


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` at ``path`` whole or not at all, on disk when this returns."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class ChangeQueue:
    """Changes persisted in ``directory`` and executed one at a time in submission order.
    ``planner`` turns a change into its steps (again after a restart)."""

    def __init__(
        self,
        directory: Path,
        planner: Planner,
        *,
        clock: Clock | None = None,
        on_end: Ended | None = None,
    ) -> None:
        self.directory = directory
        self.planner = planner
        self.on_end = on_end
        self._clock = clock or SystemClock()
        self._changes: dict[str, Change] = {}
        self._pending: asyncio.Queue[str] = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._runner: asyncio.Task[None] | None = None
        self._seq = 0

    async def start(self) -> None:
        """Load the journal; finish or roll back a change a crash cut short, then run the
        queued ones in order."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        found: list[Change] = []
        for path in self.directory.glob("*.json"):
            try:
                found.append(Change.model_validate_json(path.read_bytes()))
            except ValueError:
                log.error("unreadable change journal", extra={"path": str(path)})
        found.sort(key=lambda c: c.seq)
        for change in found:
            self._changes[change.id] = change
            self._seq = max(self._seq, change.seq)
        for change in found:
            if change.state == "running":
                await self._run(change, resume=True)
        for change in found:
            if change.state == "queued":
                self._pending.put_nowait(change.id)
        self._runner = asyncio.create_task(self._loop(), name="chute-changes")

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def submit(
        self,
        kind: str,
        chute: str,
        args: dict[str, Any] | None = None,
        source: dict[str, str] | None = None,
    ) -> Change:
        self._seq += 1
        change = Change(
            id=secrets.token_hex(8),
            seq=self._seq,
            kind=kind,
            chute=chute,
            args=args or {},
            source=source,
            created=self._clock.now(),
        )
        self._changes[change.id] = change
        await self._save(change)
        self._pending.put_nowait(change.id)
        return change

    def get(self, change_id: str) -> Change:
        found = self._changes.get(change_id)
        if found is None:
            raise NotFound(f"no change {change_id!r}")
        return found

    def active(self, chute: str) -> bool:
        """Whether a change for ``chute`` is queued or running."""
        return any(c.chute == chute and c.state not in TERMINAL for c in self._changes.values())

    async def wait(self, change_id: str) -> Change:
        """The change once it has ended (callers bound the wait with ``asyncio.timeout``)."""
        change = self.get(change_id)
        async with self._changed:
            await self._changed.wait_for(lambda: change.state in TERMINAL)
        return change

    async def follow(self, change_id: str) -> AsyncIterator[dict[str, Any]]:
        """The change's public view now and after every transition, until it ends."""
        change = self.get(change_id)
        last: dict[str, Any] | None = None
        while True:
            seen = last

            def moved(seen: dict[str, Any] | None = seen) -> bool:
                return change.public() != seen

            async with self._changed:
                await self._changed.wait_for(moved)
                last = change.public()
            yield last
            if change.state in TERMINAL:
                return

    async def _loop(self) -> None:
        while True:
            change_id = await self._pending.get()
            change = self._changes[change_id]
            if change.state == "queued":
                await self._run(change, resume=False)

    async def _run(self, change: Change, *, resume: bool) -> None:
        async def report() -> None:
            if change.state in TERMINAL and change.finished is None:
                change.finished = self._clock.now()
            await self._save(change)

        try:
            steps = self.planner(change)
        except Exception as exc:
            change.state, change.error = "failed", _why(exc)
            _say(change, f"cannot plan: {_why(exc)}")
            await report()
            await self._ended(change)
            return
        if resume and [s.name for s in steps] != [r.name for r in change.steps]:
            change.state, change.error = "failed", "the plan changed across a restart"
            await report()
            await self._ended(change)
            return
        await execute(change, steps, report, resume=resume)
        log.info("change %s", change.state, extra={"change": change.id, "kind": change.kind})
        await self._ended(change)
        await self._prune()

    async def _ended(self, change: Change) -> None:
        if self.on_end is None:
            return
        try:
            await self.on_end(change)
        except Exception:  # a report that failed must not stop the queue
            log.exception("reporting a change's end failed", extra={"change": change.id})

    async def _save(self, change: Change) -> None:
        path = self.directory / f"{change.seq:08d}-{change.id}.json"
        await asyncio.to_thread(write_atomic, path, change.model_dump_json().encode())
        async with self._changed:
            self._changed.notify_all()

    async def _prune(self) -> None:
        done = sorted(
            (c for c in self._changes.values() if c.state in TERMINAL), key=lambda c: c.seq
        )
        for change in done[:-KEEP_FINISHED]:
            del self._changes[change.id]
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{change.seq:08d}-{change.id}.json").unlink()
