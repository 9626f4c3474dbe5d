"""A worker's chutes managed through the manager (docs/chutes.md, "Through the control
plane"): a call becomes a signed ``chute.request`` on the worker's ``cmd`` topic, and the
worker's ``chute.response`` on its ``events`` topic, matched by id, becomes the answer.

Workers dial out and are never called: a worker the manager holds offline is refused at
once (503 naming it), and one that does not answer in time is too. But the worker's chute
events (``chute.events``, ``chute_states.py``) keep the manager's view of its chutes, so
a read of them answers with the last known state, marked stale with the time of the
worker's last contact, instead of failing.

A chute's live output (``logs?follow=true``) is asked of the worker with
``chute.logs.follow``, renewed while someone follows, and comes back as ``chute.logs``
messages, routed by the follow's id to its reader (:class:`LogFollow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeplane.errors import EdgeplaneError, Invalid, NotFound, Unavailable
from edgeplane.manager.chute_states import apply
from edgeplane.manager.core import Core
from edgeplane.manager.registry import WorkerEntry
from edgeplane.manager.series import DEFAULT_POINTS, MAX_POINTS, in_range
from edgeplane.protocol import (
    AckChuteEvents,
    ChuteEvents,
    ChuteLogs,
    ChuteRequest,
    ChuteResponse,
    FollowChuteLogs,
)

log = logging.getLogger(__name__)

#: how long a call waits for the worker's answer (an install answers at once with its
#: change id; the change itself runs on the node)
TIMEOUT_S = 20.0
#: how long a read of the chutes waits for the worker before it answers with the state
#: last reported (marked stale) instead
READ_TIMEOUT_S = 5.0
#: chunks of output a follower may have waiting; past it the newest are dropped (a gap)
FOLLOW_QUEUE = 256
#: live follows of chute logs at once: in all, and of one worker
MAX_FOLLOWS = 64
MAX_FOLLOWS_PER_WORKER = 8

_SHOW = re.compile(r"^/chutes/([a-z0-9][a-z0-9-]{0,39})$")
#: a chute's usage series: answered by the manager, which keeps them (``series.py``)
USAGE = re.compile(r"^/chutes/([a-z0-9][a-z0-9-]{0,39})/metrics$")


class WorkerProblem(EdgeplaneError):
    """The worker's own problem+json answer, passed on with its status."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        field = body.get("field")
        super().__init__(
            str(body.get("detail") or body.get("title") or "refused by the worker"),
            field=field if isinstance(field, str) else None,
        )
        self.status = status
        self.title = str(body.get("title") or "Refused by the worker")


def problem_body(exc: EdgeplaneError) -> dict[str, Any]:
    """An error as the problem+json body a member answers with."""
    body: dict[str, Any] = {"title": exc.title, "status": exc.status, "detail": exc.detail}
    if exc.field:
        body["field"] = exc.field
    return body


@dataclass(eq=False)
class LogFollow:
    """One reader of a chute's live output: what its worker (or cluster) sent, bounded."""

    id: str
    worker_id: str
    #: the member whose ``chute.logs`` feed it (the worker; at a root, its cluster)
    member_id: str
    queue: asyncio.Queue[ChuteLogs] = field(default_factory=lambda: asyncio.Queue(FOLLOW_QUEUE))
    #: chunks dropped because the reader was slow
    lost: int = 0
    #: why the follow ended, once the sender said so (kept here when the queue is full)
    ended: str | None = None


@dataclass
class _Relay:
    """A follow a cluster makes for its root: chunks go up, until it expires."""

    member_id: str
    deliver: Callable[[ChuteLogs], None]
    until: float


class ChuteCalls:
    #: what the members asked are (a root asks clusters)
    MEMBER = "worker"

    def __init__(self, core: Core, timeout_s: float = TIMEOUT_S) -> None:
        self.core = core
        self.timeout_s = timeout_s
        self.read_timeout_s = min(READ_TIMEOUT_S, timeout_s)
        self._waiting: dict[str, tuple[str, asyncio.Future[ChuteResponse]]] = {}
        #: the (stream, seq) of each worker's chute events stored, so acked
        self._stored: dict[str, tuple[str, int]] = {}
        #: what is sent in tasks of its own (acks, stops of follows)
        self._commits: set[asyncio.Task[None]] = set()
        self._follows: dict[str, LogFollow] = {}
        self._relays: dict[str, _Relay] = {}
        #: the API is stopping: open streams end (its server waits for them)
        self.closing = False

    def close(self) -> None:
        """End every open stream of chutes (log follows, change progress) at its next
        tick: the API's server waits for open responses when it stops."""
        self.closing = True

    # ------------------------------------------------------------------ calls
    async def call(
        self,
        worker_id: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        """The worker's answer to one Edge API call; its 4xx/5xx as :class:`WorkerProblem`.
        A read of its chutes while it is offline (or does not answer within
        :data:`READ_TIMEOUT_S`) answers with the state it last reported, marked stale."""
        entry = self.core.registry.get(worker_id)
        if entry is None:
            raise NotFound(f"worker {worker_id} not found", field="id")
        usage = USAGE.match(path) if method == "GET" else None
        if usage is not None:  # kept here, so answered while the worker is offline too
            return self._usage(worker_id, entry, usage.group(1), query or {})
        kept = self._kept_read(entry, method, path)
        if not entry.online:
            if kept is not None:
                return kept()
            raise Unavailable(
                f"worker {worker_id} is offline: its chutes cannot be reached now", field="id"
            )
        timeout = self.timeout_s if kept is None else self.read_timeout_s
        request = ChuteRequest(
            id=secrets.token_hex(8), method=method, path=path, query=query or {}, body=body
        )
        try:
            response = await self.ask(worker_id, request, timeout)
        except Unavailable:
            if kept is not None:
                return kept()
            raise
        if response.status >= 400:
            found = response.body if isinstance(response.body, dict) else {}
            raise WorkerProblem(response.status, found)
        if method == "GET" and (path == "/chutes" or _SHOW.match(path)):
            return _marked(response.body, stale=False)  # answered by the worker itself
        return response.body

    async def ask(
        self, member_id: str, request: ChuteRequest, wait_s: float | None = None
    ) -> ChuteResponse:
        """Send ``request`` to the member and wait for its answer, ``wait_s`` at most
        (default :attr:`timeout_s`; Unavailable if none came)."""
        wait_s = self.timeout_s if wait_s is None else wait_s
        answer: asyncio.Future[ChuteResponse] = asyncio.get_running_loop().create_future()
        self._waiting[request.id] = (member_id, answer)
        try:
            await self.core.send(member_id, "chute.request", request, qos=1)
            return await asyncio.wait_for(answer, wait_s)
        except TimeoutError:
            raise Unavailable(
                f"{self.MEMBER} {member_id} did not answer within {wait_s:g} s", field="id"
            ) from None
        finally:
            self._waiting.pop(request.id, None)

    def on_response(self, member_id: str, response: ChuteResponse) -> bool:
        """Match an answer to its call; False when no call waits for it (late, or forged)."""
        found = self._waiting.get(response.id)
        if found is None or found[0] != member_id or found[1].done():
            return False
        found[1].set_result(response)
        return True

    def reachable(self, worker_id: str) -> bool:
        """Whether the worker is online now (a live follow ends when it is not)."""
        entry = self.core.registry.get(worker_id)
        return entry is not None and entry.online

    def _usage(
        self, worker_id: str, entry: WorkerEntry, chute: str, query: dict[str, str]
    ) -> dict[str, Any]:
        """A chute service's usage series (a ``UsageSeries``, docs/metrics.md): ``service``
        (default: the chute's first, as last reported), ``since``, ``until``, ``points``."""
        series = self.core.series
        reported = entry.worker.chutes
        found = next(
            (d for d in (reported.items if reported else ()) if d.get("name") == chute), None
        )
        declared = [str(s.get("name")) for s in (found or {}).get("services", ())]
        kept = series.chute_services(worker_id, chute)
        if found is None and not kept:
            raise NotFound(f"no chute {chute!r} on worker {worker_id}", field="name")
        service = query.get("service") or (declared or kept)[0]
        if service not in declared and service not in kept:
            raise NotFound(f"chute {chute!r} has no service {service!r}", field="service")
        since, until = _number(query, "since"), _number(query, "until")
        asked = _number(query, "points")
        points = DEFAULT_POINTS if asked is None else int(asked)
        if not 1 <= points <= MAX_POINTS:
            raise Invalid(f"points: 1 to {MAX_POINTS}", field="points")
        samples, downsampled = in_range(
            series.chute(worker_id, chute, service), since, until, points
        )
        return {
            "id": f"{worker_id}/{chute}/{service}",
            "kind": "chute",
            "samples": [s.model_dump(mode="json") for s in samples],
            "downsampled": downsampled,
        }

    # ------------------------------------------------------------------ kept state
    def _kept_read(self, entry: WorkerEntry, method: str, path: str) -> Callable[[], Any] | None:
        """For a read of the chutes the manager keeps a state of: how to answer it from
        that state, marked stale (None: not such a read, or nothing reported yet)."""
        kept = entry.worker.chutes
        if method != "GET" or kept is None:
            return None
        stale = {
            "stale": True,
            "last_contact": entry.worker.last_seen,
            "reported_at": kept.reported_at,
        }
        if path == "/chutes":
            return lambda: [{**doc, **stale} for doc in kept.items]
        shown = _SHOW.match(path)
        if shown is None:
            return None
        name = shown.group(1)

        def one() -> Any:
            for doc in kept.items:
                if doc.get("name") == name:
                    return {**doc, **stale}
            raise NotFound(
                f"no chute {name!r} on worker {entry.worker.id} as it last reported "
                "(it cannot be reached now)",
                field="name",
            )

        return one

    def on_events(self, member_id: str, batch: ChuteEvents) -> None:
        """Apply a worker's chute events (each once, in order), store them, then ack."""
        core = self.core
        if batch.worker_id != member_id:
            core.stats.foreign_chute_events += 1
            log.warning(
                "chute events refused: they name another worker",
                extra={"member": member_id, "named": batch.worker_id},
            )
            return
        entry = core.registry.get(member_id)
        if entry is None:
            return  # not registered (yet): sent again after its hello
        before = entry.worker.chutes
        if before is not None and member_id not in self._stored:
            self._stored[member_id] = (before.stream, before.seq)  # as loaded from the store
        applied = apply(before, batch, core.clock.now())
        if applied.hole:
            log.info("chute events past a hole: waiting for the rest", extra={"member": member_id})
        for event in applied.events:
            core.stats.chute_events += 1
            log.info(
                "chute event",
                extra={
                    "worker_id": member_id,
                    "seq": event.seq,
                    "kind": event.kind,
                    "chute": event.chute,
                    "service": event.service,
                    "detail": event.detail,
                },
            )
            if event.kind == "deleted":
                core.series.forget_chute(member_id, event.chute)
        if applied.states is not before:
            entry.worker = entry.worker.model_copy(update={"chutes": applied.states})
            core.unsaved.pop(member_id, None)  # an older version must not be written after
            done = core.journal.write(workers=[entry.worker])
            stored = (applied.states.stream, applied.states.seq)
            task = asyncio.create_task(self._ack_when_stored(member_id, stored, done))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)
        elif self._stored.get(member_id, ("", -1))[0] == batch.stream:
            # only repeats: ack again what is stored (its ack may have been lost)
            stream, seq = self._stored[member_id]
            task = asyncio.create_task(self._ack(member_id, stream, seq))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)

    async def _ack_when_stored(
        self, member_id: str, stored: tuple[str, int], done: asyncio.Future[None]
    ) -> None:
        try:
            await done
        except Exception as exc:  # not stored: not acked, so the worker sends them again
            log.warning("chute events not stored", extra={"member": member_id, "error": str(exc)})
            return
        stream, seq = stored
        known = self._stored.get(member_id)
        if known is None or known[0] != stream or known[1] < seq:
            self._stored[member_id] = stored
        await self._ack(member_id, stream, seq)

    async def _ack(self, member_id: str, stream: str, seq: int) -> None:
        try:
            await self.core.send(member_id, "chute.ack", AckChuteEvents(stream=stream, seq=seq))
        except Exception as exc:  # sent again with the next repeat
            log.warning("chute ack not sent", extra={"member": member_id, "error": str(exc)})

    # ------------------------------------------------------------------ live logs
    def open_follow(self, worker_id: str) -> LogFollow:
        """A new reader of a chute's output on ``worker_id`` (:meth:`ask_logs` starts it)."""
        if len(self._follows) >= MAX_FOLLOWS:
            raise Unavailable("too many followers of chute logs; try again later")
        if sum(f.worker_id == worker_id for f in self._follows.values()) >= MAX_FOLLOWS_PER_WORKER:
            raise Unavailable(
                f"too many followers of chute logs on worker {worker_id}; try again later"
            )
        follow = LogFollow(secrets.token_hex(8), worker_id, self.member_for(worker_id))
        self._follows[follow.id] = follow
        return follow

    def member_for(self, worker_id: str) -> str:
        """The member a worker's calls go through: the worker itself."""
        return worker_id

    async def ask_logs(
        self, follow: LogFollow, chute: str, service: str | None, follow_s: float
    ) -> None:
        """Ask (again) for the chute's output for ``follow_s`` seconds (0: stop)."""
        ask = FollowChuteLogs(id=follow.id, chute=chute, service=service, follow_s=follow_s)
        await self._send_follow(follow, ask)

    async def _send_follow(self, follow: LogFollow, ask: FollowChuteLogs) -> None:
        await self.core.send(follow.member_id, "chute.logs.follow", ask)

    def close_follow(self, follow: LogFollow, chute: str) -> None:
        """The reader is gone: forget it and tell the worker to stop (best effort, in a
        task of its own: the reader's may be cancelled, and the worker stops anyway once
        the follow is not renewed)."""
        self._follows.pop(follow.id, None)
        if follow.ended is None:
            task = asyncio.create_task(self._stop_follow(follow, chute))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)

    async def _stop_follow(self, follow: LogFollow, chute: str) -> None:
        with contextlib.suppress(Exception):
            await self.ask_logs(follow, chute, None, 0)

    def on_logs(self, member_id: str, logs: ChuteLogs) -> bool:
        """A chunk of a followed chute's output; False when nobody here asked for it."""
        follow = self._follows.get(logs.id)
        if follow is not None and follow.member_id == member_id:
            if logs.end:
                follow.ended = logs.reason or "ended"
            try:
                follow.queue.put_nowait(logs)
            except asyncio.QueueFull:
                follow.lost += 1
            return True
        relay = self._relays.get(logs.id)
        if relay is not None and relay.member_id == member_id:
            if logs.end:
                del self._relays[logs.id]
            relay.deliver(logs)
            return True
        return False

    # ------------------------------------------------------------------ for a root
    async def answer(self, request: ChuteRequest) -> ChuteResponse:
        """A root's call for one of this cluster's workers (``request.worker_id``)."""
        if self.core.registry.get(request.worker_id) is None:
            detail = f"worker {request.worker_id} is not in this cluster"
            body = {"title": "Not Found", "status": 404, "detail": detail, "field": "id"}
            return ChuteResponse(id=request.id, status=404, body=body, unknown_worker=True)
        try:
            found = await self.call(
                request.worker_id,
                request.method,
                request.path,
                body=request.body,
                query=request.query,
            )
        except WorkerProblem as exc:
            return ChuteResponse(id=request.id, status=exc.status, body=problem_body(exc))
        except EdgeplaneError as exc:
            return ChuteResponse(id=request.id, status=exc.status, body=problem_body(exc))
        return ChuteResponse(id=request.id, status=200, body=found)

    async def relay_logs(self, ask: FollowChuteLogs, deliver: Callable[[ChuteLogs], None]) -> None:
        """A root follows a chute of this cluster's worker ``ask.worker_id``: the worker's
        chunks go to ``deliver`` until the follow is not renewed (or stopped, or ended)."""
        now = self.core.clock.monotonic()
        for follow_id in [k for k, r in self._relays.items() if r.until < now]:
            del self._relays[follow_id]  # not renewed, and the worker's end never came
        worker_id = ask.worker_id
        if ask.follow_s <= 0:
            self._relays.pop(ask.id, None)
        elif not self.reachable(worker_id):
            why = f"worker {worker_id} is offline or not in this cluster"
            deliver(ChuteLogs(id=ask.id, end=True, reason=why))
            return
        elif ask.id not in self._relays and len(self._relays) >= MAX_FOLLOWS:
            deliver(ChuteLogs(id=ask.id, end=True, reason="too many followers of chute logs"))
            return
        else:
            # the worker stops sending a follow_s after the last renewal: one more beat
            until = now + ask.follow_s + self.core.settings.heartbeat_s
            self._relays[ask.id] = _Relay(worker_id, deliver, until)
        down = ask.model_copy(update={"worker_id": ""})
        await self.core.send(worker_id, "chute.logs.follow", down)


def _marked(found: Any, *, stale: bool) -> Any:
    """A worker's answer to a read of its chutes, each chute marked fresh or stale."""
    if isinstance(found, list):
        return [{**doc, "stale": stale} if isinstance(doc, dict) else doc for doc in found]
    if isinstance(found, dict):
        return {**found, "stale": stale}
    return found


def _number(query: dict[str, str], name: str) -> float | None:
    """A query's finite, non-negative number (None: not given); a 422 naming it else."""
    given = query.get(name)
    if given is None or given == "":
        return None
    try:
        value = float(given)
    except ValueError:
        raise Invalid(f"{name}: not a number", field=name) from None
    if not math.isfinite(value) or value < 0:
        raise Invalid(f"{name}: a number from 0 on", field=name)
    return value
