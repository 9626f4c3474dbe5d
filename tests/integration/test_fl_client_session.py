"""The example's long-lived client (``edgeplane.fl.client.Session``) against a real HTTP
server speaking the coordinator's protocol: its update's answer tells the next round
(``then=assignment``, two JSON lines), it keeps one connection from round to round, and
a connection lost after the update's own line is not a reason to send it again."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgeplane.api.fl import _Lines
from edgeplane.fl import client

pytestmark = pytest.mark.timeout(60)


def work(base: str, round_no: int) -> dict[str, Any]:
    return {
        "state": "running",
        "round": round_no,
        "attempt": 0,
        "model_uri": f"{base}/model",
        "data_url": f"{base}/data",
        "shard": [0, 1],
        "update_url": f"{base}/rounds/{round_no}/updates?attempt=0",
    }


class Coordinator:
    """Takes updates; tells round n + 1 after round n (the end after ``last``); with
    ``cut``, drops the connection after the update's own line."""

    def __init__(self, last: int) -> None:
        self.last = last
        self.base = ""
        self.connections: set[tuple[str, int]] = set()
        self.updates: list[tuple[int, dict[str, str]]] = []
        self.cut = False

    async def update(self, request: Request) -> Response:
        self.connections.add(request.scope["client"])
        round_no = int(request.path_params["n"])
        self.updates.append((round_no, dict(request.query_params)))
        await request.body()
        taken = orjson.dumps({"accepted": True, "round": round_no, "updates": 1}) + b"\n"

        async def rest() -> bytes:
            if self.cut:
                raise ConnectionError("the manager went away")  # mid-answer
            told = work(self.base, round_no + 1) if round_no < self.last else {"state": "completed"}
            return orjson.dumps({"round": None, **told}) + b"\n"

        return _Lines(taken, rest)


@pytest.fixture
def served() -> Iterator[Coordinator]:
    coordinator = Coordinator(last=3)
    app = Starlette(routes=[Route("/rounds/{n}/updates", coordinator.update, methods=["POST"])])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    coordinator.base = f"http://127.0.0.1:{port}"
    while not server.started:  # a thread's flag: no event to wait on
        thread.join(0.01)
    yield coordinator
    server.should_exit = True
    thread.join(10)


def session(coordinator: Coordinator) -> client.Session:
    env = {"FL_ASSIGNMENT_URL": f"{coordinator.base}/assignment", "FL_TOKEN": "t"}
    return client.Session(env)


def test_each_update_tells_the_next_round_on_one_connection(served: Coordinator) -> None:
    s = session(served)
    given = s._take(work(served.base, 1))
    rounds = []
    with s.http:
        while given is not None:
            rounds.append(given.round)
            s.send(given, b"update")
            given = s.next()  # told by the update's answer: no ask is made
    assert rounds == [1, 2, 3] and s.state == "completed"
    assert [n for n, _ in served.updates] == [1, 2, 3]
    asked = served.updates[0][1]
    assert asked == {"attempt": "0", "then": "assignment", "wait": "20.0", "model": "inline"}
    assert len(served.connections) == 1  # a partly read answer closed it: one per round


def test_a_connection_lost_after_the_updates_line_sends_nothing_again(
    served: Coordinator,
) -> None:
    served.cut = True
    s = session(served)
    with s.http:
        s.send(s._take(work(served.base, 1)) or pytest.fail("no work"), b"update")
    # taken (its line came): no MQTT fallback was tried (the env has none: it would
    # have raised Stop), nothing is told, and the next round is asked for
    assert [n for n, _ in served.updates] == [1] and s._told is None
