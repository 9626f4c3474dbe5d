"""A control plane: store + manager + workflows + schedules + applications + REST API,
started and stopped as one. The same pieces make the root (``root=True``: its manager's
members are clusters) and a cluster's manager (with an uplink when it has a root)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from edgeplane.api import create_app
from edgeplane.api.standby import standby_app
from edgeplane.artifacts import registry_config
from edgeplane.artifacts.blobs import BlobStore
from edgeplane.artifacts.proxy import Proxy, StoreSource
from edgeplane.artifacts.registry_source import RegistrySource
from edgeplane.config import Settings
from edgeplane.errors import Fenced, Invalid, Unavailable
from edgeplane.manager import Manager, oci_modules
from edgeplane.manager.facade import Facade
from edgeplane.manager.joins import JoinDesk
from edgeplane.manager.leadership import Leadership, home_of, lease_name
from edgeplane.manager.schedules import Schedules
from edgeplane.manager.uplink import Uplink
from edgeplane.manager.workflows import Workflows
from edgeplane.protocol import Topics
from edgeplane.root import Applications
from edgeplane.security import TokenChecker, ensure_admin_token
from edgeplane.security.broker_auth import BrokerAuth
from edgeplane.security.files import secure_data_dir
from edgeplane.store import Store, open_store
from edgeplane.tls import ServerTls, refuse_plain_off_loopback, server_tls, trusted_ca
from edgeplane.transport import (
    EmbeddedBroker,
    MqttLink,
    kept_client_id,
    parse_broker_urls,
    unique_client_id,
)
from edgeplane.transport.broker import AuthFiles, dial_host, free_port, port_free

if TYPE_CHECKING:  # numpy is the fl extra's: imported only when it is installed
    from edgeplane.fl.coordinator import Coordinator

log = logging.getLogger(__name__)

#: The file in the data dir that ``up`` and ``root`` write the API's URL to.
ENDPOINT_FILE = "endpoint"


def serving_tls(settings: Settings) -> ServerTls | None:
    """What the API and the embedded broker serve (None: plain), by ``edgeplane.tls``."""
    broker_host = settings.broker_endpoint[0]
    hosts = (settings.host,) if settings.broker else (settings.host, broker_host)
    return server_tls(settings.data_dir, settings.tls_cert, settings.tls_key, hosts=hosts)


def with_trusted_ca(settings: Settings) -> Settings:
    """``settings`` with ``ca`` set to the CA its links verify brokers with."""
    return settings.model_copy(update={"ca": trusted_ca(settings.ca, settings.data_dir)})


def broker_auth(settings: Settings, *, root: bool = False) -> BrokerAuth | None:
    """The identities of the broker this manager (or, ``root``, this root) starts itself,
    or None when it was given one (``--broker``): edgeplane locks down only brokers it
    starts, and an external broker is the operator's to secure (a warning says so when
    its URL has no user)."""
    member = "cluster" if root else "worker"
    if settings.broker:
        nodes = parse_broker_urls(settings.broker)
        if any(node.username is None for node in nodes):
            log.warning(
                f"the broker is used without credentials: anyone who reaches it can act as "
                f"a {member} (see docs/broker-security.md)",
                extra={"broker": ",".join(str(node) for node in nodes)},
            )
        return None
    return BrokerAuth(
        settings.data_dir / "broker",
        Topics.for_root(settings.domain) if root else Topics(settings.domain, settings.cluster_id),
        now=time.time,
        reload=lambda: None,  # start_broker points it at the broker it starts
    )


async def start_broker(
    stack: contextlib.AsyncExitStack, settings: Settings, auth: BrokerAuth | None = None
) -> str:
    """``settings.broker``, or an embedded one in the data dir, stopped with ``stack``.

    The embedded broker listens where ``--broker-listen HOST:PORT`` says, else on
    ``--broker-host`` at ``--broker-port``, else at a port chosen once and kept
    (``broker/port`` in the data dir; a fixed port is for firewalls and Services):
    members were told its URL and dial it again, so a restarted root or manager must come
    back where it was. A port taken by something else is an error, never a silent move
    (members would be left dialing the old one for good)."""
    if settings.broker:
        return settings.broker
    directory = settings.data_dir / "broker"
    port_file = directory / "port"
    host, given = settings.broker_endpoint
    recorded = _recorded_port(port_file)
    port = given or recorded or free_port()
    tls = serving_tls(settings)
    refuse_plain_off_loopback("embedded broker", host, tls, settings.insecure)
    files = None if auth is None else AuthFiles(auth.password_file, auth.acl_file)
    broker = EmbeddedBroker(directory, port=port, auth=files, host=host, tls=tls)
    broker.reclaim()  # one an earlier run left holding the port
    if not port_free(host, port):
        if given:
            where = "--broker-listen" if settings.broker_listen else "--broker-port"
        else:
            where = f"kept in {port_file}" if recorded else "just chosen"
        raise Unavailable(
            f"the embedded broker's port {port} ({where}) is taken on {host}: another "
            "process holds it. Stop that process, or give --broker-listen HOST:PORT and "
            "point the members at the new address",
            field="broker_listen",
        )
    if auth is not None:
        auth.reload = broker.reload
    url = await broker.start()
    stack.push_async_callback(broker.stop)
    directory.mkdir(parents=True, exist_ok=True)
    port_file.write_text(f"{broker.port}\n")
    return url


def _recorded_port(path: Path) -> int | None:
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 1 <= port <= 65535 else None


def bind_api(host: str, port: int) -> socket.socket:
    """The API's listening socket (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        detail = f"the API cannot listen on {host}:{port}: {exc.strerror}"
        raise Invalid(detail, field="port") from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the role owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ControlPlane:
    def __init__(
        self,
        settings: Settings,
        broker_url: str,
        *,
        root: bool = False,
        serve_api: bool = True,
        auth: BrokerAuth | None = None,
        secret_keys: Mapping[str, bytes] | None = None,
    ) -> None:
        settings = with_trusted_ca(settings)
        self.settings = settings
        self.broker_url = broker_url
        self.serve_api = serve_api
        self.tls = serving_tls(settings) if serve_api else None
        if serve_api:
            refuse_plain_off_loopback("API", settings.host, self.tls, settings.insecure)
        # a transaction idle past the lease is the server's to end (SqlStore, hold_s)
        self.store: Store = open_store(
            settings.store_url, hold_s=settings.lease_s or settings.heartbeat_s
        )
        self.manager = Manager(
            settings, self.store, broker_url, root=root, auth=auth, secret_keys=secret_keys
        )
        self.auth = auth
        if auth is not None:  # identity changes go to the audit log (up's made before, too)
            auth.report_to(self.manager.audit.record)
        desk_id = unique_client_id(
            f"edgeplane-joins-{settings.domain}-{'root' if root else settings.cluster_id}"
        )
        self.joins = None if auth is None else JoinDesk(auth, broker_url, desk_id, settings.ca)
        facade = self.manager.facade
        self.workflows = Workflows(facade)
        self.schedules = Schedules(facade, self.workflows)
        #: federated learning (docs/fl.md): needs the fl extra (numpy, scikit-learn)
        self.fl = None if root else _coordinator(facade, settings, broker_url, auth)
        self.applications = Applications(facade)
        self.uplink = (
            Uplink(facade, settings.root, link_url=broker_url if settings.root_via_bridge else None)
            if (settings.root or settings.root_via_bridge) and not root
            else None
        )
        self.root = root
        #: the artifact proxy (a cluster's leader only; set by start)
        self.proxy: Proxy | None = None
        self.token_file: Path | None = None
        #: the API served (set once it serves)
        self.app: FastAPI | None = None
        self.url = ""
        #: set by start: the lease this process leads (or waits for)
        self.leadership: Leadership | None = None
        self._stack = contextlib.AsyncExitStack()
        self._socket: socket.socket | None = None
        self._server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Lead (standing by, serving :mod:`edgeplane.api.standby`, until the lease is
        this process's), then start everything that acts. :meth:`stop` undoes whatever
        part of it was done."""
        secure_data_dir(self.settings.data_dir, self.settings.store_url)
        stack = self._stack
        await self.store.open()
        stack.push_async_callback(self.store.close)
        if self.serve_api:
            self._socket = bind_api(self.settings.host, self.settings.port)
            stack.callback(self._socket.close)
            port = self._socket.getsockname()[1]
            scheme = "http" if self.tls is None else "https"
            # a wildcard address is not one to dial (nor one a certificate names)
            self.url = f"{scheme}://{dial_host(self.settings.host)}:{port}"
        await self._lead()
        if self.uplink is not None:
            # First of what acts: a refused join token stops the manager here.
            await self.uplink.join()
        self.token_file = await ensure_admin_token(
            self.store,
            self.settings.data_dir,
            self.settings.admin_token,
            self.manager.clock.now(),
            home_of(self.settings.data_dir),
        )
        # Before the manager commits anything: what it commits at once (results workers
        # kept while it was down) must reach the runs and the root (see load and attach).
        await self.workflows.load()
        if self.uplink is not None:
            await self.uplink.attach()
        await self.manager.start()
        stack.push_async_callback(self.manager.stop)
        if not self.root:
            await self._start_proxy()
        if self.joins is not None:
            await self.joins.start()
            stack.push_async_callback(self.joins.stop)
        await self.workflows.start()
        stack.push_async_callback(self.workflows.stop)
        await self.schedules.start()
        stack.push_async_callback(self.schedules.stop)
        await self.applications.start()
        stack.push_async_callback(self.applications.stop)
        if self.fl is not None:
            self.fl.api_url = self.settings.advertise_url or self.url
            await self.fl.start()
            stack.push_async_callback(self.fl.stop)
        if self.uplink is not None:
            await self.uplink.start()
            stack.push_async_callback(self.uplink.stop)
        if self.serve_api:
            await self._serve(self._app())
            stack.push_async_callback(self._stop_serving)

    async def _start_proxy(self) -> None:
        """Serve the modules the API stored to this cluster's workers (``artifacts/proxy.py``),
        under the proxy's own broker identity when edgeplane secures the broker; from then
        on start commands carry a module's digest, not its bytes. Only the leader serves."""
        settings = self.settings
        auth = None if self.auth is None else self.auth.proxy
        registries = registry_config.load(
            settings.registries or registry_config.default_file(settings.data_dir)
        )
        oci_modules.configure(registries)  # admission pulls oci:// modules with them
        max_bytes = settings.artifact_max_mb * 1024 * 1024
        self.proxy = Proxy(
            StoreSource(self.store),
            self.broker_url,
            Topics(settings.domain, settings.cluster_id),
            username=None if auth is None else auth.username,
            password=None if auth is None else auth.password,
            ca=settings.ca,
            max_bytes=max_bytes,
            registries=RegistrySource(registries),
            disk=BlobStore(settings.data_dir / "proxy" / "blobs", 2 * max_bytes),
        )
        await self.proxy.start()
        self._stack.push_async_callback(self.proxy.stop)
        self.manager.proxy_stats = self.proxy.stats
        self.manager.dispatcher.inline_artifacts = False

    async def _lead(self) -> None:
        """Hold the lease and fence the store's writes by its term; until then stand by
        (serving :mod:`edgeplane.api.standby`)."""
        leadership = self.leadership = Leadership(
            self.store,
            lease_name(self.settings.domain, self.settings.cluster_id, root=self.root),
            home=home_of(self.settings.data_dir),
            url=self.settings.advertise_url or self.url,
            ttl_s=self.settings.lease_s or self.settings.heartbeat_s,
            clock=self.manager.clock,
        )
        self._stack.push_async_callback(leadership.release)
        if not await leadership.claim():
            log.info(
                "standing by: another process leads",
                extra={"leader": leadership.leader.url if leadership.leader else None},
            )
            if self.serve_api:
                await self._serve(standby_app(lambda: leadership.leader, self.url))
                self._stack.push_async_callback(self._stop_serving)
            await leadership.acquire()
            if self.serve_api:
                await self._stop_serving()
        self.store.fence(leadership.name, leadership.term)
        self.manager.journal.on_fenced.append(leadership.on_fenced)
        self.manager.term = leadership.term
        if self.uplink is not None:
            self.uplink.lineage, self.uplink.term = leadership.lineage, leadership.term

    def _app(self) -> FastAPI:
        app = create_app(
            self.manager,
            TokenChecker(self.store, self.manager.clock),
            self.workflows,
            self.schedules,
            self.applications,
            max_body_mb=self.settings.max_body_mb,
            broker_auth=self.auth,
            uplink=self.uplink,
            fl=self.fl,
        )
        self.app = app
        return app

    async def _serve(self, app: ASGIApp) -> None:
        """Serve ``app`` on the API's socket (bound once, so a standby that starts to
        lead keeps its port and URL)."""
        assert self._socket is not None
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ssl_certfile=None if self.tls is None else str(self.tls.cert),
            ssl_keyfile=None if self.tls is None else str(self.tls.key),
        )
        self._server = _Server(config)
        # a duplicate of the socket: uvicorn closes the one it is given when it stops
        sockets = [self._socket.dup()]
        self._serving = asyncio.create_task(self._server.serve(sockets=sockets), name="api")
        while not self._server.started:
            if self._serving.done():
                self._serving.result()  # raises why it could not start
                raise RuntimeError("API server stopped during start-up")
            await asyncio.sleep(0.01)

    async def _stop_serving(self) -> None:
        server, serving = self._server, self._serving
        self._server = self._serving = None
        if server is not None and serving is not None:
            self.manager.journal.changes.close()  # open event streams end: none holds it
            self.manager.chutes.close()  # and the chutes' (log follows, change progress)
            if self.fl is not None:
                self.fl.close()  # and long-lived FL clients' asks for their next round
            server.should_exit = True
            await serving

    async def stop(self) -> None:
        """Stop what :meth:`start` started, in reverse order (the API first)."""
        await self._stack.aclose()


async def run_leading(
    make: Callable[[], ControlPlane], leading: Callable[[ControlPlane], None]
) -> None:
    """Run control planes one after another until SIGINT or SIGTERM: each stands by
    until it holds the lease, then leads (``leading`` is called, e.g. to print where it
    serves) until stopped or deposed; a deposed one is stopped and a new one stands by."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            control = make()
            try:
                if await _until(stop, control.start()):
                    leadership = control.leadership
                    assert leadership is not None
                    leading(control)
                    uplink = control.uplink
                    ends = [leadership.lost.wait()]
                    if uplink is not None:  # the root refused this cluster's id: give up
                        ends += [uplink.refused.wait(), uplink.superseded.wait()]
                    await _until(stop, _first(ends))
                    if uplink is not None and uplink.refused.is_set():
                        raise Invalid(uplink.refusal)
                    if uplink is not None and uplink.superseded.is_set():
                        # a later leader of this cluster registered: this process lost
                        # the lease, whether its renewal has noticed yet or not
                        log.warning("deposed: standing by again", extra={"why": uplink.refusal})
                    elif leadership.lost.is_set():
                        log.warning("deposed: standing by again", extra={"why": leadership.why})
            finally:
                try:
                    await control.stop()
                except Fenced as refused:
                    # A deposed leader's last writes (what a part flushes as it stops) are
                    # refused by the fence, as they must be: it stands by again all the same
                    # (once, under load, this ended the process instead).
                    log.warning("a write on stopping was refused", extra={"why": str(refused)})
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _first(waits: Sequence[Coroutine[Any, Any, object]]) -> None:
    """Return when the first of ``waits`` does (the others are cancelled)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until(stop: asyncio.Event, work: Coroutine[Any, Any, object]) -> bool:
    """Run ``work`` until it ends (True) or ``stop`` is set first (False: cancelled)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        task.result()  # raises what start raised
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def _coordinator(
    facade: Facade, settings: Settings, broker_url: str, auth: BrokerAuth | None
) -> Coordinator | None:
    """The federated learning coordinator, or None without the fl extra installed. It
    takes updates over MQTT too (the fallback of clients that cannot reach the API), on
    a link of its own with a persistent session, as the manager (docs/fl.md)."""
    try:
        from edgeplane.fl.coordinator import Coordinator
    except ImportError:
        log.info("federated learning is off: install edgeplane[fl] (numpy, scikit-learn)")
        return None
    directory = settings.data_dir / "fl"
    coordinator = Coordinator(facade, directory / "blobs", identities=auth)
    coordinator.listen(
        lambda handler: MqttLink(
            broker_url,
            client_id=kept_client_id(
                f"edgeplane-fl-{settings.domain}-{settings.cluster_id}", directory
            ),
            subscriptions=[coordinator.topics.fl_updates()],
            on_message=handler,
            clean_session=False,
            ca=settings.ca,
            username=None if auth is None else auth.manager.username,
            password=None if auth is None else auth.manager.password,
        )
    )
    return coordinator
