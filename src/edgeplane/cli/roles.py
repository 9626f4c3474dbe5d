"""The role commands: ``edgeplane up``, ``root``, ``manager`` and ``worker``.

Each one turns its flags into :class:`edgeplane.config.Settings` (flags > env > file >
defaults; a flag not given stays None so it does not hide env or file) and hands over to
``edgeplane.roles.<role>``, imported only when the command runs so ``--help`` stays fast
(the roles pull in uvicorn, FastAPI, wasmtime…).
"""

from __future__ import annotations

from collections.abc import Coroutine
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgeplane.cli.tasks import pairs
from edgeplane.errors import Invalid
from edgeplane.limits import (
    DEFAULT_WASM_MAX_MEMORY_MB,
    DEFAULT_WASM_MEMORY_MB,
    DEFAULT_WASM_TIMEOUT_S,
    MAX_MEMORY_MB,
    MAX_TIMEOUT_S,
)

if TYPE_CHECKING:
    from edgeplane.config import Settings


class Scheduler(StrEnum):
    round_robin = "round-robin"
    priority = "priority"
    resource_fit = "resource-fit"


OtelOption = Annotated[
    str | None,
    typer.Option(
        "--otel-endpoint",
        help="OTLP/HTTP collector (http://HOST:4318) to export traces of tasks' paths to "
        "(needs the otel extra; default: no tracing).",
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", exists=True, dir_okay=False, help="YAML file of settings (below flags, env)."
    ),
]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="State directory (default ~/.edgeplane).")
]
StoreOption = Annotated[
    str | None,
    typer.Option(help="sqlite:///PATH, postgresql://HOST/DB or memory:// (default SQLite)."),
]
HostOption = Annotated[str | None, typer.Option(help="Address the REST API listens on.")]
PortOption = Annotated[int | None, typer.Option(min=0, max=65535, help="REST API port.")]
SchedulerOption = Annotated[Scheduler | None, typer.Option(help="Placement strategy.")]
HeartbeatOption = Annotated[
    float | None, typer.Option("--heartbeat-s", min=0.001, help="Worker heartbeat period, s.")
]
AdvertiseOption = Annotated[
    str | None,
    typer.Option(
        "--advertise-url",
        help="URL clients reach this process's API at, which standbys redirect to "
        "(default: its own).",
    ),
]
LeaseOption = Annotated[
    float | None,
    typer.Option(
        "--lease-s",
        min=0.001,
        help="Seconds the leader's lease lasts unrenewed (default: the heartbeat).",
    ),
]
LostGraceOption = Annotated[
    float | None,
    typer.Option(
        "--lost-grace-s",
        min=0,
        help="Seconds a lost worker's host/container tasks wait for it to come back and "
        "re-attach before they run elsewhere (default: heartbeat-s x 3; 0: none).",
    ),
]
AllowHostOption = Annotated[
    bool | None,
    typer.Option(
        "--allow-host/--no-allow-host",
        help="Let workers run host commands (off unless enabled).",
        show_default=False,
    ),
]
HostUserOption = Annotated[
    str | None,
    typer.Option(
        "--host-user",
        help="User host tasks run as (name or uid). Default: 'edgeplane-task' if it exists, "
        "else 'nobody', when the worker is root; else the worker's own user. "
        "'--host-user root' runs them as root.",
    ),
]
PullOption = Annotated[
    str | None,
    typer.Option(
        "--pull",
        help="How workers get oci:// container images (of tasks and chutes): 'direct' "
        "pulls them from the registry; 'proxy' asks the cluster's artifact proxy over MQTT "
        "(no route to the registry needed); 'auto' (the default) direct while the registry "
        "answers, else the proxy.",
    ),
]
RegistriesOption = Annotated[
    Path | None,
    typer.Option(
        "--registries",
        help="Registry config for pulls (default: $EDGEPLANE_REGISTRIES, else "
        "DATA_DIR/registries.yaml if there).",
    ),
]
ContainersOption = Annotated[
    bool | None,
    typer.Option(
        "--containers/--no-containers",
        help="Run container tasks when runc is installed and the worker is root (on by default).",
        show_default=False,
    ),
]
ImagesDirOption = Annotated[
    Path | None,
    typer.Option(
        "--images-dir",
        help="OCI image layouts for container tasks (default: DATA_DIR/images for `up`, "
        "DATA_DIR/worker/images for `worker`).",
    ),
]
ServicePortsOption = Annotated[
    str | None,
    typer.Option(
        "--service-ports",
        metavar="LOW-HIGH",
        help="Host ports workers publish container tasks' ports on, one free port each "
        "(default 20000-32000).",
    ),
]
AdvertiseAddressOption = Annotated[
    str | None,
    typer.Option(
        "--advertise-address",
        metavar="ADDRESS",
        help="The address workers' published ports are reached at, shown in tasks' "
        "endpoints (default: the address its default route leaves from).",
    ),
]
WasmMemoryOption = Annotated[
    int | None,
    typer.Option(
        "--wasm-memory-mb",
        min=1,
        max=MAX_MEMORY_MB,
        help=f"Memory of a wasm task that sets no limits.memory_mb (default "
        f"{DEFAULT_WASM_MEMORY_MB}).",
    ),
]
WasmMaxMemoryOption = Annotated[
    int | None,
    typer.Option(
        "--wasm-max-memory-mb",
        min=1,
        max=MAX_MEMORY_MB,
        help=f"The most memory a wasm task may ask for with limits.memory_mb (default "
        f"{DEFAULT_WASM_MAX_MEMORY_MB}): more fails the task, naming this flag.",
    ),
]
WasmTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--wasm-timeout-s",
        min=0.001,
        max=MAX_TIMEOUT_S,
        help=f"Running time of a wasm task (not a daemon) that sets no limits.timeout_s "
        f"(default {DEFAULT_WASM_TIMEOUT_S:g}).",
    ),
]
ClusterOption = Annotated[str | None, typer.Option("--cluster-id", help="Cluster id.")]
DomainOption = Annotated[
    str | None,
    typer.Option(help="MQTT topic domain: levels of letters, digits, '_', '-' joined by '/'."),
]
LogLevelOption = Annotated[str | None, typer.Option("--log-level", help="debug, info, warning…")]
BrokerHostOption = Annotated[
    str | None,
    typer.Option(
        "--broker-host",
        help="Address the embedded broker listens on (127.0.0.1), at the port kept in "
        "DATA_DIR/broker/port.",
    ),
]
BrokerListenOption = Annotated[
    str | None,
    typer.Option(
        "--broker-listen",
        metavar="HOST:PORT",
        help="Address and port the embedded broker listens on (wins over --broker-host; "
        "default: a port chosen once and kept in DATA_DIR/broker/port).",
    ),
]
BrokerPortOption = Annotated[
    int | None,
    typer.Option(
        "--broker-port",
        min=0,
        max=65535,
        help="Port of the embedded broker (default: the one it had before, else a free one).",
    ),
]
TlsCertOption = Annotated[
    Path | None,
    typer.Option(
        "--tls-cert",
        help="Certificate the API and embedded broker serve (default: DATA_DIR/certs/server.pem "
        "from `edgeplane certs init`, when listening off loopback).",
    ),
]
TlsKeyOption = Annotated[Path | None, typer.Option("--tls-key", help="Key of --tls-cert.")]
CaOption = Annotated[
    Path | None,
    typer.Option(
        "--ca",
        help="CA an mqtts:// broker's certificate must chain to (default: DATA_DIR/certs/ca.pem "
        "if there, else the system's).",
    ),
]
InsecureOption = Annotated[
    bool | None,
    typer.Option(
        "--insecure",
        help="Serve the API or embedded broker off loopback without TLS all the same.",
        show_default=False,
    ),
]


def _ca(ctx: typer.Context, given: Path | None) -> Path | None:
    """``--ca`` of a role: the CLI moves ``--ca`` in front of the subcommand (main.py
    ``hoist_global_options``), so it arrives as the global option."""
    from edgeplane.cli.output import Session

    found = ctx.find_object(Session)
    return given or (found.ca if found is not None else None)


def _settings(flags: dict[str, Any], config: Path | None) -> Settings:
    from pydantic import ValidationError

    from edgeplane.config import load

    if isinstance(flags.get("scheduler"), Scheduler):
        flags["scheduler"] = flags["scheduler"].value
    try:
        return load(flags, config)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise Invalid(f"{where}: {first['msg']}", field=where) from None


def _check_host_user(settings: Settings) -> None:
    """Refuse a ``--host-user`` the workers cannot run host tasks as (exit 2), before
    anything starts."""
    from edgeplane.runtimes.taskuser import configured

    configured(settings.allow_host, settings.host_user)


#: Allocations between young-generation collections (CPython's default is 700). A young
#: pass costs about as much however many of its objects died, so fewer, bigger passes
#: cost less: under the spine's throughput phase 10,000 took 0.43 s of collector CPU per
#: 20,000 no-op tasks (93 young and 8 middle passes), 50,000 took 0.14 s (7 young
#: passes, none older), ~14 µs per task (docs/benchmarks.md, "No-op throughput
#: regained"). A young pass then takes ~20 ms in that phase (~3 ms at 10,000); one task
#: at a time leaves little alive, so passes come seldom there and p99 did not move.
GC_YOUNG_THRESHOLD = 50_000


def _settle_gc() -> None:
    """Keep the cyclic garbage collector off what lives for the whole process.

    A daemon holds ~135,000 objects from its imports, and every older-generation pass
    walked them all: a batch of 1,000 task documents made enough garbage to trigger
    several. Freezing the startup heap and collecting the young generation less often
    took the dispatch benchmark from ~1,800 to ~2,800 tasks/s (docs/benchmarks.md).
    Cycles are still collected, just in bigger steps.
    """
    import gc

    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _run(main: Coroutine[Any, Any, None], *, uvloop_if_installed: bool = True) -> None:
    """Run a role; control planes on uvloop when it is installed (about 1 ms less latency,
    docs/benchmarks.md). A worker stays on asyncio: uvloop costs it ~3 MB of RSS on
    machines where memory is what is short."""
    import asyncio  # not at the top: it costs ``--help`` a tenth of a second

    _settle_gc()
    if uvloop_if_installed:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


ArtifactCacheOption = Annotated[
    int | None,
    typer.Option(
        "--artifact-cache-mb",
        min=1,
        help="MB of delivered artifacts a worker keeps on disk (default 1024; also the "
        "largest artifact it takes).",
    ),
]


ArtifactMaxOption = Annotated[
    int | None,
    typer.Option(
        "--artifact-max-mb",
        min=1,
        help="Largest artifact the proxy serves to workers, MB (default 512).",
    ),
]


def up(
    data_dir: DataDirOption = None,
    host: HostOption = None,
    port: PortOption = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Local workers (default 2).")] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            help="mqtt[s]://HOST:PORT (a cluster's nodes comma-separated); default: start one "
            "in-process."
        ),
    ] = None,
    store: StoreOption = None,
    scheduler: SchedulerOption = None,
    allow_host: AllowHostOption = None,
    host_user: HostUserOption = None,
    containers: ContainersOption = None,
    images_dir: ImagesDirOption = None,
    service_ports: ServicePortsOption = None,
    advertise_address: AdvertiseAddressOption = None,
    pull: PullOption = None,
    registries: RegistriesOption = None,
    heartbeat_s: HeartbeatOption = None,
    wasm_memory_mb: WasmMemoryOption = None,
    wasm_max_memory_mb: WasmMaxMemoryOption = None,
    wasm_timeout_s: WasmTimeoutOption = None,
    artifact_cache_mb: ArtifactCacheOption = None,
    artifact_max_mb: ArtifactMaxOption = None,
    lost_grace_s: LostGraceOption = None,
    clusters: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=16,
            help="Run a root over N clusters (each with its own broker and --workers workers).",
        ),
    ] = None,
    broker_host: BrokerHostOption = None,
    broker_listen: BrokerListenOption = None,
    broker_port: BrokerPortOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    insecure: InsecureOption = None,
    otel_endpoint: OtelOption = None,
    log_level: LogLevelOption = None,
    config: ConfigOption = None,
) -> None:
    """Run everything on this machine: broker, store, API, a manager and local workers.

    Prints the API URL and where the admin token is; `edgeplane task …` then finds both.
    """
    flags = {
        "clusters": clusters,
        "data_dir": data_dir,
        "host": host,
        "port": port,
        "workers": workers,
        "broker": broker,
        "store": store,
        "scheduler": scheduler,
        "allow_host": allow_host,
        "host_user": host_user,
        "containers": containers,
        "images_dir": images_dir,
        "service_ports": service_ports,
        "advertise_address": advertise_address,
        "pull": pull,
        "registries": registries,
        "heartbeat_s": heartbeat_s,
        "wasm_memory_mb": wasm_memory_mb,
        "wasm_max_memory_mb": wasm_max_memory_mb,
        "wasm_timeout_s": wasm_timeout_s,
        "artifact_cache_mb": artifact_cache_mb,
        "artifact_max_mb": artifact_max_mb,
        "lost_grace_s": lost_grace_s,
        "broker_host": broker_host,
        "broker_listen": broker_listen,
        "broker_port": broker_port,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "insecure": insecure,
        "otel_endpoint": otel_endpoint,
        "log_level": log_level,
    }
    settings = _settings(flags, config)
    _check_host_user(settings)
    from edgeplane.roles.up import run_up

    _run(run_up(settings))


ApiBrokerOption = Annotated[
    str | None,
    typer.Option(
        help="mqtt[s]://HOST:PORT of its own broker (a cluster's nodes comma-separated); "
        "default: start one."
    ),
]


def root(
    ctx: typer.Context,
    broker: ApiBrokerOption = None,
    store: StoreOption = None,
    host: HostOption = None,
    port: PortOption = None,
    domain: DomainOption = None,
    pack: Annotated[
        bool | None,
        typer.Option(
            "--pack/--spread",
            help="Place on the fullest or the emptiest cluster that fits.",
            show_default=False,
        ),
    ] = None,
    heartbeat_s: HeartbeatOption = None,
    advertise_url: AdvertiseOption = None,
    lease_s: LeaseOption = None,
    data_dir: DataDirOption = None,
    broker_host: BrokerHostOption = None,
    broker_listen: BrokerListenOption = None,
    broker_port: BrokerPortOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    ca: CaOption = None,
    insecure: InsecureOption = None,
    otel_endpoint: OtelOption = None,
    log_level: LogLevelOption = None,
    config: ConfigOption = None,
) -> None:
    """Run the root: REST API, store, applications; clusters register over MQTT."""
    flags = {
        "advertise_url": advertise_url,
        "lease_s": lease_s,
        "broker": broker,
        "store": store,
        "host": host,
        "port": port,
        "domain": domain,
        "pack": pack,
        "heartbeat_s": heartbeat_s,
        "data_dir": data_dir,
        "broker_host": broker_host,
        "broker_listen": broker_listen,
        "broker_port": broker_port,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "ca": _ca(ctx, ca),
        "insecure": insecure,
        "otel_endpoint": otel_endpoint,
        "log_level": log_level,
    }
    settings = _settings(flags, config)
    from edgeplane.roles.root import run_root

    _run(run_root(settings))


def manager(
    ctx: typer.Context,
    broker: ApiBrokerOption = None,
    root: Annotated[
        str | None,
        typer.Option(
            help="mqtt[s]://HOST:PORT of the root's broker to register with (a cluster's "
            "nodes comma-separated)."
        ),
    ] = None,
    join: Annotated[
        str | None,
        typer.Option(
            "--join",
            help="With --root: join token from the root's `POST /api/v1/join-tokens` (or "
            "$EDGEPLANE_JOIN_TOKEN): used once, the identity it buys is kept in the data dir.",
        ),
    ] = None,
    root_via_bridge: Annotated[
        bool | None,
        typer.Option(
            "--root-via-bridge",
            help="Reach the root through --broker, which a Mosquitto bridge links to the "
            "root's broker (docs/brokers.md); --root is then only where it joins.",
            show_default=False,
        ),
    ] = None,
    root_credentials: Annotated[
        Path | None,
        typer.Option(
            "--root-credentials",
            help="The cluster's identity at the root (a credentials.json a join made "
            "elsewhere), read instead of DATA_DIR/uplink/: several managers share one.",
        ),
    ] = None,
    print_bridge_config: Annotated[
        bool,
        typer.Option(
            "--print-bridge-config",
            help="Join the root if not joined yet (--root, --join), print the Mosquitto "
            "bridge config for the cluster's broker with its identity, and exit.",
        ),
    ] = False,
    name: Annotated[str | None, typer.Option(help="Cluster name shown by the root.")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Cluster label k=v, repeatable.")
    ] = None,
    location: Annotated[
        str | None, typer.Option(help="lat,lon of the cluster, for geo constraints.")
    ] = None,
    aggregate_interval_s: Annotated[
        float | None, typer.Option("--aggregate-interval-s", min=0.01, help="Aggregate period.")
    ] = None,
    store: StoreOption = None,
    host: HostOption = None,
    port: PortOption = None,
    cluster_id: ClusterOption = None,
    domain: DomainOption = None,
    scheduler: SchedulerOption = None,
    pack: Annotated[
        bool | None,
        typer.Option(
            "--pack/--spread", help="resource-fit: bin-pack or spread.", show_default=False
        ),
    ] = None,
    heartbeat_s: HeartbeatOption = None,
    lost_grace_s: LostGraceOption = None,
    artifact_max_mb: ArtifactMaxOption = None,
    registries: RegistriesOption = None,
    advertise_url: AdvertiseOption = None,
    lease_s: LeaseOption = None,
    data_dir: DataDirOption = None,
    broker_host: BrokerHostOption = None,
    broker_listen: BrokerListenOption = None,
    broker_port: BrokerPortOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    ca: CaOption = None,
    insecure: InsecureOption = None,
    otel_endpoint: OtelOption = None,
    log_level: LogLevelOption = None,
    config: ConfigOption = None,
) -> None:
    """Run a cluster manager (tasks, scheduling, liveness) with its REST API."""
    flags = {
        "broker": broker,
        "root": root,
        "root_via_bridge": root_via_bridge,
        "root_credentials": root_credentials,
        "join_token": join,
        "cluster_name": name,
        "labels": pairs(label, "--label") if label else None,
        "location": location,
        "aggregate_interval_s": aggregate_interval_s,
        "store": store,
        "host": host,
        "port": port,
        "cluster_id": cluster_id,
        "domain": domain,
        "scheduler": scheduler,
        "pack": pack,
        "heartbeat_s": heartbeat_s,
        "lost_grace_s": lost_grace_s,
        "artifact_max_mb": artifact_max_mb,
        "registries": registries,
        "advertise_url": advertise_url,
        "lease_s": lease_s,
        "data_dir": data_dir,
        "broker_host": broker_host,
        "broker_listen": broker_listen,
        "broker_port": broker_port,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "ca": _ca(ctx, ca),
        "insecure": insecure,
        "otel_endpoint": otel_endpoint,
        "log_level": log_level,
    }
    settings = _settings(flags, config)
    if settings.cluster_id == "clusters":
        raise typer.BadParameter("'clusters' is reserved", param_hint="--cluster-id")
    if join and not settings.root:
        raise typer.BadParameter("a join token is for a root: give --root too", param_hint="--join")
    if print_bridge_config:
        import asyncio

        from edgeplane.manager.bridge import export

        typer.echo(asyncio.run(export(settings)), nl=False)
        return
    if settings.root_via_bridge and not settings.broker:
        raise typer.BadParameter(
            "the bridge is in the config of the cluster's broker, which the operator runs: "
            "give --broker too",
            param_hint="--root-via-bridge",
        )
    if settings.location:
        from edgeplane.model.cluster import parse_location

        parse_location(settings.location)
    from edgeplane.roles.manager import run_manager

    _run(run_manager(settings))


def worker(
    ctx: typer.Context,
    manager: Annotated[
        str | None,
        typer.Option(
            help="mqtt[s]://HOST:PORT: the broker of the cluster to join (a clustered "
            "broker's nodes comma-separated: mqtt://a:1883,mqtt://b:1883)."
        ),
    ] = None,
    cluster_id: ClusterOption = None,
    domain: DomainOption = None,
    worker_id: Annotated[
        str | None, typer.Option("--worker-id", help="Stable id (default: generated, kept).")
    ] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="k=v, repeatable.")] = None,
    slots: Annotated[
        int | None, typer.Option(min=0, help="Tasks run at once (default 0: 8 per cpu).")
    ] = None,
    prefetch: Annotated[
        int | None,
        typer.Option(min=1, help="Tasks held per slot, queued here until a slot frees (1 = none)."),
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(
            "--api",
            help="HOST:PORT: serve the node-local Edge API (chutes) there, e.g. 127.0.0.1:7071.",
        ),
    ] = None,
    join: Annotated[
        str | None,
        typer.Option(
            "--join",
            help="Join token from `POST /api/v1/join-tokens` (or $EDGEPLANE_JOIN_TOKEN): "
            "used once, the identity it buys is kept in the data dir.",
        ),
    ] = None,
    allow_host: AllowHostOption = None,
    host_user: HostUserOption = None,
    containers: ContainersOption = None,
    images_dir: ImagesDirOption = None,
    service_ports: ServicePortsOption = None,
    advertise_address: AdvertiseAddressOption = None,
    pull: PullOption = None,
    registries: RegistriesOption = None,
    data_dir: DataDirOption = None,
    heartbeat_s: HeartbeatOption = None,
    wasm_memory_mb: WasmMemoryOption = None,
    wasm_max_memory_mb: WasmMaxMemoryOption = None,
    wasm_timeout_s: WasmTimeoutOption = None,
    metrics_interval_s: Annotated[
        float | None,
        typer.Option(
            "--metrics-interval",
            min=0,
            max=3600,
            help="Seconds between samples of this node's usage (0: none; default 10).",
        ),
    ] = None,
    metrics_listen: Annotated[
        str | None,
        typer.Option(
            "--metrics-listen",
            metavar="HOST:PORT",
            help="Serve this worker's Prometheus text at http://HOST:PORT/metrics.",
        ),
    ] = None,
    artifact_cache_mb: ArtifactCacheOption = None,
    ca: CaOption = None,
    otel_endpoint: OtelOption = None,
    log_level: LogLevelOption = None,
    config: ConfigOption = None,
) -> None:
    """Run a worker: `edgeplane worker --manager mqtt[s]://HOST:PORT`. It only dials out."""
    flags = {
        "broker": manager,
        "cluster_id": cluster_id,
        "domain": domain,
        "slots": slots,
        "prefetch": prefetch,
        "allow_host": allow_host,
        "host_user": host_user,
        "containers": containers,
        "images_dir": images_dir,
        "service_ports": service_ports,
        "advertise_address": advertise_address,
        "pull": pull,
        "registries": registries,
        "data_dir": data_dir,
        "heartbeat_s": heartbeat_s,
        "wasm_memory_mb": wasm_memory_mb,
        "wasm_max_memory_mb": wasm_max_memory_mb,
        "wasm_timeout_s": wasm_timeout_s,
        "metrics_interval_s": metrics_interval_s,
        "metrics_listen": metrics_listen,
        "artifact_cache_mb": artifact_cache_mb,
        "ca": ca,
        "otel_endpoint": otel_endpoint,
        "log_level": log_level,
        "join_token": join,
        "edge_api": api,
    }
    if ctx.invoked_subcommand is not None:
        if any(v is not None for v in flags.values()) or worker_id or label or config:
            raise typer.BadParameter(
                f"worker options run a worker; `worker {ctx.invoked_subcommand}` takes none"
            )
        return
    labels = pairs(label, "--label")
    if worker_id is not None:
        from edgeplane.protocol.topics import check_segment

        check_segment(worker_id, "worker_id", "a worker id")
    flags["ca"] = _ca(ctx, ca)  # not above: the global --ca serves `worker list` too
    settings = _settings(flags, config)
    if not settings.broker:
        raise typer.BadParameter(
            "give the cluster broker to join (or a subcommand: list, get, drain, delete)",
            param_hint="--manager",
        )
    _check_host_user(settings)
    from edgeplane.roles.worker import run_worker

    _run(run_worker(settings, worker_id=worker_id, labels=labels), uvloop_if_installed=False)


def proxy(
    ctx: typer.Context,
    broker: Annotated[
        str | None,
        typer.Option(help="mqtt[s]://[USER:PASS@]HOST:PORT: the cluster's broker."),
    ] = None,
    store: StoreOption = None,
    cluster_id: ClusterOption = None,
    domain: DomainOption = None,
    artifact_max_mb: ArtifactMaxOption = None,
    registries: RegistriesOption = None,
    data_dir: DataDirOption = None,
    ca: CaOption = None,
    log_level: LogLevelOption = None,
    config: ConfigOption = None,
) -> None:
    """Serve a cluster's stored artifacts, and blobs of oci:// images from their
    registries, to its workers over MQTT (`up` and `manager` run one already)."""
    flags = {
        "broker": broker,
        "store": store,
        "cluster_id": cluster_id,
        "domain": domain,
        "artifact_max_mb": artifact_max_mb,
        "registries": registries,
        "data_dir": data_dir,
        "ca": _ca(ctx, ca),
        "log_level": log_level,
    }
    settings = _settings(flags, config)
    if not settings.broker:
        raise typer.BadParameter("give the cluster's broker", param_hint="--broker")
    from edgeplane.roles.proxy import run_proxy

    _run(run_proxy(settings))
