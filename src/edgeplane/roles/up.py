"""``edgeplane up``: broker, store, control plane and local workers in one process.

With ``--clusters N`` it runs the whole hierarchy instead: a root (API, store, its own
broker) over N clusters, each a manager with its own embedded broker and local workers,
joining the root with a token it mints and registering over MQTT exactly as separate
machines would.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgeplane.config import Settings
from edgeplane.errors import Unavailable
from edgeplane.examples import write_examples
from edgeplane.logs import setup as setup_logs
from edgeplane.manager.uplink import IDENTITY_DIR
from edgeplane.modules import process_cache
from edgeplane.roles.control import ENDPOINT_FILE, ControlPlane, broker_auth, start_broker
from edgeplane.roles.lock import hold_data_dir
from edgeplane.roles.signals import wait_for_stop
from edgeplane.roles.worker import announce_host_user, build_worker, node_network
from edgeplane.security import joining
from edgeplane.security.broker_auth import BrokerAuth
from edgeplane.security.joining import Identity
from edgeplane.transport import without_credentials
from edgeplane.worker import WorkerAgent

if TYPE_CHECKING:
    from edgeplane.chutes.network import NodeNetwork

#: The key an in-process worker of ``up --broker`` has secret env sealed to it with.
SECRET_KEY_FILE = "secret-key"


class Deposed(Unavailable):
    """``up`` lost the lease of its cluster to another process on its store."""


@dataclass
class ClusterStack:
    control: ControlPlane
    broker_url: str
    workers: list[WorkerAgent] = field(default_factory=list)


@dataclass
class Stack:
    #: what serves the API: the root with ``--clusters``, else the one cluster's manager
    control: ControlPlane
    broker_url: str
    workers: list[WorkerAgent] = field(default_factory=list)
    clusters: list[ClusterStack] = field(default_factory=list)


def _secret_key(data_dir: Path) -> bytes:
    """The key kept in ``data_dir/secret-key`` (0600), made on first use."""
    path = data_dir / SECRET_KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = b""
    if len(key) == 32:
        return key
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    os.replace(tmp, path)
    return key


def _worker_ids(settings: Settings) -> list[str]:
    return [f"{settings.cluster_id}-{n}" for n in range(1, settings.workers + 1)]


async def _workers(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    broker_url: str,
    identities: dict[str, Identity],
    secret_keys: dict[str, bytes],
    network: NodeNetwork | str,
) -> list[WorkerAgent]:
    agents = []
    # One module cache for the process: a module compiled when its task was admitted is
    # not compiled again by the worker that runs it.
    modules = process_cache(settings.data_dir / "modules")
    # One image dir for all of them (DATA_DIR/images), not one per worker: an image put
    # there once runs on whichever local worker gets the task.
    if settings.images_dir is None:
        settings = settings.model_copy(update={"images_dir": settings.data_dir / "images"})
    for worker_id in _worker_ids(settings):
        agent = build_worker(
            settings,
            broker_url=broker_url,
            worker_id=worker_id,
            data_dir=settings.data_dir / "workers" / worker_id,
            modules=modules,
            identity=identities.get(worker_id),
            secret_key=secret_keys.get(worker_id),
            network=network,
        )
        await agent.start()
        stack.push_async_callback(agent.stop)
        agents.append(agent)
    return agents


async def _cluster(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    *,
    serve_api: bool,
    network: NodeNetwork | str,
) -> ClusterStack:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    auth = broker_auth(settings)
    # The in-process workers get their identities directly (no join token), before the
    # broker starts so that its first reading of the files knows them.
    identities = {}
    secret_keys: dict[str, bytes] = {}
    if auth is not None:
        for worker_id in _worker_ids(settings):
            credentials = auth.add_member(worker_id)
            identities[worker_id] = Identity(  # (member_id, username, password, key)
                worker_id, credentials.username, credentials.password, credentials.mac_key
            )
    else:
        # A broker given with --broker is not edgeplane's: the in-process workers have no
        # identity on it, but still a key each that secret env is sealed to them with
        # (kept 0600 in their data dirs, so a restart opens what was sealed before it).
        secret_keys = {
            w: _secret_key(settings.data_dir / "workers" / w) for w in _worker_ids(settings)
        }
    broker_url = await start_broker(stack, settings, auth)
    control = ControlPlane(
        settings, broker_url, serve_api=serve_api, auth=auth, secret_keys=secret_keys
    )
    await control.start()
    stack.push_async_callback(control.stop)
    workers = await _workers(stack, settings, broker_url, identities, secret_keys, network)
    return ClusterStack(control=control, broker_url=broker_url, workers=workers)


def cluster_settings(settings: Settings, n: int, root_url: str) -> Settings:
    """Settings of cluster ``n`` of ``up --clusters``: own id, data dir, store and broker
    (on the root's broker host, at a port of its own kept in its data dir)."""
    cluster_id = f"cluster-{n}"
    data_dir = settings.data_dir / "clusters" / cluster_id
    return settings.model_copy(
        update={
            "cluster_id": cluster_id,
            "data_dir": data_dir,
            "store": f"sqlite:///{data_dir / 'edgeplane.db'}",
            "broker": "",
            "broker_host": settings.broker_endpoint[0],
            "broker_listen": "",
            "broker_port": 0,  # each cluster's broker picks its own
            "root": root_url,
            "clusters": 0,
        }
    )


#: seconds a join token ``up --clusters`` mints for its own cluster may be used: it is
#: used at once, by the same process
_CLUSTER_TOKEN_TTL_S = 300.0


def _with_join_token(settings: Settings, root_auth: BrokerAuth) -> Settings:
    """The cluster joins the embedded root as a separate machine would, with a token made
    for it alone; once it has joined (its identity is in its data dir) it needs none."""
    if joining.load(settings.data_dir / IDENTITY_DIR) is not None:
        return settings
    _, secret = root_auth.create_token(
        ttl_s=_CLUSTER_TOKEN_TTL_S,
        labels={},
        member_id=settings.cluster_id,
    )
    return settings.model_copy(update={"join_token": secret})


@contextlib.asynccontextmanager
async def running_stack(settings: Settings) -> AsyncIterator[Stack]:
    """Everything ``up`` runs, torn down in reverse order on exit."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # One bridge network for the machine, whichever cluster a worker is in: a network of
    # each worker's own would rewrite the others' rules (one nft table) and hand out the
    # same addresses.
    network = node_network(settings, settings.data_dir / "net")
    async with contextlib.AsyncExitStack() as stack:
        if settings.clusters == 0:
            one = await _cluster(stack, settings, serve_api=True, network=network)
            result = Stack(control=one.control, broker_url=one.broker_url, workers=one.workers)
        else:
            root_auth = broker_auth(settings, root=True)
            root_url = await start_broker(stack, settings, root_auth)
            root = ControlPlane(settings, root_url, root=True, auth=root_auth)
            await root.start()
            stack.push_async_callback(root.stop)
            result = Stack(control=root, broker_url=root_url)
            for n in range(1, settings.clusters + 1):
                member = cluster_settings(settings, n, root_url)
                if root_auth is not None:
                    member = _with_join_token(member, root_auth)
                cluster = await _cluster(stack, member, serve_api=False, network=network)
                result.clusters.append(cluster)
                result.workers.extend(cluster.workers)
        (settings.data_dir / ENDPOINT_FILE).write_text(result.control.url + "\n")
        yield result


async def run_up(settings: Settings) -> None:
    setup_logs(settings.log_level)
    announce_host_user(settings)
    with hold_data_dir(settings.data_dir, "`edgeplane up`"):
        await _run_up(settings)


async def _run_up(settings: Settings) -> None:
    # Before the API answers: whoever sees it healthy may run the examples at once.
    examples = write_examples(settings.data_dir / "examples")
    async with running_stack(settings) as stack:
        token = stack.control.token_file or "$EDGEPLANE_ADMIN_TOKEN"
        clusters = "".join(
            f"  cluster:  {c.control.settings.cluster_id} "
            f"(broker {without_credentials(c.broker_url)}; workers "
            f"{', '.join(w.id for w in c.workers) or 'none'})\n"
            for c in stack.clusters
        )
        # Once, on stdout, set apart by blank lines: on a terminal the logs (stderr) go on
        # around it, one line each.
        print(
            f"\nedgeplane is up\n"
            f"  API:      {stack.control.url}/api/v1   (docs: {stack.control.url}/docs)\n"
            f"  dashboard: {stack.control.url}/dashboard\n"
            f"  token:    {token}\n"
            f"  broker:   {without_credentials(stack.broker_url)}\n"
            + (clusters or f"  workers:  {', '.join(w.id for w in stack.workers) or 'none'}\n")
            + f"first task (in another terminal):\n"
            f"  edgeplane task run {examples['add.wasm']} add 2 3\n",
            flush=True,
            file=sys.stdout,
        )
        leadership = stack.control.leadership
        assert leadership is not None
        await wait_for_stop(leadership.lost)
        if leadership.lost.is_set():
            # Its workers run in this process: standing by would leave them idle, so `up`
            # stops and says why (the other process goes on).
            raise Deposed(f"another process leads this cluster now: {leadership.why}")
