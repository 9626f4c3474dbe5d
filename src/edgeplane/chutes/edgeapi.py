"""The node-local Edge API: ``edgeplane worker --api HOST:PORT``.

The node stays manageable with no manager or root: chutes are installed, updated,
started, stopped and removed here, each call answering ``202 {"change_id": …}`` at once
while the change runs on the node's queue (``GET /api/v1/changes/{id}``, or its
``/stream`` as server-sent events). Every call needs the node-local token, generated into
the worker's data dir (``edge-api-token``, 0600) and sent as ``Authorization: Bearer``.
Errors are problem+json, as on the control plane.

The chutes' own API (:class:`ChuteApi`) is a second, read-only one, on the node's bridge
gateway (``10.77.0.1:7072`` by default) so that a chute reaches it from inside its
namespace: each chute authenticates with its own token (``/run/chute/token``) and sees
only itself (its status and config) and the node's info.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from edgeplane.api import problems
from edgeplane.chutes import catalog
from edgeplane.chutes import manifest as manifests
from edgeplane.chutes.bodies import read_body
from edgeplane.chutes.node import Node
from edgeplane.errors import Invalid, Unauthorized

TOKEN_FILE = "edge-api-token"
MAX_CONFIG_BYTES = 64 * 1024


def node_token(data_dir: Path) -> str:
    """The node's API token, made (0600) on first use. Written whole before it appears
    (a linked temporary file): a CLI reading it meanwhile never sees it empty."""
    path = data_dir / TOKEN_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(tmp, path)  # fails if another process made it first: theirs stands
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    os.chmod(path, 0o600)
    return path.read_text().strip()


def _accepted(change_id: str) -> JSONResponse:
    return JSONResponse({"change_id": change_id}, status_code=202)


_bearer = HTTPBearer(auto_error=False)


def build_app(node: Node, token: str) -> FastAPI:
    def authorized(
        given: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if given is None or not hmac.compare_digest(given.credentials.encode(), token.encode()):
            raise Unauthorized("a valid node token is needed (the worker's edge-api-token)")

    app = FastAPI(
        title="edgeplane Edge API",
        dependencies=[Depends(authorized)],
        docs_url=None,
        redoc_url=None,
    )
    problems.install(app)

    @app.post("/api/v1/chutes", status_code=202)
    async def install(request: Request, store: str | None = None) -> JSONResponse:
        found = manifests.parse(await read_body(request))
        return _accepted((await node.install(found, _source(found, store))).id)

    @app.get("/api/v1/chutes")
    async def listing() -> list[dict[str, Any]]:
        return await node.listing()

    @app.get("/api/v1/chutes/{name}")
    async def show(name: str) -> dict[str, Any]:
        return await node.status(_name(name))

    @app.put("/api/v1/chutes/{name}", status_code=202)
    async def update(name: str, request: Request, store: str | None = None) -> JSONResponse:
        found = manifests.parse(await read_body(request))
        if found.name != _name(name):
            raise Invalid(f"the manifest is of {found.name!r}, not {name!r}", field="name")
        return _accepted((await node.update(found, _source(found, store))).id)

    @app.delete("/api/v1/chutes/{name}", status_code=202)
    async def delete(name: str) -> JSONResponse:
        return _accepted((await node.act(_name(name), "delete")).id)

    @app.post("/api/v1/chutes/{name}/{action}", status_code=202)
    async def act(name: str, action: str) -> JSONResponse:
        if action not in ("start", "stop", "restart"):
            raise Invalid(f"unknown action {action!r}: start, stop or restart", field="action")
        return _accepted((await node.act(_name(name), action)).id)

    @app.get("/api/v1/chutes/{name}/logs", response_model=None)
    async def logs(
        name: str, service: str | None = None, follow: bool = False
    ) -> PlainTextResponse | StreamingResponse:
        if not follow:
            return PlainTextResponse(node.logs(_name(name), service))
        stream = node.follow(_name(name), service)
        return StreamingResponse(stream, media_type="text/plain")

    @app.get("/api/v1/chutes/{name}/config")
    async def get_config(name: str) -> dict[str, Any]:
        return node.config(_name(name))

    @app.put("/api/v1/chutes/{name}/config", status_code=202)
    async def set_config(name: str, request: Request) -> JSONResponse:
        body = await read_body(request)
        if not isinstance(body, dict):
            raise Invalid("the config is an object of keys to values", field="config")
        if len(json.dumps(body)) > MAX_CONFIG_BYTES:
            raise Invalid(f"the config is over {MAX_CONFIG_BYTES} bytes", field="config")
        checked = manifests.parse_config(body)
        return _accepted((await node.set_config(_name(name), checked)).id)

    @app.get("/api/v1/changes/{change_id}")
    async def change(change_id: str) -> dict[str, Any]:
        return node.changes.get(change_id).public()

    @app.get("/api/v1/changes/{change_id}/stream")
    async def stream(change_id: str) -> StreamingResponse:
        node.changes.get(change_id)  # a 404 before the stream starts

        async def events() -> AsyncIterator[str]:
            async for view in node.changes.follow(change_id):
                yield f"event: change\ndata: {json.dumps(view)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/api/v1/info")
    async def info() -> dict[str, Any]:
        return await node.info()

    return app


#: the chutes' API port on the node's bridge gateway
CHUTE_API_PORT = 7072


def _chute_caller(
    request: Request, given: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The chute whose token came with the call, from that chute's own address."""
    node: Node = request.app.state.node
    address = None if request.client is None else request.client.host
    name = None if given is None else node.chute_calling(given.credentials, address)
    if name is None:
        raise Unauthorized("a chute's own token is needed (/run/chute/token), from that chute")
    return name


Caller = Annotated[str, Depends(_chute_caller)]


def build_chute_app(node: Node) -> FastAPI:
    app = FastAPI(title="edgeplane chute API", docs_url=None, redoc_url=None)
    app.state.node = node
    problems.install(app)

    @app.get("/api/v1/self")
    async def self_status(name: Caller) -> dict[str, Any]:
        return {**(await node.status(name, probe=False)), "config": node.config(name)}

    @app.get("/api/v1/self/config")
    async def self_config(name: Caller) -> dict[str, Any]:
        return node.config(name)

    @app.get("/api/v1/info")
    async def info(name: Caller) -> dict[str, Any]:
        return await node.info()

    return app


def _source(manifest: manifests.Manifest, store: str | None) -> dict[str, str] | None:
    """Where the manifest came from: ``?store=NAME@VERSION`` (the control plane's chute
    store), which must be the manifest's own name and version; its digest computed here."""
    if store is None:
        return None
    ref = catalog.parse_ref(store)
    if (ref.name, ref.version) != (manifest.name, manifest.version):
        raise Invalid(
            f"store: {store!r} is not the manifest's {manifest.name}@{manifest.version}",
            field="store",
        )
    return {"store": str(ref), "digest": catalog.digest(manifest)}


def _name(name: str) -> str:
    """A chute name from a path: checked before it comes near a file name."""
    if not manifests.valid_name(name):
        raise Invalid(f"{name!r} is not a chute name", field="name")
    return name


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the worker owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(f"--api wants HOST:PORT, not {value!r}", field="api")
    return host.strip("[]") or "127.0.0.1", int(port)


class EdgeApi:
    """The node, its change queue and the API serving them, started and stopped together."""

    def __init__(self, node: Node, data_dir: Path, listen: str) -> None:
        self.node = node
        self.host, self.port = parse_listen(listen)
        self.token = node_token(data_dir)
        self.app = build_app(node, self.token)
        self._server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.node.start()
        self._server, self._serving = await _serve(self.app, self.host, self.port, "Edge API")

    async def stop(self) -> None:
        await _stop(self._server, self._serving)
        await self.node.close()


class ChuteApi:
    """The chutes' read-only API of their node, on the bridge gateway (the node's
    lifetime is its :class:`EdgeApi`'s)."""

    def __init__(self, node: Node, host: str, port: int = CHUTE_API_PORT) -> None:
        self.node = node
        self.host, self.port = host, port
        self._server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server, self._serving = await _serve(
            build_chute_app(self.node), self.host, self.port, "chute API"
        )

    async def stop(self) -> None:
        await _stop(self._server, self._serving)


async def _serve(
    app: FastAPI, host: str, port: int, what: str
) -> tuple[_Server, asyncio.Task[None]]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Invalid(
            f"the {what} cannot listen on {host}:{port}: {exc.strerror}", field="api"
        ) from None
    sock.listen(128)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name=what)
    while not server.started:
        if serving.done():
            serving.result()
            raise RuntimeError(f"the {what} stopped during start-up")
        await asyncio.sleep(0.01)
    return server, serving


async def _stop(server: _Server | None, serving: asyncio.Task[None] | None) -> None:
    if server is not None and serving is not None:
        server.should_exit = True
        # streams (log follow, SSE) never end on their own
        server.force_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 5)
