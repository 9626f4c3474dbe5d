"""Task runtimes behind one interface (:class:`Runtime`): wasm, host, container (runc) and a
fake for tests."""

from __future__ import annotations

from pathlib import Path

from edgeplane.runtimes.base import MAX_LOG_CHARS, Handle, Outcome, OutcomeState, Runtime
from edgeplane.runtimes.container import ContainerRuntime
from edgeplane.runtimes.fake import FakeRuntime
from edgeplane.runtimes.host import HostRuntime
from edgeplane.runtimes.modules import (
    CompiledModule,
    FuncSig,
    ModuleCache,
    check_call,
    inspect_module,
    make_engine,
)
from edgeplane.runtimes.wasm import WasmRuntime


def available_runtimes(
    allow_host: bool,
    cache_dir: Path | None,
    *,
    data_dir: Path | None = None,
    allow_containers: bool = False,
    images_dir: Path | None = None,
) -> dict[str, Runtime]:
    """The runtimes this machine can run, by name: wasm always, host only when allowed,
    container when allowed, given a ``data_dir`` for its bundles and usable (runc, root).

    ``cache_dir`` keeps compiled wasm modules across restarts (in ``cache_dir/wasm``);
    container images come from ``images_dir`` (default ``data_dir/images``).
    """
    candidates: list[Runtime] = [
        WasmRuntime(cache_dir=None if cache_dir is None else cache_dir / "wasm")
    ]
    if allow_host:
        candidates.append(HostRuntime())
    if allow_containers and data_dir is not None:
        candidates.append(ContainerRuntime(data_dir, images_dir))
    return {rt.name: rt for rt in candidates if rt.fingerprint() is not None}


__all__ = [
    "MAX_LOG_CHARS",
    "CompiledModule",
    "ContainerRuntime",
    "FakeRuntime",
    "FuncSig",
    "Handle",
    "HostRuntime",
    "ModuleCache",
    "Outcome",
    "OutcomeState",
    "Runtime",
    "WasmRuntime",
    "available_runtimes",
    "check_call",
    "inspect_module",
    "make_engine",
]
