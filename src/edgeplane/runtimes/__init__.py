"""Task runtimes behind one interface (:class:`Runtime`): wasm, host, container (runc) and a
fake for tests."""

from __future__ import annotations

from pathlib import Path

from edgeplane.artifacts.registry_config import RegistryConfig
from edgeplane.limits import (
    DEFAULT_WASM_MAX_MEMORY_MB,
    DEFAULT_WASM_MEMORY_MB,
    DEFAULT_WASM_TIMEOUT_S,
)
from edgeplane.modules import ModuleCache, process_cache
from edgeplane.runtimes.base import MAX_LOG_CHARS, Handle, Outcome, OutcomeState, Runtime
from edgeplane.runtimes.container import ContainerRuntime
from edgeplane.runtimes.fake import FakeRuntime
from edgeplane.runtimes.host import HostRuntime
from edgeplane.runtimes.spec import RunSpec
from edgeplane.runtimes.taskuser import TaskUser
from edgeplane.runtimes.wasm import WasmRuntime


def available_runtimes(
    allow_host: bool,
    cache_dir: Path | None,
    *,
    data_dir: Path | None = None,
    allow_containers: bool = False,
    images_dir: Path | None = None,
    registries: RegistryConfig | None = None,
    modules: ModuleCache | None = None,
    wasm_memory_mb: int | None = None,
    wasm_timeout_s: float | None = None,
    wasm_max_memory_mb: int | None = None,
    host_user: TaskUser | None = None,
) -> dict[str, Runtime]:
    """The runtimes this machine can run, by name: wasm always, host only when allowed,
    container when allowed, given a ``data_dir`` for its bundles and usable (runc, root).

    Compiled wasm modules come from ``modules`` (default: this process's cache, keeping
    them across restarts in ``cache_dir/wasm``); wasm tasks that give no limits get
    ``wasm_memory_mb`` / ``wasm_timeout_s`` (default: edgeplane's defaults) and may ask for
    no more than ``wasm_max_memory_mb``; container
    images come from ``images_dir`` (default ``data_dir/images``) or, named ``oci://…``,
    from their registry with ``registries``' settings (default: none); host tasks run as
    ``host_user`` (default: the worker's own user).
    """
    if modules is None:
        modules = process_cache(None if cache_dir is None else cache_dir / "wasm")
    candidates: list[Runtime] = [
        WasmRuntime(
            modules=modules,
            default_memory_mb=wasm_memory_mb or DEFAULT_WASM_MEMORY_MB,
            default_timeout_s=wasm_timeout_s or DEFAULT_WASM_TIMEOUT_S,
            max_memory_mb=wasm_max_memory_mb or DEFAULT_WASM_MAX_MEMORY_MB,
        )
    ]
    if allow_host:
        candidates.append(HostRuntime(user=host_user))
    if allow_containers and data_dir is not None:
        candidates.append(ContainerRuntime(data_dir, images_dir, registries=registries))
    return {rt.name: rt for rt in candidates if rt.fingerprint() is not None}


__all__ = [
    "MAX_LOG_CHARS",
    "ContainerRuntime",
    "FakeRuntime",
    "Handle",
    "HostRuntime",
    "Outcome",
    "OutcomeState",
    "RunSpec",
    "Runtime",
    "TaskUser",
    "WasmRuntime",
    "available_runtimes",
]
