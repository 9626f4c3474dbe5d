"""Compiled wasm modules: a digest-keyed cache and the checks the API runs before storing a task.

Compiling is the expensive step (hundreds of µs for a tiny module, seconds for a big one),
so a module is compiled once per digest: kept compiled in memory (LRU) and, when a cache
directory is given, serialised to ``<digest>.cwasm`` so a restarted worker only
deserialises it. Nothing here starts a thread; the API imports it to reject bad tasks with
422 before anything is stored, and the wasm runtime (``runtimes/wasm.py``) to run them:
it lives outside ``runtimes`` so the control plane never imports a runtime.

A process has one cache (:func:`process_cache`), shared by admission and the workers
``edgeplane up`` runs in the same process: a module compiled when its task was admitted
is not compiled again by the worker that runs it. Compiling never happens on an event
loop: callers go through a thread (wasmtime's compiler releases the GIL, so the loop
keeps serving while it works).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

from edgeplane.errors import Invalid, NotFound

#: Import modules a task may use; the runtime's linker defines exactly these.
WASI_MODULES = frozenset({"wasi_snapshot_preview1"})

_DIGEST = re.compile(r"[0-9a-f]{64}")
_I32 = (-(2**31), 2**32)
_I64 = (-(2**63), 2**64)

Arg = int | float


@dataclass(frozen=True)
class FuncSig:
    """Parameter and result type names of one exported function (``"i32"``, ``"f64"`` …)."""

    params: tuple[str, ...]
    results: tuple[str, ...]


@dataclass(frozen=True)
class CompiledModule:
    """A compiled module plus what every call needs, computed once per digest."""

    digest: str
    module: wasmtime.Module
    exports: Mapping[str, FuncSig]
    needs_wasi: bool
    pre: wasmtime.InstancePre


def make_engine() -> wasmtime.Engine:
    """An engine whose modules can be limited: fuel metering and epoch interruption on.

    Compiled code depends on these settings, so every engine that shares serialised
    modules must be made here.
    """
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    return wasmtime.Engine(config)


def short_error(exc: BaseException) -> str:
    """wasmtime's messages carry backtraces; keep the cause, on one line."""
    text = str(exc)
    if "Caused by:" in text:
        text = text.rsplit("Caused by:", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _compile(engine: wasmtime.Engine, data: bytes) -> wasmtime.Module:
    try:
        return wasmtime.Module(engine, data)
    except wasmtime.WasmtimeError as exc:
        raise Invalid(f"module does not compile: {short_error(exc)}", field="file") from None


def _describe(module: wasmtime.Module) -> tuple[dict[str, FuncSig], bool]:
    """Exported function signatures and whether the module imports WASI.

    Raises :class:`Invalid` for imports edgeplane does not provide, because such a module
    can never be instantiated.
    """
    needs_wasi = False
    for imp in module.imports:
        if imp.module not in WASI_MODULES:
            raise Invalid(
                f"module imports {imp.module}.{imp.name}, which edgeplane does not provide "
                f"(only {', '.join(sorted(WASI_MODULES))})",
                field="file",
            )
        needs_wasi = True
    sigs: dict[str, FuncSig] = {}
    for exp in module.exports:
        ty = exp.type
        if isinstance(ty, wasmtime.FuncType):
            sigs[exp.name] = FuncSig(
                params=tuple(str(p) for p in ty.params),
                results=tuple(str(r) for r in ty.results),
            )
    return sigs, needs_wasi


def inspect_module(engine: wasmtime.Engine, data: bytes) -> dict[str, FuncSig]:
    """Compile ``data`` and return export name → signature; :class:`Invalid` (field ``file``)
    when it does not compile or imports something other than WASI. Not cached: use
    :meth:`ModuleCache.signatures` on hot paths."""
    return _describe(_compile(engine, data))[0]


def _to_int(value: Any, bounds: tuple[int, int], type_name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean, not an {type_name}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number")
        number = int(value)
    elif isinstance(value, str):
        number = int(value.strip(), 0)
    else:
        raise ValueError(f"{value!r} is not a number")
    low, high = bounds
    if not low <= number < high:
        raise ValueError(f"{number} does not fit in an {type_name}")
    # Unsigned spellings (e.g. 0xffffffff) wrap to the signed value wasm stores.
    half = high // 2
    return number - high if number >= half else number


def _to_float(value: Any, type_name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean, not an {type_name}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise ValueError(f"{value!r} is not a number")


_CONVERTERS: dict[str, Callable[[Any], Arg]] = {
    "i32": lambda v: _to_int(v, _I32, "i32"),
    "i64": lambda v: _to_int(v, _I64, "i64"),
    "f32": lambda v: _to_float(v, "f32"),
    "f64": lambda v: _to_float(v, "f64"),
}


def check_call(
    sigs: Mapping[str, FuncSig], export: str, inputs: Sequence[Any], mode: str
) -> list[Arg]:
    """Check that a task can call this module; return ``inputs`` converted to the parameter
    types (``[]`` in ``wasi`` mode).

    Integers also come as strings (``"2"``, ``"0x10"``) because CLI arguments are strings;
    floats come as numbers or numeric strings. Raises :class:`Invalid` naming the field:
    ``name`` for a missing export, ``inputs`` for a wrong count or unconvertible value,
    ``file`` for a module that has no ``_start`` in ``wasi`` mode, ``mode`` for an unknown mode.
    """
    if mode == "wasi":
        if "_start" not in sigs:
            raise Invalid(
                "module has no _start export, so it cannot run in wasi mode", field="file"
            )
        return []
    if mode != "function":
        raise Invalid(f"unknown mode {mode!r}; use 'function' or 'wasi'", field="mode")
    if not export:
        raise Invalid("a function task needs the name of the export to call", field="name")
    sig = sigs.get(export)
    if sig is None:
        available = ", ".join(sorted(sigs)) or "none"
        raise Invalid(
            f"module has no exported function {export!r} (exports: {available})", field="name"
        )
    if len(inputs) != len(sig.params):
        raise Invalid(
            f"{export} takes {len(sig.params)} input(s) ({', '.join(sig.params) or 'none'}), "
            f"got {len(inputs)}",
            field="inputs",
        )
    args: list[Arg] = []
    for index, (type_name, value) in enumerate(zip(sig.params, inputs, strict=True)):
        convert = _CONVERTERS.get(type_name)
        if convert is None:
            raise Invalid(
                f"{export} takes a {type_name} parameter, which cannot be passed as JSON",
                field="inputs",
            )
        try:
            args.append(convert(value))
        except ValueError as exc:
            raise Invalid(
                f"input {index} of {export} must be an {type_name}: {exc}", field="inputs"
            ) from None
    return args


class ModuleCache:
    """Compiled modules by sha256 hex digest: an in-memory LRU plus optional ``.cwasm`` files.

    A digest is compiled at most once per process (``compiles`` counts compilations,
    ``loads`` counts deserialisations from disk). Thread-safe: lookups hold a short lock;
    a compilation holds only that digest's lock, so hits never wait for another compile.
    """

    def __init__(
        self,
        engine: wasmtime.Engine | None = None,
        cache_dir: Path | None = None,
        capacity: int = 64,
    ) -> None:
        self.engine = engine if engine is not None else make_engine()
        self.cache_dir = cache_dir
        self.capacity = capacity
        self.compiles = 0
        self.loads = 0
        self._linker = wasmtime.Linker(self.engine)
        self._linker.define_wasi()
        self._entries: OrderedDict[str, CompiledModule] = OrderedDict()
        self._lock = threading.Lock()
        self._digest_locks: dict[str, threading.Lock] = {}
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)

    def __contains__(self, digest: object) -> bool:
        """True when ``digest`` is compiled in memory (a ``get`` would not block)."""
        return digest in self._entries

    def cached(self, digest: str) -> CompiledModule | None:
        """The module when it is compiled in memory, else None: never compiles or reads a
        file, so it is safe on an event loop (a ``get`` after ``in`` could meet an eviction
        by another thread and load from disk)."""
        return self._lookup(digest)

    def signatures(self, digest: str | None, data: bytes | None) -> dict[str, FuncSig]:
        """Export signatures of a module, compiling it only on the first request."""
        return dict(self.get(digest, data).exports)

    def get(self, digest: str | None, data: bytes | None = None) -> CompiledModule:
        """The compiled module for ``digest`` (computed from ``data`` when None).

        ``data`` is only read on a miss, and then its sha256 must equal ``digest``.
        Raises :class:`Invalid` (field ``file``) for a bad digest, mismatching bytes or a
        module that does not compile, :class:`NotFound` when neither cached nor given.
        """
        if digest is None:
            if data is None:
                raise Invalid("no module given", field="file")
            digest = hashlib.sha256(data).hexdigest()
        entry = self._lookup(digest)
        if entry is not None:
            return entry
        if _DIGEST.fullmatch(digest) is None:
            raise Invalid(f"artifact digest {digest!r} is not sha256 hex", field="file")
        with self._lock:
            digest_lock = self._digest_locks.setdefault(digest, threading.Lock())
        try:
            with digest_lock:
                entry = self._lookup(digest)
                if entry is None:
                    entry = self._load(digest, data)
                    with self._lock:
                        self._entries[digest] = entry
                        while len(self._entries) > self.capacity:
                            self._entries.popitem(last=False)
        finally:
            with self._lock:
                self._digest_locks.pop(digest, None)
        return entry

    def _lookup(self, digest: str) -> CompiledModule | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                self._entries.move_to_end(digest)
            return entry

    def _load(self, digest: str, data: bytes | None) -> CompiledModule:
        module = self._from_disk(digest)
        if module is None:
            if data is None:
                raise NotFound(
                    f"module {digest} is not cached and no bytes were given", field="file"
                )
            if hashlib.sha256(data).hexdigest() != digest:
                raise Invalid(f"module bytes do not match digest {digest}", field="file")
            module = _compile(self.engine, data)
            self.compiles += 1
            self._to_disk(digest, module)
        sigs, needs_wasi = _describe(module)
        try:
            pre = self._linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise Invalid(f"module cannot be linked: {short_error(exc)}", field="file") from None
        return CompiledModule(digest, module, sigs, needs_wasi, pre)

    def _path(self, digest: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{digest}.cwasm"

    def _from_disk(self, digest: str) -> wasmtime.Module | None:
        path = self._path(digest)
        if path is None:
            return None
        try:
            encoded = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            module = wasmtime.Module.deserialize(self.engine, encoded)
        except wasmtime.WasmtimeError:
            # Written by another wasmtime version or engine config: recompile instead.
            path.unlink(missing_ok=True)
            return None
        self.loads += 1
        return module

    def _to_disk(self, digest: str, module: wasmtime.Module) -> None:
        path = self._path(digest)
        if path is None:
            return
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(module.serialize())
            os.replace(tmp, path)
        except OSError:
            # A full or read-only disk only costs a recompile after a restart.
            with contextlib.suppress(OSError):
                tmp.unlink()


#: Modules a process keeps compiled (the admission of a big batch sees many digests).
PROCESS_CACHE_CAPACITY = 256
_process_cache: ModuleCache | None = None
_process_lock = threading.Lock()


def process_cache(cache_dir: Path | None = None) -> ModuleCache:
    """This process's one module cache (see the module docstring). The first caller that
    names a ``cache_dir`` gives it its ``.cwasm`` directory."""
    global _process_cache
    with _process_lock:
        if _process_cache is None:
            _process_cache = ModuleCache(cache_dir=cache_dir, capacity=PROCESS_CACHE_CAPACITY)
        elif cache_dir is not None and _process_cache.cache_dir is None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            _process_cache.cache_dir = cache_dir
        return _process_cache
