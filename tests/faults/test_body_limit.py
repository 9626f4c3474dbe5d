"""Bodies are bounded before they cost anything: a real uvicorn server and a client that
streams a 500 MiB body and watches for the answer while it sends. The server must answer
(401 without a token, 413 past the limit) long before the client is done, having read
only what it needed; a chunked body gets no pass (it once skipped the limit and was read
whole before the token was checked: RSS 109 -> 1,097 MB)."""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from edgeplane.roles.up import Stack
from stack_fixtures import TOKEN, start_stack

pytestmark = pytest.mark.timeout(120)

TOTAL = 500 * 2**20
CHUNK = 64 * 2**10


@pytest.fixture
async def stack(tmp_path: Path, fast_broker_url: str, unique_domain: str) -> AsyncIterator[Stack]:
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for running, _ in start_stack(
        tmp_path, fast_broker_url, store, unique_domain, workers=0, max_body_mb=1
    ):
        yield running


def stream(url: str, path: str, headers: dict[str, str], chunked: bool = True) -> tuple[int, int]:
    """Send a ``TOTAL``-byte body to ``path`` until the server answers; return the answer's
    status and how many body bytes had been sent by then. (Blocking: run it on a thread,
    the server lives on the test's event loop.)"""
    parts = urlsplit(url)
    head = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json"]
    head += ["Transfer-Encoding: chunked"] if chunked else [f"Content-Length: {TOTAL}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    chunk = b"[" * CHUNK
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk
    sent = 0
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        answer = b""
        while b"\r\n" not in answer:
            readable, writable, _ = select.select([sock], [sock] if sent < TOTAL else [], [], 30)
            if readable:
                data = sock.recv(65536)
                assert data, f"closed without an answer after {sent} bytes"
                answer += data
            elif writable:
                try:
                    sock.sendall(frame)
                except OSError:  # the server closed: its answer is in our buffer
                    continue
                sent += len(chunk)
            else:
                raise AssertionError(f"no answer after {sent} bytes")
    return int(answer.split(b" ", 2)[1]), sent


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
@pytest.mark.parametrize("path", ["/api/v1/tasks", "/api/v1/jobs", "/api/v1/applications"])
async def test_a_huge_body_without_a_token_is_refused_before_it_is_read(
    stack: Stack, path: str, chunked: bool
) -> None:
    status, sent = await asyncio.to_thread(stream, stack.control.url, path, {}, chunked)
    # the limit comes first: a Content-Length past it is refused before the token is read
    assert status == (401 if chunked else 413)
    assert sent < TOTAL // 10


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
@pytest.mark.parametrize(
    "path", ["/api/v1/tasks", "/api/v1/tasks/batch", "/api/v1/jobs", "/api/v1/applications"]
)
async def test_a_huge_body_with_a_token_stops_at_the_limit(
    stack: Stack, path: str, chunked: bool
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, sent = await asyncio.to_thread(stream, stack.control.url, path, auth, chunked)
    assert status == 413
    assert sent < TOTAL // 10
