"""A control plane: store + manager + workflows + schedules + applications + REST API,
started and stopped as one. The same pieces make the root (``root=True``: its manager's
members are clusters) and a cluster's manager (with an uplink when it has a root)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from edgeplane.api import create_app
from edgeplane.config import Settings
from edgeplane.errors import Unavailable
from edgeplane.manager import Manager
from edgeplane.manager.joins import JoinDesk
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
from edgeplane.transport import EmbeddedBroker, parse_broker_url, unique_client_id
from edgeplane.transport.broker import AuthFiles, dial_host, free_port, port_free

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
        if parse_broker_url(settings.broker).username is None:
            log.warning(
                f"the broker is used without credentials: anyone who reaches it can act as "
                f"a {member} (see docs/broker-security.md)",
                extra={"broker": str(parse_broker_url(settings.broker))},
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
        self.store: Store = open_store(settings.store_url)
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
        self.applications = Applications(facade)
        self.uplink = Uplink(facade, settings.root) if settings.root and not root else None
        self.token_file: Path | None = None
        #: the API served (set once it serves)
        self.app: FastAPI | None = None
        self.url = ""
        self._server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        secure_data_dir(self.settings.data_dir, self.settings.store_url)
        if self.uplink is not None:
            # First: a refused join token stops the manager before it starts anything.
            await self.uplink.join()
        await self.store.open()
        self.token_file = await ensure_admin_token(
            self.store, self.settings.data_dir, self.settings.admin_token, self.manager.clock.now()
        )
        # Before the manager commits anything: what it commits at once (results workers
        # kept while it was down) must reach the runs and the root (see load and attach).
        await self.workflows.load()
        if self.uplink is not None:
            await self.uplink.attach()
        await self.manager.start()
        if self.joins is not None:
            await self.joins.start()
        await self.workflows.start()
        await self.schedules.start()
        await self.applications.start()
        if self.uplink is not None:
            await self.uplink.start()
        if self.serve_api:
            await self._serve()

    async def _serve(self) -> None:
        app = create_app(
            self.manager,
            TokenChecker(self.store, self.manager.clock),
            self.workflows,
            self.schedules,
            self.applications,
            max_body_mb=self.settings.max_body_mb,
            broker_auth=self.auth,
            uplink=self.uplink,
        )
        self.app = app
        config = uvicorn.Config(
            app,
            host=self.settings.host,
            port=self.settings.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ssl_certfile=None if self.tls is None else str(self.tls.cert),
            ssl_keyfile=None if self.tls is None else str(self.tls.key),
        )
        self._server = _Server(config)
        self._serving = asyncio.create_task(self._server.serve(), name="api")
        while not self._server.started:
            if self._serving.done():
                self._serving.result()  # raises why it could not start
                raise RuntimeError("API server stopped during start-up")
            await asyncio.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        scheme = "http" if self.tls is None else "https"
        # a wildcard address is not one to dial (nor one a certificate names)
        self.url = f"{scheme}://{dial_host(self.settings.host)}:{port}"

    async def stop(self) -> None:
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            await self._serving
        if self.uplink is not None:
            await self.uplink.stop()
        await self.applications.stop()
        await self.schedules.stop()
        await self.workflows.stop()
        if self.joins is not None:
            await self.joins.stop()
        await self.manager.stop()
        await self.store.close()
