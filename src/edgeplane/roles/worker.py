"""``edgeplane worker``: one worker process dialing out to its manager's broker."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeplane import tracing
from edgeplane.artifacts import registry_config
from edgeplane.config import Settings, parse_listen
from edgeplane.errors import Invalid
from edgeplane.logs import setup as setup_logs
from edgeplane.modules import ModuleCache
from edgeplane.protocol import Topics
from edgeplane.protocol.topics import check_segment
from edgeplane.roles.lock import hold_data_dir
from edgeplane.roles.signals import wait_for_stop
from edgeplane.runtimes import ContainerRuntime, HostRuntime, Runtime, available_runtimes
from edgeplane.runtimes.taskuser import configured
from edgeplane.security import joining
from edgeplane.security.joining import CREDENTIALS_FILE, Identity
from edgeplane.tls import trusted_ca
from edgeplane.transport import without_credentials
from edgeplane.worker import WorkerAgent, WorkerOptions

if TYPE_CHECKING:
    from edgeplane.chutes.network import NodeNetwork

log = logging.getLogger(__name__)


def announce_host_user(settings: Settings) -> None:
    """Log, once per process, who host tasks run as; a warning when that is root."""
    user = configured(settings.allow_host, settings.host_user)
    if user is None or not settings.allow_host:
        return
    if user.uid == 0:
        log.warning(
            "host tasks run as root (--host-user root): any host task may do anything "
            "on this machine",
            extra={"host_user": user.name},
        )
    else:
        log.info("host tasks run as %s", user.name, extra={"host_user": user.name, "uid": user.uid})


def secure_worker_dir(data_dir: Path) -> None:
    """Make a worker's data dir 0700 and its credentials 0600 (an older version's, or
    ones copied in by hand, are narrowed here on every start): host tasks may run as
    another user, who must read none of it (broker password, command key, task env)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    credentials = data_dir / CREDENTIALS_FILE
    if credentials.exists():
        os.chmod(credentials, 0o600)


def stable_worker_id(data_dir: Path) -> str:
    """The id this machine used before, or a new ``hostname-xxxxxx`` kept in the data dir."""
    path = data_dir / "worker-id"
    if path.exists():
        # kept by an older version, which allowed '.': say which file, not just the id
        return check_segment(path.read_text().strip(), "worker_id", f"the worker id kept in {path}")
    data_dir.mkdir(parents=True, exist_ok=True)
    # a host name may hold dots (``edge1.example.org``), which no topic level may
    host = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname().split(".")[0]).strip("-_")
    worker_id = f"{host[:50] or 'worker'}-{uuid.uuid4().hex[:6]}"
    path.write_text(worker_id + "\n")
    return worker_id


def node_network(settings: Settings, directory: Path) -> NodeNetwork | str:
    """The node's bridge network, which its chutes and its container tasks with
    ``network: bridge`` share (leases in ``directory``), or why it has none. One per
    machine: the workers of one process (``up``) are given the same one."""
    from edgeplane.chutes.network import NodeNetwork, bridge_unavailable

    why = bridge_unavailable() if settings.chute_network else "turned off (chute_network)"
    if why is not None:
        return why
    net = NodeNetwork(
        directory,
        bridge=settings.bridge,
        subnet=settings.bridge_subnet,
        table=settings.nft_table,
    )
    unusable = net.unusable()
    if unusable is not None:
        log.warning("no bridge network for chutes and container tasks: %s", unusable)
    return net if unusable is None else unusable


def build_worker(
    settings: Settings,
    *,
    broker_url: str,
    worker_id: str,
    data_dir: Path,
    labels: Mapping[str, str] | None = None,
    modules: ModuleCache | None = None,
    identity: Identity | None = None,
    secret_key: bytes | None = None,
    network: NodeNetwork | str | None = None,
) -> WorkerAgent:
    """A worker with the runtimes ``settings`` allow. Its wasm modules come from
    ``modules``, by default the process's one cache (see ``edgeplane.modules``); its
    container tasks' bridge network is ``network`` (or why there is none; default: one of
    its own in ``data_dir/net``, see :func:`node_network`).

    The data dir is made 0700 first: it holds the worker's broker credentials, its
    command key and its tasks' handles (their env), none of which a host task running as
    another user may read."""
    task_user = configured(settings.allow_host, settings.host_user)
    secure_worker_dir(data_dir)
    runtimes = available_runtimes(
        allow_host=settings.allow_host,
        cache_dir=data_dir / "modules",
        data_dir=data_dir,
        allow_containers=settings.containers,
        images_dir=settings.images_dir,
        registries=registry_config.load(
            settings.registries or registry_config.default_file(settings.data_dir)
        ),
        modules=modules,
        wasm_memory_mb=settings.wasm_memory_mb,
        wasm_timeout_s=settings.wasm_timeout_s,
        wasm_max_memory_mb=settings.wasm_max_memory_mb,
        host_user=task_user,
    )
    # What this worker no longer offers may still have attempts left by an earlier run of
    # it (started with --allow-host, now without): those are found and stopped at start.
    cleaners: dict[str, Runtime] = {}
    if "host" not in runtimes:
        cleaners["host"] = HostRuntime()
    if "container" not in runtimes:
        cleaners["container"] = ContainerRuntime(data_dir, settings.images_dir)
    if network is None:
        network = node_network(settings, data_dir / "net")
    for runtime in (runtimes.get("container"), cleaners.get("container")):
        if isinstance(runtime, ContainerRuntime):
            if isinstance(network, str):
                runtime.no_network = network
            else:
                from edgeplane.chutes.network import TaskNetwork

                runtime.network = TaskNetwork(network, settings.service_port_range)
    options = WorkerOptions(
        worker_id=worker_id,
        broker_url=broker_url,
        data_dir=data_dir,
        domain=settings.domain,
        cluster_id=settings.cluster_id,
        labels=dict(labels or {}),
        slots=settings.slots,
        prefetch=settings.prefetch,
        heartbeat_s=settings.heartbeat_s,
        metrics_interval_s=settings.metrics_interval_s,
        ca=trusted_ca(settings.ca, settings.data_dir),
        username=None if identity is None else identity.username,
        password=None if identity is None else identity.password,
        mac_key=None if identity is None else identity.mac_key,
        secret_key=secret_key,
        artifact_cache_bytes=settings.artifact_cache_mb * 1024 * 1024,
        advertise_address=settings.advertise_address,
    )
    agent = WorkerAgent(options, runtimes, cleaners=cleaners)
    agent.tracer = tracing.tracer(settings.otel_endpoint, "edgeplane-worker")
    container = runtimes.get("container")
    if isinstance(container, ContainerRuntime):  # oci:// images through the proxy too
        container.puller.use_proxy(agent.fetcher.fetch, settings.pull)
    return agent


def chute_host(settings: Settings, data_dir: Path, net: NodeNetwork | str) -> dict[str, Any]:
    """The node's chute network (``net``, shared with its container tasks) and resource
    policy when it can have them (else none: loopback only, cgroup limits)."""
    from edgeplane.chutes.node import networking_available

    why = net if isinstance(net, str) else None
    if why is None:
        why = networking_available() if settings.chute_network else "turned off"
    if why is not None or isinstance(net, str):
        log.warning("chutes have loopback only and no disk or bandwidth limits: %s", why)
        return {}
    from edgeplane.chutes.network import ChuteNetwork
    from edgeplane.chutes.resources import ChuteEnforcer

    enforcer = ChuteEnforcer(data_dir / "chutes", hosts_dir=net.hosts_dir)
    return {"network": ChuteNetwork(net), "enforcer": enforcer}


async def start_chute_api(node: Any) -> Any:
    """The chutes' API of their node on its bridge gateway (a node with the real chute
    network only: on loopback only a chute has no way to the node)."""
    from edgeplane.chutes.edgeapi import ChuteApi
    from edgeplane.chutes.network import ChuteNetwork

    if not isinstance(node.network, ChuteNetwork):
        return None
    net = node.network.net
    await asyncio.to_thread(net.ensure_bridge)
    api = ChuteApi(node, net.gateway)
    try:
        await api.start()
    except Invalid as exc:  # e.g. another worker's on this bridge: chutes run without it
        log.warning("chutes have no API of their node: %s", exc)
        return None
    return api


async def run_worker(
    settings: Settings, *, worker_id: str | None = None, labels: Mapping[str, str] | None = None
) -> None:
    setup_logs(settings.log_level)
    announce_host_user(settings)
    data_dir = settings.data_dir / "worker"
    # Only the worker's user: it keeps its credentials, handle records and container
    # bundles here, which hold task env, secret env included (docs/security.md).
    secure_worker_dir(data_dir)
    with hold_data_dir(data_dir, "worker"):
        await _run_worker(settings, data_dir, worker_id, labels)


async def _run_worker(
    settings: Settings,
    data_dir: Path,
    worker_id: str | None,
    labels: Mapping[str, str] | None,
) -> None:
    broker_url = settings.broker or "mqtt://127.0.0.1:1883"
    identity = joining.load(data_dir)
    if identity is None and settings.join_token:
        wanted = worker_id or stable_worker_id(data_dir)
        topics = Topics(settings.domain, settings.cluster_id)
        ca = trusted_ca(settings.ca, settings.data_dir)
        identity = await joining.join(broker_url, topics, settings.join_token, wanted, ca=ca)
        path = joining.save(data_dir, identity)
        print(f"joined as {identity.member_id}; identity kept in {path}", flush=True)
    if identity is not None:
        # The identity's id is the broker username: the broker allows no other topics.
        worker_id = identity.member_id
        labels = {**identity.labels, **(labels or {})}
    # the chutes' network, where container tasks with network: bridge go too
    net = node_network(settings, data_dir / "chutes" / "net")
    agent = build_worker(
        settings,
        broker_url=broker_url,
        worker_id=worker_id or stable_worker_id(data_dir),
        data_dir=data_dir,
        labels=labels,
        identity=identity,
        network=net,
    )
    edge = chute_api = None
    if settings.edge_api:
        from edgeplane.chutes.edgeapi import EdgeApi  # only a node serving chutes pays for it
        from edgeplane.chutes.node import Node

        # Before the broker: the node stays manageable when no manager answers.
        registries = registry_config.load(
            settings.registries or registry_config.default_file(settings.data_dir)
        )
        node = Node(
            data_dir,
            settings.images_dir,
            registries=registries,
            **chute_host(settings, data_dir, net),
        )
        # oci:// images of chutes come as a task's do: through the cluster's proxy when the
        # registry cannot be reached (--pull); with no broker, only a direct pull works
        node.puller.use_proxy(agent.fetcher.fetch, settings.pull)
        node.usage = agent.monitor  # the services' samples go with the worker's others
        edge = EdgeApi(node, data_dir, settings.edge_api)
        await edge.start()
        print(f"edge api on http://{settings.edge_api}", flush=True)
        chute_api = await start_chute_api(node)
        from edgeplane.chutes.remote import RemoteChutes, RemoteLogs

        agent.chutes = RemoteChutes(edge.app, edge.token)
        agent.chute_events = node.events
        agent.chute_logs = RemoteLogs(node, agent.send_chute_logs)
    exposition = None
    try:
        await agent.start()
        print(f"worker {agent.id} connected to {without_credentials(broker_url)}", flush=True)
        if settings.metrics_listen:
            from edgeplane.worker.exposition import serve

            host, port = parse_listen(settings.metrics_listen)
            exposition = serve(agent, host, port)
            print(f"Prometheus text at http://{settings.metrics_listen}/metrics", flush=True)
        try:
            await wait_for_stop(agent.refused)
        finally:
            if exposition is not None:
                exposition.shutdown()
                exposition.server_close()
            await agent.stop()
    finally:
        if chute_api is not None:
            await chute_api.stop()
        if edge is not None:
            await edge.stop()
    if agent.refused.is_set():
        raise Invalid(agent.refusal)
