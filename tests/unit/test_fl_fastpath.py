"""The FL clients' fast path: the calls it answers itself (with the coordinator's own
calls, their refusals as problems) and those it leaves to FastAPI, body intact. (End to
end, every FL client test goes through it: tests/integration/test_fl_*.py.)"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from edgeplane.api.audit import NOTE
from edgeplane.api.fl_fastpath import UPDATE_ROUTE, FlFastPath
from edgeplane.errors import Unauthorized
from edgeplane.fl import tokens
from edgeplane.fl.updates import Rejected

TOKEN = tokens.issue(b"k" * 32, tokens.Grant("e1", 0, "w1", "t1"))
AUTH = (b"authorization", f"Bearer {TOKEN}".encode())
BASE = "/api/v1/fl/experiments/e1"


class Coordinator:
    """Stands in for the coordinator: records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.refuse: Exception | None = None

    def _called(self, *args: Any) -> None:
        self.calls.append(args)
        if self.refuse is not None:
            raise self.refuse

    async def assignment(
        self, exp: str, token: str, after: tuple[int, int], wait: float, *, inline: bool
    ) -> dict[str, object]:
        self._called("assignment", exp, token, after, wait, inline)
        return {"state": "running", "round": None}

    async def shard(self, exp: str, round_no: int, token: str) -> bytes:
        self._called("shard", exp, round_no, token)
        return b"PK npz"

    async def client_model(self, exp: str, token: str, version: int | None) -> tuple[int, bytes]:
        self._called("model", exp, token, version)
        return 3, b"\x00\x01"

    async def offer(
        self,
        exp: str,
        round_no: int,
        token: str,
        body: bytes,
        content_type: str,
        *,
        attempt: int | None,
    ) -> dict[str, object]:
        self._called("offer", exp, round_no, token, body, content_type, attempt)
        return {"accepted": True, "round": round_no, "updates": 1}


class Downstream:
    """FastAPI's place: records the requests handed on, with the body they arrive with."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.bodies.append((await receive()).get("body", b""))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def call(
    layer: FlFastPath,
    method: str,
    path: str,
    query: bytes = b"",
    body: bytes = b"",
    headers: tuple[tuple[bytes, bytes], ...] = (AUTH,),
) -> tuple[int, dict[str, str], bytes, Scope]:
    scope: Scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": list(headers),
    }
    pending: list[Message] = [
        {"type": "http.request", "body": body[:2], "more_body": True},
        {"type": "http.request", "body": body[2:], "more_body": False},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await layer(scope, receive, send)
    head = {k.decode(): v.decode() for k, v in sent[0].get("headers", [])}
    return sent[0]["status"], head, b"".join(m.get("body", b"") for m in sent[1:]), scope


@pytest.fixture
def parts() -> tuple[FlFastPath, Coordinator, Downstream]:
    fl, downstream = Coordinator(), Downstream()
    return FlFastPath(downstream, fl=fl), fl, downstream  # type: ignore[arg-type]


async def test_an_ask_is_answered_with_its_parameters(
    parts: tuple[FlFastPath, Coordinator, Downstream],
) -> None:
    layer, fl, downstream = parts
    q = b"round=2&attempt=1&wait=0.5&model=inline"
    status, head, body, _ = await call(layer, "GET", f"{BASE}/assignment", q)
    assert (status, orjson.loads(body)) == (200, {"state": "running", "round": None})
    assert head["content-type"] == "application/json"
    assert fl.calls == [("assignment", "e1", TOKEN, (2, 1), 0.5, True)]
    status, _, _, _ = await call(layer, "GET", f"{BASE}/assignment")
    assert fl.calls[-1] == ("assignment", "e1", TOKEN, (0, 0), 20.0, False)  # the defaults
    assert downstream.bodies == []


async def test_a_model_download_is_answered_raw(
    parts: tuple[FlFastPath, Coordinator, Downstream],
) -> None:
    layer, fl, _ = parts
    status, head, body, _ = await call(layer, "GET", f"{BASE}/model", b"version=3")
    assert (status, body, head["x-model-version"]) == (200, b"\x00\x01", "3")
    assert head["content-type"] == "application/x-edgeplane-f32"
    assert fl.calls == [("model", "e1", TOKEN, 3)]


async def test_a_shard_is_answered_raw(
    parts: tuple[FlFastPath, Coordinator, Downstream],
) -> None:
    layer, fl, downstream = parts
    status, head, body, _ = await call(layer, "GET", f"{BASE}/rounds/3/data")
    assert (status, head["content-type"], body) == (200, "application/x-npz", b"PK npz")
    assert fl.calls == [("shard", "e1", 3, TOKEN)]
    # a query or a bad round is FastAPI's to judge
    for path, query in ((f"{BASE}/rounds/3/data", b"x=1"), (f"{BASE}/rounds/-1/data", b"")):
        assert (await call(layer, "GET", path, query))[0] == 299
    assert len(downstream.bodies) == 2


async def test_an_update_is_taken_with_its_body_and_noted_for_the_audit(
    parts: tuple[FlFastPath, Coordinator, Downstream],
) -> None:
    layer, fl, _ = parts
    ctype = (b"content-type", b"application/x-npz")
    status, _, body, scope = await call(
        layer, "POST", f"{BASE}/rounds/4/updates", b"attempt=2", b"weights", (AUTH, ctype)
    )
    assert (status, orjson.loads(body)) == (202, {"accepted": True, "round": 4, "updates": 1})
    assert fl.calls == [("offer", "e1", 4, TOKEN, b"weights", "application/x-npz", 2)]
    assert scope["state"][NOTE] == {"route": UPDATE_ROUTE, "resource_id": "e1"}
    await call(layer, "POST", f"{BASE}/rounds/4/updates", body=b"w")
    assert fl.calls[-1] == ("offer", "e1", 4, TOKEN, b"w", "application/x-edgeplane-f32", None)


def taken_line(round_no: int) -> bytes:
    return orjson.dumps({"accepted": True, "round": round_no, "updates": 1})


async def test_an_update_asking_for_the_next_round_is_answered_with_it(
    parts: tuple[FlFastPath, Coordinator, Downstream],
) -> None:
    layer, fl, downstream = parts
    path = f"{BASE}/rounds/4/updates"
    status, _, body, _ = await call(
        layer, "POST", path, b"attempt=2&then=assignment&wait=7&model=inline", b"weights"
    )
    assert status == 202
    taken, told = [orjson.loads(line) for line in body.splitlines()]
    assert taken == {"accepted": True, "round": 4, "updates": 1}
    assert told == {"state": "running", "round": None}
    assert fl.calls[-1] == ("assignment", "e1", TOKEN, (4, 2), 7.0, True)
    # a next round that cannot be told leaves the update's own line alone

    async def refused(*args: Any, **kwargs: Any) -> dict[str, object]:
        raise Unauthorized("the credential expired with its task")

    fl.assignment = refused  # type: ignore[method-assign]
    status, _, body, _ = await call(layer, "POST", path, b"attempt=2&then=assignment", b"w")
    assert status == 202 and body.splitlines() == [taken_line(4)]
    # without an attempt (a per-round client) there is no next round to tell
    status, _, body, _ = await call(layer, "POST", path, b"then=assignment", b"w")
    assert orjson.loads(body)["round"] == 4 and fl.calls[-1][0] == "offer"
    # a value it is not sure of goes to FastAPI, which names it
    for query in (b"attempt=1&then=later", b"attempt=1&then=assignment&wait=-1"):
        assert (await call(layer, "POST", path, query, b"w"))[0] == 299
    assert downstream.bodies == [b"w", b"w"]


async def test_the_coordinators_refusals_are_problems_naming_the_reason(
    parts: tuple[FlFastPath, Coordinator, Downstream],
) -> None:
    layer, fl, _ = parts
    fl.refuse = Rejected("duplicate", "already in")
    status, head, body, _ = await call(layer, "POST", f"{BASE}/rounds/1/updates", body=b"w")
    assert status == 422 and head["content-type"] == "application/problem+json"
    assert orjson.loads(body)["reason"] == "duplicate"
    fl.refuse = Unauthorized("the credential expired with its task")
    status, head, _, _ = await call(layer, "GET", f"{BASE}/assignment")
    assert status == 401 and head["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("method", "path", "query", "headers"),
    [
        ("GET", f"{BASE}/assignment", b"", ()),  # no credential
        ("GET", f"{BASE}/assignment", b"", ((b"authorization", b"Bearer ep_user"),)),
        ("GET", f"{BASE}/assignment", b"round=-1", (AUTH,)),
        ("GET", f"{BASE}/assignment", b"round=1000001", (AUTH,)),
        ("GET", f"{BASE}/assignment", b"attempt=1001", (AUTH,)),
        ("GET", f"{BASE}/assignment", b"wait=61", (AUTH,)),
        ("GET", f"{BASE}/assignment", b"wait=nan", (AUTH,)),
        ("GET", f"{BASE}/assignment", b"model=file", (AUTH,)),
        ("GET", f"{BASE}/assignment", b"round=1&round=2", (AUTH,)),
        ("GET", f"{BASE}/assignment", b"other=1", (AUTH,)),
        ("GET", f"{BASE}/model", b"version=x", (AUTH,)),
        ("POST", f"{BASE}/rounds/x/updates", b"", (AUTH,)),
        ("POST", f"{BASE}/rounds/1/updates", b"attempt=-1", (AUTH,)),
        ("GET", f"{BASE}/rounds/1/dat", b"", (AUTH,)),  # not one of its calls
        ("GET", BASE, b"", (AUTH,)),
        ("POST", f"{BASE}/assignment", b"", (AUTH,)),
    ],
)
async def test_anything_else_goes_on_to_fastapi_with_its_body(
    parts: tuple[FlFastPath, Coordinator, Downstream],
    method: str,
    path: str,
    query: bytes,
    headers: tuple[tuple[bytes, bytes], ...],
) -> None:
    layer, fl, downstream = parts
    status, _, _, _ = await call(layer, method, path, query, b"body", headers)
    assert status == 299 and fl.calls == []
    assert downstream.bodies == [b"bo"]  # the first chunk, unread by the layer
