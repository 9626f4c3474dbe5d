"""HTTP for the blocking client: one kept-alive connection, without httpx's layers.

``edgeplane task run`` and ``Client.run`` make one request per task, and the client's
own CPU is on that latency path. httpx spends ~0.65 ms of CPU on a request to a local
server (URL merging and parsing, header models, httpcore, h11); ``http.client`` on a kept
connection ~0.14 ms (``docs/benchmarks.md``). :class:`Connection` is that: one connection
per client, reused, opened again when the server closed it while idle.

Proxies are httpx's job: the client goes through httpx whenever the environment names a
proxy for its URL, or when the caller hands it an httpx transport.
"""

from __future__ import annotations

import http.client
import select
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit
from urllib.request import getproxies, proxy_bypass

import httpx

#: Methods safe to send again when a kept connection turns out dead mid-request.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Reply:
    """A response as the client's parsers read it, whichever way it came."""

    status: int
    reason: str
    content: bytes
    url: str
    #: set when a standby process answered (``api/standby.py``): the leader it names
    #: ("" while none leads)
    leader: str | None = None
    #: the ``Retry-After`` seconds it gave (a number of seconds, else None)
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @classmethod
    def of(cls, resp: httpx.Response) -> Reply:
        return cls(
            resp.status_code,
            resp.reason_phrase,
            resp.content,
            str(resp.request.url),
            standby_leader(resp.headers.get(ROLE_HEADER), resp.headers.get(LEADER_HEADER)),
            retry_after(resp.headers.get("retry-after")),
        )


#: Headers of a standby's answers (``api/standby.py``, which imports them from here).
ROLE_HEADER = "X-Edgeplane-Role"
LEADER_HEADER = "X-Edgeplane-Leader"


#: The longest ``Retry-After`` a client honours, seconds (a server's larger one is cut).
MAX_RETRY_AFTER_S = 60.0


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds when it is a number of them (not an HTTP date)."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value), MAX_RETRY_AFTER_S)


def standby_leader(role: str | None, leader: str | None) -> str | None:
    """The leader a standby's answer names ("" none), or None when no standby answered."""
    return (leader or "") if role == "standby" else None


class Unreachable(Exception):
    """The server could not be reached or stopped answering (the client's TransportError).
    ``sent`` is False when no connection was made, so the request surely did nothing."""

    def __init__(self, reason: str, *, sent: bool = True) -> None:
        super().__init__(reason)
        self.sent = sent


def proxied(url: str) -> bool:
    """Whether the environment (``HTTP_PROXY``, ``NO_PROXY``, …) sends ``url`` via a proxy."""
    parts = urlsplit(url)
    proxies = getproxies()
    if parts.scheme not in proxies and "all" not in proxies:
        return False
    return not proxy_bypass(parts.hostname or "")


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the clients build it: ``url`` is the path under the base URL;
    ``timeout`` None means the client's own."""

    method: str
    url: str
    params: Mapping[str, str | int | float] | None = None
    content: bytes | None = None
    headers: dict[str, str] | None = None
    timeout: float | None = None

    def for_httpx(self) -> dict[str, Any]:
        """The keywords of ``httpx.Client.request`` (a None timeout would mean none at all)."""
        options: dict[str, Any] = {
            "method": self.method,
            "url": self.url,
            "params": self.params,
            "content": self.content,
            "headers": self.headers,
        }
        if self.timeout is not None:
            options["timeout"] = self.timeout
        return options


class Wire(Protocol):
    """How the blocking client sends."""

    def send(self, request: Request) -> Reply: ...

    def close(self) -> None: ...


def open_wire(
    base_url: str,
    headers: dict[str, str],
    timeout: float,
    transport: httpx.BaseTransport | None,
    tls: ssl.SSLContext | None = None,
) -> Wire:
    """A :class:`Connection`, or httpx when given a transport or a proxy applies. ``tls``
    verifies an https server (None: the system's trust store)."""
    if transport is None and not proxied(base_url):
        return Connection(base_url, headers, timeout, tls)
    client = httpx.Client(
        base_url=base_url,
        headers=headers,
        timeout=timeout,
        transport=transport,
        verify=tls if tls is not None else True,
    )
    return HttpxWire(client)


class HttpxWire:
    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def send(self, request: Request) -> Reply:
        try:
            return Reply.of(self._client.request(**request.for_httpx()))
        except httpx.TransportError as exc:
            sent = not isinstance(exc, httpx.ConnectError)
            raise Unreachable(str(exc) or type(exc).__name__, sent=sent) from None

    def close(self) -> None:
        self._client.close()


class Connection:
    """Requests to one ``http(s)://host[:port][/prefix]`` over one kept-alive connection."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        # made once: loading the CA bundle again for every reconnect costs milliseconds
        https = parts.scheme == "https"
        self._tls = (tls or ssl.create_default_context()) if https else None
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = headers
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def send(self, request: Request) -> Reply:
        query = f"?{urlencode(request.params)}" if request.params else ""
        target = self._prefix + request.url + query
        headers = {**self._headers, **(request.headers or {})}
        method, content, timeout = request.method, request.content, request.timeout
        fresh = self._conn is None or self._closed_by_peer()
        try:
            return self._exchange(method, target, content, headers, timeout, fresh)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
            if fresh or method not in IDEMPOTENT:
                raise Unreachable(str(exc) or type(exc).__name__) from None
            # A kept connection the server dropped as we sent: once more on a new one.
            return self._exchange(method, target, content, headers, timeout, True)

    def _exchange(
        self,
        method: str,
        target: str,
        content: bytes | None,
        headers: dict[str, str],
        timeout: float | None,
        fresh: bool,
    ) -> Reply:
        if fresh:
            self.close()
            self._conn = self._connect()
        conn = self._conn
        assert conn is not None
        try:
            conn.timeout = timeout or self._timeout
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            conn.request(method, target, body=content, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            sent = conn.sock is not None  # no socket: the connection was never made
            self.close()
            raise Unreachable(str(exc) or type(exc).__name__, sent=sent) from None
        if resp.will_close:
            self.close()
        leader = standby_leader(resp.getheader(ROLE_HEADER), resp.getheader(LEADER_HEADER))
        pause = retry_after(resp.getheader("Retry-After"))
        return Reply(resp.status, resp.reason, body, self._origin + target, leader, pause)

    def _connect(self) -> http.client.HTTPConnection:
        if self._tls is not None:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._tls
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _closed_by_peer(self) -> bool:
        """An idle kept connection with something to read has been closed by the server
        (or holds bytes nobody asked for): either way it cannot carry the next request."""
        sock = self._conn.sock if self._conn is not None else None
        if sock is None:
            return True
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
