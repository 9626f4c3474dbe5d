"""The node's chutes managed from afar: a control plane's ``chute.request`` (over MQTT,
on the worker's ``cmd`` topic) answered by the node's own Edge API, in process.

Going through the Edge API's app rather than beside it keeps one set of rules (names,
bodies, limits, problem+json) for both paths: what the node answers locally is what the
manager answers for it.
"""

from __future__ import annotations

from typing import Any

import httpx

from edgeplane.protocol import ChuteRequest
from edgeplane.protocol.messages import MAX_CHUTE_BODY

API = "/api/v1"


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
        # a log follow never ends: from afar, the last MiB only
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
