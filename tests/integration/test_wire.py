"""The blocking client's own HTTP connection against a real HTTP/1.1 server: kept alive,
opened again when the server dropped it, and every failure an :class:`Unavailable`."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from edgeplane.client import Client
from edgeplane.errors import NotFound, Unavailable
from edgeplane.wire import Connection, HttpxWire, Request, open_wire, proxied

pytestmark = pytest.mark.timeout(30)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        #: (method, path, body, client port) of every request, in order
        self.seen: list[tuple[str, str, bytes, int]] = []
        #: answer the next request, then drop the connection without saying so
        self.drop_after_next = False
        self.delay_s = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.seen.append((self.command, self.path, body, self.client_address[1]))
        time.sleep(self.server.delay_s)
        if self.path.endswith("/missing"):
            status, reply = 404, b'{"status": 404, "detail": "no such thing", "field": "id"}'
        else:
            status, reply = 200, b'{"status": "ok"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
        self.wfile.flush()
        if self.server.drop_after_next:
            self.server.drop_after_next = False
            self.close_connection = True  # silently: no "Connection: close" header

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_requests_share_one_kept_connection(server: Server) -> None:
    conn = Connection(server.url + "/base/", {"Authorization": "Bearer x"}, timeout=5)
    try:
        for n in range(5):
            reply = conn.send(Request("GET", "/api/v1/health", params={"n": n, "wait": 0.5}))
            assert (reply.status, reply.ok, reply.content) == (200, True, b'{"status": "ok"}')
        assert reply.url == f"{server.url}/base/api/v1/health?n=4&wait=0.5"
    finally:
        conn.close()
    assert server.seen[0][1] == "/base/api/v1/health?n=0&wait=0.5"
    assert len({port for *_, port in server.seen}) == 1


def test_a_connection_the_server_dropped_is_opened_again(server: Server) -> None:
    conn = Connection(server.url, {}, timeout=5)
    try:
        server.drop_after_next = True
        assert conn.send(Request("GET", "/first")).ok
        time.sleep(0.2)  # the server has closed its end by now
        reply = conn.send(Request("POST", "/second", content=b'{"a": 1}'))
        assert reply.ok
    finally:
        conn.close()
    posts = [seen for seen in server.seen if seen[0] == "POST"]
    assert [(path, body) for _, path, body, _ in posts] == [("/second", b'{"a": 1}')]
    assert server.seen[0][3] != server.seen[1][3]  # a new connection


def test_the_client_maps_answers_and_failures(server: Server) -> None:
    with Client(server.url, "tok", timeout=0.5) as client:
        assert client.health() == {"status": "ok"}
        with pytest.raises(NotFound, match="no such thing") as found:
            client.get("missing")
        assert found.value.field == "id"
        server.delay_s = 1.0
        with pytest.raises(Unavailable, match="cannot reach edgeplane"):
            client.health()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with (
        Client(f"http://127.0.0.1:{closed_port}", "tok", timeout=2) as client,
        pytest.raises(Unavailable, match="cannot reach edgeplane"),
    ):
        client.health()


def test_a_proxy_in_the_environment_sends_the_client_through_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    assert proxied("http://edge.example:7070")
    assert not proxied("http://localhost:7070")
    assert not proxied("https://edge.example:7070")
    wire = open_wire("http://edge.example:7070", {}, 5, None)
    assert isinstance(wire, HttpxWire)
    wire.close()
    given = open_wire(
        "http://localhost:7070", {}, 5, httpx.MockTransport(lambda _: httpx.Response(204))
    )
    assert isinstance(given, HttpxWire)
    assert given.send(Request("GET", "/x")).status == 204
    given.close()
