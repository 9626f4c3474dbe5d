"""``edgeplane up``: broker, store, control plane and local workers in one process.

With ``--clusters N`` it runs the whole hierarchy instead: a root (API, store, its own
broker) over N clusters, each a manager with its own embedded broker and local workers,
registering with the root over MQTT exactly as separate machines would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from edgeplane.config import Settings
from edgeplane.errors import Unavailable
from edgeplane.examples import write_examples
from edgeplane.logs import setup as setup_logs
from edgeplane.modules import process_cache
from edgeplane.roles.control import ENDPOINT_FILE, ControlPlane, broker_auth, start_broker
from edgeplane.roles.signals import wait_for_stop
from edgeplane.roles.worker import build_worker
from edgeplane.worker import WorkerAgent
from edgeplane.worker.joining import Identity


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


def _worker_ids(settings: Settings) -> list[str]:
    return [f"{settings.cluster_id}-{n}" for n in range(1, settings.workers + 1)]


async def _workers(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    broker_url: str,
    identities: dict[str, Identity],
) -> list[WorkerAgent]:
    agents = []
    # One module cache for the process: a module compiled when its task was admitted is
    # not compiled again by the worker that runs it.
    modules = process_cache(settings.data_dir / "modules")
    for worker_id in _worker_ids(settings):
        agent = build_worker(
            settings,
            broker_url=broker_url,
            worker_id=worker_id,
            data_dir=settings.data_dir / "workers" / worker_id,
            modules=modules,
            identity=identities.get(worker_id),
        )
        await agent.start()
        stack.push_async_callback(agent.stop)
        agents.append(agent)
    return agents


async def _cluster(
    stack: contextlib.AsyncExitStack, settings: Settings, *, serve_api: bool
) -> ClusterStack:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    auth = broker_auth(settings)
    # The in-process workers get their identities directly (no join token), before the
    # broker starts so that its first reading of the files knows them.
    identities = {}
    if auth is not None:
        for worker_id in _worker_ids(settings):
            credentials = auth.add_worker(worker_id)
            identities[worker_id] = Identity(
                worker_id, credentials.username, credentials.password, credentials.mac_key
            )
    broker_url = await start_broker(stack, settings, auth)
    control = ControlPlane(settings, broker_url, serve_api=serve_api, auth=auth)
    await control.start()
    stack.push_async_callback(control.stop)
    workers = await _workers(stack, settings, broker_url, identities)
    return ClusterStack(control=control, broker_url=broker_url, workers=workers)


def cluster_settings(settings: Settings, n: int, root_url: str) -> Settings:
    """Settings of cluster ``n`` of ``up --clusters``: own id, data dir, store and broker."""
    cluster_id = f"cluster-{n}"
    data_dir = settings.data_dir / "clusters" / cluster_id
    return settings.model_copy(
        update={
            "cluster_id": cluster_id,
            "data_dir": data_dir,
            "store": f"sqlite:///{data_dir / 'edgeplane.db'}",
            "broker": "",
            "root": root_url,
            "clusters": 0,
        }
    )


@contextlib.asynccontextmanager
async def running_stack(settings: Settings) -> AsyncIterator[Stack]:
    """Everything ``up`` runs, torn down in reverse order on exit."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        if settings.clusters == 0:
            one = await _cluster(stack, settings, serve_api=True)
            result = Stack(control=one.control, broker_url=one.broker_url, workers=one.workers)
        else:
            root_url = await start_broker(stack, settings)
            root = ControlPlane(settings, root_url, root=True)
            await root.start()
            stack.push_async_callback(root.stop)
            result = Stack(control=root, broker_url=root_url)
            for n in range(1, settings.clusters + 1):
                cluster = await _cluster(
                    stack, cluster_settings(settings, n, root_url), serve_api=False
                )
                result.clusters.append(cluster)
                result.workers.extend(cluster.workers)
        (settings.data_dir / ENDPOINT_FILE).write_text(result.control.url + "\n")
        yield result


async def run_up(settings: Settings) -> None:
    setup_logs(settings.log_level)
    # Before the API answers: whoever sees it healthy may run the examples at once.
    examples = write_examples(settings.data_dir / "examples")
    async with running_stack(settings) as stack:
        token = stack.control.token_file or "$EDGEPLANE_ADMIN_TOKEN"
        clusters = "".join(
            f"  cluster:  {c.control.settings.cluster_id} (broker {c.broker_url}; workers "
            f"{', '.join(w.id for w in c.workers) or 'none'})\n"
            for c in stack.clusters
        )
        print(
            f"edgeplane is up\n"
            f"  API:      {stack.control.url}/api/v1   (docs: {stack.control.url}/docs)\n"
            f"  dashboard: {stack.control.url}/dashboard\n"
            f"  token:    {token}\n"
            f"  broker:   {stack.broker_url}\n"
            + (clusters or f"  workers:  {', '.join(w.id for w in stack.workers) or 'none'}\n")
            + f"first task (in another terminal):\n"
            f"  edgeplane task run {examples['add.wasm']} add 2 3\n",
            flush=True,
        )
        leadership = stack.control.leadership
        assert leadership is not None
        deposed = asyncio.Event()
        watching = asyncio.create_task(_set_when(leadership.lost, deposed))
        await wait_for_stop(deposed)
        watching.cancel()
        if leadership.lost.is_set():
            # Its workers run in this process: standing by would leave them idle, so `up`
            # stops and says why (the other process goes on).
            raise Deposed(f"another process leads this cluster now: {leadership.why}")


async def _set_when(event: asyncio.Event, then: asyncio.Event) -> None:
    await event.wait()
    then.set()
