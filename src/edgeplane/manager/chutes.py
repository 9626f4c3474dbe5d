"""A worker's chutes managed through the manager (docs/chutes.md, "Through the control
plane"): a call becomes a signed ``chute.request`` on the worker's ``cmd`` topic, and the
worker's ``chute.response`` on its ``events`` topic, matched by id, becomes the answer.

Workers dial out and are never called: a worker the manager holds offline is refused at
once (503 naming it), and one that does not answer in time is too.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from edgeplane.errors import EdgeplaneError, NotFound, Unavailable
from edgeplane.manager.core import Core
from edgeplane.protocol import ChuteRequest, ChuteResponse

#: how long a call waits for the worker's answer (an install answers at once with its
#: change id; the change itself runs on the node)
TIMEOUT_S = 20.0


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


class ChuteCalls:
    def __init__(self, core: Core, timeout_s: float = TIMEOUT_S) -> None:
        self.core = core
        self.timeout_s = timeout_s
        self._waiting: dict[str, tuple[str, asyncio.Future[ChuteResponse]]] = {}

    async def call(
        self,
        worker_id: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        """The worker's answer to one Edge API call; its 4xx/5xx as :class:`WorkerProblem`."""
        entry = self.core.registry.get(worker_id)
        if entry is None:
            raise NotFound(f"worker {worker_id} not found", field="id")
        if not entry.online:
            raise Unavailable(
                f"worker {worker_id} is offline: its chutes cannot be reached now", field="id"
            )
        request = ChuteRequest(
            id=secrets.token_hex(8), method=method, path=path, query=query or {}, body=body
        )
        answer: asyncio.Future[ChuteResponse] = asyncio.get_running_loop().create_future()
        self._waiting[request.id] = (worker_id, answer)
        try:
            await self.core.send(worker_id, "chute.request", request, qos=1)
            response = await asyncio.wait_for(answer, self.timeout_s)
        except TimeoutError:
            raise Unavailable(
                f"worker {worker_id} did not answer within {self.timeout_s:g} s", field="id"
            ) from None
        finally:
            self._waiting.pop(request.id, None)
        if response.status >= 400:
            found = response.body if isinstance(response.body, dict) else {}
            raise WorkerProblem(response.status, found)
        return response.body

    def on_response(self, member_id: str, response: ChuteResponse) -> bool:
        """Match an answer to its call; False when no call waits for it (late, or forged)."""
        found = self._waiting.get(response.id)
        if found is None or found[0] != member_id or found[1].done():
            return False
        found[1].set_result(response)
        return True
