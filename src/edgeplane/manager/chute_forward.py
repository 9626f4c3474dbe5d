"""At a root: a worker's chutes managed through the cluster that holds the worker
(docs/chutes.md, "Through the root").

The root knows its clusters, not their workers (only aggregates go up), so a call for
worker W goes as a ``chute.request`` naming W to the cluster that answered for W last, or
else to every online cluster at once: the one holding W makes the call through its own
manager (with its rules: a stale state when W is offline, 503 when it knows none) and
answers; the others answer ``unknown_worker``. The answer comes back as the cluster's
``chute.response``. A chute's live output is relayed by the cluster the same way
(``chute.logs.follow`` down, ``chute.logs`` up).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from edgeplane.errors import NotFound, Unavailable
from edgeplane.manager.chutes import TIMEOUT_S, ChuteCalls, LogFollow, WorkerProblem
from edgeplane.manager.core import Core
from edgeplane.protocol import ChuteRequest, ChuteResponse, FollowChuteLogs

#: workers whose cluster the root remembers (the most recently used)
MAX_ROUTES = 10_000
#: the cluster's own call to its worker may take TIMEOUT_S: the root waits a little longer
ROOT_TIMEOUT_S = TIMEOUT_S + 5.0


class ClusterChuteCalls(ChuteCalls):
    MEMBER = "cluster"

    def __init__(self, core: Core, timeout_s: float = ROOT_TIMEOUT_S) -> None:
        super().__init__(core, timeout_s)
        #: worker id → the cluster that answered for it last
        self._routes: OrderedDict[str, str] = OrderedDict()

    async def call(
        self,
        worker_id: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        def request() -> ChuteRequest:
            return ChuteRequest(
                id=secrets.token_hex(8),
                method=method,
                path=path,
                query=query or {},
                body=body,
                worker_id=worker_id,
            )

        response = await self._route(worker_id, request)
        if response.status >= 400:
            found = response.body if isinstance(response.body, dict) else {}
            raise WorkerProblem(response.status, found)
        return response.body

    async def _route(self, worker_id: str, request: Callable[[], ChuteRequest]) -> ChuteResponse:
        registry = self.core.registry
        known = self._routes.get(worker_id)
        if known is not None:
            entry = registry.get(known)
            if entry is None:
                self._routes.pop(worker_id, None)
            elif not entry.online:
                raise Unavailable(
                    f"cluster {known}, which holds worker {worker_id}, is offline", field="id"
                )
            else:
                response = await self.ask(known, request())
                if not response.unknown_worker:
                    self._routes.move_to_end(worker_id)
                    return response
                self._routes.pop(worker_id, None)  # it moved, or is gone
        online = [e.worker.id for e in registry.entries() if e.online and e.worker.id != known]
        offline = sorted(e.worker.id for e in registry.entries() if not e.online)
        answers = await asyncio.gather(
            *(self.ask(cluster, request()) for cluster in online), return_exceptions=True
        )
        silent = []
        for cluster, answer in zip(online, answers, strict=True):
            if isinstance(answer, ChuteResponse) and not answer.unknown_worker:
                self._routes[worker_id] = cluster
                while len(self._routes) > MAX_ROUTES:
                    self._routes.popitem(last=False)
                return answer
            if not isinstance(answer, ChuteResponse):
                silent.append(cluster)
        if silent or offline:
            why = ", ".join(
                [*(f"{c} did not answer" for c in silent), *(f"{c} is offline" for c in offline)]
            )
            raise Unavailable(
                f"worker {worker_id} is in no cluster that answered ({why})", field="id"
            )
        raise NotFound(f"worker {worker_id} not found in any cluster", field="id")

    def reachable(self, worker_id: str) -> bool:
        cluster = self._routes.get(worker_id)
        entry = None if cluster is None else self.core.registry.get(cluster)
        return entry is not None and entry.online

    def member_for(self, worker_id: str) -> str:
        cluster = self._routes.get(worker_id)
        if cluster is None:
            raise Unavailable(f"no cluster answered for worker {worker_id} yet", field="id")
        return cluster

    async def ask_logs(
        self, follow: LogFollow, chute: str, service: str | None, follow_s: float
    ) -> None:
        ask = FollowChuteLogs(
            id=follow.id,
            chute=chute,
            service=service,
            follow_s=follow_s,
            worker_id=follow.worker_id,
        )
        await self._send_follow(follow, ask)
