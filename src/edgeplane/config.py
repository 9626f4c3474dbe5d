"""All settings in one model: flags > env (``EDGEPLANE_*``) > file > defaults.

A plain pydantic model that reads its ``EDGEPLANE_*`` variables itself: pydantic-settings
did the same but cost every process 1.4 MB of RSS (a worker's budget is 50 MB).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeplane.errors import Invalid
from edgeplane.limits import (
    DEFAULT_HELD_ANSWERS,
    DEFAULT_WASM_MAX_MEMORY_MB,
    DEFAULT_WASM_MEMORY_MB,
    DEFAULT_WASM_TIMEOUT_S,
    MAX_MEMORY_MB,
    MAX_TIMEOUT_S,
)
from edgeplane.protocol.topics import check_domain, check_segment
from edgeplane.tracing import MAX_ENDPOINT, traces_url

SchedulerName = Literal["round-robin", "priority", "resource-fit"]


ENV_PREFIX = "EDGEPLANE_"


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data_dir: Path = Field(default_factory=lambda: Path.home() / ".edgeplane")
    domain: str = "edgeplane"
    cluster_id: str = "local"
    #: ``mqtt://host:port`` (a clustered broker's nodes comma-separated, tried in turn);
    #: empty means "start an embedded broker" (``edgeplane up``).
    broker: str = ""
    #: ``sqlite:///path``, ``postgresql://host/db?schema=s`` or ``memory://``;
    #: empty means SQLite in data_dir.
    store: str = ""
    host: str = "127.0.0.1"
    #: where the embedded broker listens (its port is kept in ``data_dir/broker/port``)
    broker_host: str = "127.0.0.1"
    #: the embedded broker's port; 0: the one it had before (``data_dir/broker/port``), else
    #: a free one. A fixed port is for firewalls and Kubernetes Services: taken, it is an error
    broker_port: int = Field(default=0, ge=0, le=65535)
    #: ``HOST:PORT`` the embedded broker listens on (wins over ``broker_host`` and
    #: ``broker_port``; port 0: the one kept in ``data_dir/broker/port``, chosen once)
    broker_listen: str = ""
    # --- TLS (docs/tls.md) ---
    #: the certificate and key the API and the embedded broker serve (default: those
    #: ``edgeplane certs init`` made in data_dir, when listening off loopback)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: the CA a client verifies servers with (default: data_dir/certs/ca.pem, else the system's)
    ca: Path | None = None
    #: serve the API or the embedded broker off loopback without TLS all the same
    insecure: bool = False
    port: int = Field(default=7070, ge=0, le=65535)
    workers: int = Field(default=2, ge=0)
    heartbeat_s: float = Field(default=5.0, gt=0)
    missed_beats: int = Field(default=3, ge=1)
    #: a worker: seconds between samples of its node's usage (docs/metrics.md; 0: none)
    metrics_interval_s: float = Field(default=10.0, ge=0, le=3600)
    #: OTLP/HTTP endpoint traces of tasks' paths are exported to (a collector's base URL,
    #: ``http://HOST:4318``, or its ``.../v1/traces``); empty: no tracing (docs/metrics.md)
    otel_endpoint: str = Field(default="", max_length=MAX_ENDPOINT)
    #: a worker: serve Prometheus text at ``http://HOST:PORT/metrics`` (empty: not served)
    metrics_listen: str = ""
    #: seconds a lost worker's host and container tasks wait for it to come back and
    #: re-attach before they are placed again (None: heartbeat_s * missed_beats; 0: none)
    lost_grace_s: float | None = Field(default=None, ge=0)
    scheduler: SchedulerName = "round-robin"
    pack: bool = Field(default=False, description="resource-fit: bin-pack instead of spread")
    admin_token: str | None = None
    #: ``edgeplane worker`` (or ``manager --root``): the join token to get a broker
    #: identity with from the manager (or the root), used once
    join_token: str | None = Field(default=None, repr=False)
    allow_host: bool = False
    #: the user host tasks run as (runtimes/taskuser.py); None: an unprivileged one
    #: (edgeplane-task, else nobody) when the worker is root, else the worker's own
    host_user: str | None = None
    #: run container tasks (runc) when the worker can: root with runc installed
    containers: bool = True
    #: ``edgeplane worker --api HOST:PORT``: serve the node-local Edge API (chutes) there
    edge_api: str | None = None
    #: chutes (and container tasks with ``network: bridge``) on the node's bridge network,
    #: chutes with disk and bandwidth limits, when the node can (root, iproute2, nftables,
    #: e2fsprogs); False: chutes have loopback only and such tasks fail ``no_network``
    chute_network: bool = True
    #: a worker: the node's bridge for chutes and container tasks (at most 15 characters;
    #: its nftables table is ``edgeplane``, or ``edgeplane_<bridge>`` for another bridge)
    bridge: str = Field(default="ep-br0", pattern=r"^[A-Za-z0-9_.-]{1,15}$")
    #: a worker: the IPv4 subnet its bridge hands addresses out of (the first is the node's)
    bridge_subnet: str = "10.77.0.0/24"
    #: a worker: the host ports it publishes container tasks' ``ports`` on, ``LOW-HIGH``
    #: (docs/services.md); each published port gets a free one of them
    service_ports: str = "20000-32000"
    #: a worker: the address its tasks' published ports are reached at, shown in their
    #: ``endpoints`` (empty: the address its default route leaves from, else 127.0.0.1)
    advertise_address: str = Field(default="", max_length=253, pattern=r"^[A-Za-z0-9_.:%-]*$")
    #: a worker's OCI image layouts (default ``<worker data dir>/images``)
    images_dir: Path | None = None
    #: how a worker gets ``oci://`` container images: ``direct`` pulls them from the
    #: registry itself, ``proxy`` asks the cluster's artifact proxy, ``auto`` direct
    #: while the registry answers, else the proxy (docs/artifacts.md)
    pull: Literal["direct", "proxy", "auto"] = "auto"
    #: registry settings (credentials, insecure registries, the largest artifact) for
    #: pulls; None: ``EDGEPLANE_REGISTRIES``, else ``<data dir>/registries.yaml`` if there
    registries: Path | None = None
    slots: int = Field(default=0, ge=0, description="tasks a worker runs at once; 0 = 8 per cpu")
    prefetch: int = Field(
        default=4, ge=1, description="tasks a worker holds per slot, started as slots free"
    )
    max_body_mb: float = Field(default=64.0, gt=0)
    #: answers held open at once (long polls), beyond which a new one is 503 with
    #: Retry-After (manager/holds.py; docs/limits.md)
    max_held_answers: int = Field(default=DEFAULT_HELD_ANSWERS, ge=1, le=1_000_000)
    #: a worker's on-disk cache of delivered artifacts, MB (also the largest it takes)
    artifact_cache_mb: int = Field(default=1024, ge=1, le=1024 * 1024)
    #: the largest artifact the proxy serves, MB (bigger ones are refused and counted)
    artifact_max_mb: int = Field(default=512, ge=1, le=1024 * 1024)
    #: the audit log keeps records this many days, and at most this many (docs/security.md)
    audit_retention_days: float = Field(default=90.0, gt=0, le=36500, allow_inf_nan=False)
    audit_max_rows: int = Field(default=1_000_000, ge=1000, le=1_000_000_000)
    #: a worker's limits for wasm tasks that give none (see DEFAULT_WASM_MEMORY_MB)
    wasm_memory_mb: int = Field(default=DEFAULT_WASM_MEMORY_MB, ge=1, le=MAX_MEMORY_MB)
    #: the most a wasm task may ask for with limits.memory_mb on a worker
    wasm_max_memory_mb: int = Field(default=DEFAULT_WASM_MAX_MEMORY_MB, ge=1, le=MAX_MEMORY_MB)
    wasm_timeout_s: float = Field(
        default=DEFAULT_WASM_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False
    )
    retry_backoff_s: float = Field(default=0.5, ge=0)
    max_workflow_tasks: int = Field(default=10_000, ge=1, description="per job or workflow")
    log_level: str = "info"
    # --- the hierarchy (root → clusters → workers) ---
    #: ``mqtt://host:port`` of the root's broker (or its nodes, comma-separated): a
    #: manager given one registers there
    root: str = ""
    #: reach the root through this cluster's own broker (``--broker``), which a Mosquitto
    #: bridge links to the root's (docs/brokers.md); ``root`` is then only where it joins
    root_via_bridge: bool = False
    #: the cluster's identity at the root as a file of its own (a ``credentials.json`` a
    #: join made elsewhere), read instead of ``<data dir>/uplink/``: several managers of
    #: one cluster share one identity, and only one of them can join (docs/deploy.md)
    root_credentials: Path | None = None
    cluster_name: str = ""
    #: cluster metadata sent to the root: labels and ``lat,lon``
    labels: dict[str, str] = Field(default_factory=dict)
    location: str = ""
    aggregate_interval_s: float = Field(default=5.0, gt=0)
    #: root: clusters tried in a row before a task waits for capacity to change
    placement_attempts: int = Field(default=3, ge=1)
    #: ``up``: run a root over this many clusters (0: one cluster, no root)
    clusters: int = Field(default=0, ge=0, le=16)
    # --- several processes of one cluster (or root) on one store (docs/operations.md) ---
    #: the URL clients reach this process's API at: what standbys redirect to while it
    #: leads (default: its own API URL as it serves it)
    advertise_url: str = Field(default="", max_length=2048)
    #: seconds a leader's claim lasts without renewal (default: heartbeat_s): a standby
    #: takes over at most 1.2 times this after the leader's last renewal
    lease_s: float | None = Field(default=None, gt=0, le=3600, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _env(cls, data: Any) -> Any:
        """``EDGEPLANE_<FIELD>`` fills each field the caller did not give (dicts as JSON)."""
        values = dict(data) if isinstance(data, dict) else {}
        for name, info in cls.model_fields.items():
            raw = os.environ.get(f"{ENV_PREFIX}{name.upper()}")
            if raw is None or name in values:
                continue
            if info.annotation is not None and "dict" in str(info.annotation):
                try:
                    values[name] = json.loads(raw)
                except ValueError:
                    raise Invalid(
                        f"{ENV_PREFIX}{name.upper()} must be a JSON object", field=name
                    ) from None
            else:
                values[name] = raw
        return values

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        # every topic starts with it, and NATS refuses '.' and ' ' in a topic
        try:
            return check_domain(value)
        except Invalid as exc:
            raise ValueError(exc.detail) from None

    @field_validator("cluster_id")
    @classmethod
    def _cluster_id(cls, value: str) -> str:
        # a topic level at its manager's broker and (as a member id) at the root's
        try:
            return check_segment(value, "cluster_id", "a cluster id")
        except Invalid as exc:
            raise ValueError(exc.detail) from None

    @field_validator("broker_listen", "metrics_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            parse_listen(value)
        return value

    @field_validator("otel_endpoint")
    @classmethod
    def _otel_endpoint(cls, value: str) -> str:
        if value:
            traces_url(value)  # a ValueError says what is wrong
        return value

    @field_validator("service_ports")
    @classmethod
    def _port_range(cls, value: str) -> str:
        parse_port_range(value)
        return value

    @field_validator("bridge_subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        import ipaddress  # (only a worker's settings give one: not on every process's path)

        network = ipaddress.IPv4Network(value)  # a ValueError names what is wrong
        if network.num_addresses < 4:
            raise ValueError(f"{value} is too small (a /30 at least)")
        return value

    @property
    def nft_table(self) -> str:
        """The node network's nftables table: ``edgeplane`` for the default bridge."""
        if self.bridge == "ep-br0":
            return "edgeplane"
        return "edgeplane_" + re.sub(r"[^A-Za-z0-9_]", "_", self.bridge)

    @property
    def service_port_range(self) -> tuple[int, int]:
        return parse_port_range(self.service_ports)

    @property
    def broker_endpoint(self) -> tuple[str, int]:
        """Where the embedded broker listens: host, and port (0: the one kept)."""
        if self.broker_listen:
            return parse_listen(self.broker_listen)
        return self.broker_host, self.broker_port

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{self.data_dir / 'edgeplane.db'}"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::]:PORT`` for IPv6) → (host, port); ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (port 0 to 65535)")
    return host, int(port)


def parse_port_range(text: str) -> tuple[int, int]:
    """``LOW-HIGH`` (1 <= LOW <= HIGH <= 65535) → (low, high); ValueError otherwise."""
    low, sep, high = text.partition("-")
    if sep and low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high) <= 65535:
        return int(low), int(high)
    raise ValueError(f"{text!r} is not LOW-HIGH (ports, 1 <= LOW <= HIGH <= 65535)")


def load(flags: dict[str, Any], config_file: Path | None = None) -> Settings:
    """Build settings from CLI flags (None = not given), env and an optional YAML file."""
    given = {k: v for k, v in flags.items() if v is not None}
    file_values: dict[str, Any] = {}
    if config_file is not None:
        from edgeplane import safeyaml  # only with --config: YAML costs every process 0.7 MB

        try:
            text = config_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise Invalid(f"cannot read config file: {exc}", field="config") from None
        try:
            loaded = safeyaml.load(text, str(config_file))
        except Invalid as exc:
            raise Invalid(exc.detail, field="config") from None
        if not isinstance(loaded, dict):
            raise Invalid("config file must hold a mapping", field="config")
        file_values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    env_only = Settings.model_validate({})  # env + defaults
    env_set = {
        name for name in Settings.model_fields if f"{ENV_PREFIX}{name.upper()}" in os.environ
    }
    merged: dict[str, Any] = {}
    merged.update({k: v for k, v in file_values.items() if k not in env_set})
    merged.update({k: getattr(env_only, k) for k in env_set})
    merged.update(given)
    return Settings(**merged)
