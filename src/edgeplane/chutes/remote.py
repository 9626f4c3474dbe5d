"""The node's chutes managed from afar: a control plane's ``chute.request`` (over MQTT,
on the worker's ``cmd`` topic) answered by the node's own Edge API, in process, and its
``chute.logs.follow`` answered with the chute's output as ``chute.logs`` messages.

Going through the Edge API's app rather than beside it keeps one set of rules (names,
bodies, limits, problem+json) for both paths: what the node answers locally is what the
manager answers for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from edgeplane.chutes.node import Node
from edgeplane.clock import Clock, SystemClock
from edgeplane.errors import EdgeplaneError
from edgeplane.protocol import ChuteLogs, ChuteRequest, FollowChuteLogs
from edgeplane.protocol.messages import MAX_CHUTE_BODY, MAX_CHUTE_LOG_CHUNK

log = logging.getLogger(__name__)

API = "/api/v1"
#: chute logs one worker sends at once at most (each reads at most 64 KiB a poll)
MAX_FOLLOWS = 16


class RemoteChutes:
    """Answers :class:`ChuteRequest` with the Edge API ``app`` (made with the node token).
    In process (no socket), so it holds nothing to close: it lives as long as the worker."""

    def __init__(self, app: Any, token: str) -> None:
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://node",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    async def __call__(self, request: ChuteRequest) -> tuple[int, Any]:
        # a log follow never ends: from afar, the last MiB (a live follow is chute.logs)
        query = {k: v for k, v in request.query.items() if k != "follow"}
        answer = await self._client.request(
            request.method,
            API + request.path,
            params=query,
            json=request.body if request.method in ("POST", "PUT") else None,
        )
        kind = answer.headers.get("content-type", "")
        if "json" in kind:
            body: Any = answer.json()
        else:
            body = answer.text[-MAX_CHUTE_BODY // 2 :]
        return answer.status_code, body


@dataclass
class _Follow:
    until: float
    task: asyncio.Task[None] | None = None
    stopped: bool = False


class RemoteLogs:
    """Follows chutes' output for the control plane (``chute.logs.follow``): each follow
    reads the service's log from its tail, as it grows, and sends it as ``chute.logs``
    until it is not renewed within its ``follow_s``, is stopped, or the chute is deleted;
    a last message with ``end`` says which. At most :data:`MAX_FOLLOWS` at once."""

    def __init__(
        self,
        node: Node,
        publish: Callable[[ChuteLogs], Awaitable[None]],
        *,
        clock: Clock | None = None,
        max_follows: int = MAX_FOLLOWS,
    ) -> None:
        self.node = node
        self._publish = publish
        self.clock = clock or SystemClock()
        self.max_follows = max_follows
        self._follows: dict[str, _Follow] = {}
        self._ends: set[asyncio.Task[None]] = set()

    def __call__(self, ask: FollowChuteLogs) -> None:
        found = self._follows.get(ask.id)
        if ask.follow_s <= 0:
            if found is not None:
                found.stopped = True
            return
        until = self.clock.monotonic() + ask.follow_s
        if found is not None:
            found.until = until
            return
        if len(self._follows) >= self.max_follows:
            self._end(ask.id, f"this worker follows {self.max_follows} chute logs already")
            return
        follow = self._follows[ask.id] = _Follow(until)
        follow.task = asyncio.create_task(self._run(ask, follow), name=f"chute-logs-{ask.id}")

    def _end(self, follow_id: str, reason: str) -> None:
        task = asyncio.create_task(self._send_end(follow_id, reason))
        self._ends.add(task)
        task.add_done_callback(self._ends.discard)

    async def _send_end(self, follow_id: str, reason: str) -> None:
        try:
            await self._publish(ChuteLogs(id=follow_id, end=True, reason=reason))
        except Exception as exc:  # the manager ends its side when the worker is gone
            log.warning("chute log end not sent", extra={"id": follow_id, "error": str(exc)})

    def _keep(self, follow: _Follow) -> bool:
        return not follow.stopped and self.clock.monotonic() < follow.until

    async def _run(self, ask: FollowChuteLogs, follow: _Follow) -> None:
        try:
            async for text in self.node.follow(
                ask.chute, ask.service, keep=lambda: self._keep(follow)
            ):
                for i in range(0, len(text), MAX_CHUTE_LOG_CHUNK):
                    await self._publish(
                        ChuteLogs(id=ask.id, data=text[i : i + MAX_CHUTE_LOG_CHUNK])
                    )
            if follow.stopped:
                reason = "stopped"
            elif not self._keep(follow):
                reason = "not renewed"
            else:
                reason = f"chute {ask.chute} was deleted"
        except EdgeplaneError as exc:  # no such chute or service
            reason = exc.detail
        except Exception as exc:  # a broken read ends this follow, not the worker
            log.exception("chute log follow failed", extra={"id": ask.id})
            reason = f"the follow failed: {type(exc).__name__}"
        finally:
            self._follows.pop(ask.id, None)
        await self._send_end(ask.id, reason)

    async def close(self) -> None:
        tasks = [f.task for f in self._follows.values() if f.task is not None]
        for task in [*tasks, *self._ends]:
            task.cancel()
        for task in [*tasks, *self._ends]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
