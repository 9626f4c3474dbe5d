"""What a runtime is given to run one attempt of a task.

The worker receives an :class:`~edgeplane.protocol.Assignment` over MQTT and hands its
runtime a :class:`RunSpec`: only what a runtime acts on, with none of the wire's fields
(module bytes, the root's scheduling hints). Runtimes thus depend on no message format,
and the protocol can change without touching them.

A pydantic model because host and container runtimes keep it in their handle's ``state``
(JSON) for :meth:`~edgeplane.runtimes.Runtime.recover`, and the worker in its handle
records. Unknown fields are ignored: a state or record written by an older version holds
a whole ``Assignment``, and must still recover.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgeplane.model import Limits
from edgeplane.model.service import HealthCheck, Network, PortSpec
from edgeplane.model.task import no_limits


class RunSpec(BaseModel):
    """One attempt of a task, as a runtime runs it."""

    model_config = ConfigDict(extra="ignore")

    task_id: str
    attempt: int
    #: the runtime that runs it (the worker picks it by this name)
    runtime: str
    #: wasm: the export called when ``entrypoint`` is empty; the program's argv[0] in wasi mode
    name: str = ""
    #: wasm: ``function`` (call an export) or ``wasi`` (run ``_start``)
    mode: str = "function"
    entrypoint: str = ""
    #: wasm: the module's sha256 (its bytes come beside the spec, see ``Runtime.start``)
    artifact: str | None = None
    inputs: list[Any] = Field(default_factory=list)
    cli_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    #: host: the command; container: what replaces the image's entrypoint and cmd
    command: list[str] | None = None
    #: container: ``name[:tag]`` in the worker's image dir, or ``oci://…`` (``pull.py``)
    image: str | None = None
    limits: Limits = Field(default_factory=no_limits)
    #: container: ``bridge``: a namespace on the worker's bridge, ``ports`` published on
    #: host ports the runtime picks (docs/services.md)
    network: Network = "none"
    ports: list[PortSpec] = Field(default_factory=list)
    #: container: what the worker probes before it reports the attempt running
    healthcheck: HealthCheck | None = None
    #: runs until stopped: no default timeout applies
    daemon: bool = False
    # Node-local (LOCAL_FIELDS): set by the node itself for its chutes, never taken from
    # an assignment, so no one on the wire can mount a host path or join a namespace.
    #: container: a network namespace to join (a chute's, ``/var/run/netns/<name>``);
    #: None: a new one with loopback only
    netns: str | None = None
    #: container: a file bind-mounted read-only at ``/etc/hosts`` (a chute's names)
    hosts_file: str | None = None
    #: container: host dirs bind-mounted read-write, container path → host path
    binds: dict[str, str] | None = None
    #: container: the CPUs it may run on (cpuset syntax, ``0`` or ``0-1``); None: any
    cpus: str | None = None


#: RunSpec fields a worker never takes from an assignment (all default to None)
LOCAL_FIELDS = ("netns", "hosts_file", "binds", "cpus")
