"""Compiled wasm modules: a digest-keyed cache and the checks the API runs before storing a task.

Compiling is the expensive step (hundreds of µs for a tiny module, seconds for a big one),
so a module is compiled once per digest: kept compiled in memory (LRU) and, when a cache
directory is given, serialised to ``<digest>-<engine key>.cwasm`` so a restarted worker
only deserialises it. The engine key covers what changes the compiled code (wasmtime's
version, the engine settings, the target); each file carries an HMAC of its bytes under a
key only this cache directory holds, checked before ``Module.deserialize`` ever sees it
(deserialising is only safe for bytes wasmtime itself wrote for this engine).

Nothing here starts a thread; the API imports it to reject bad tasks with
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
import hmac
import importlib.metadata
import logging
import os
import platform
import re
import secrets
import stat
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

from edgeplane.errors import Invalid, NotFound

log = logging.getLogger(__name__)

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


#: The engine settings :func:`make_engine` applies. Compiled code depends on them, so they
#: are part of the key of every serialised module (:func:`engine_key`).
ENGINE_SETTINGS: tuple[tuple[str, bool], ...] = (
    ("consume_fuel", True),
    ("epoch_interruption", True),
)


def make_engine() -> wasmtime.Engine:
    """An engine whose modules can be limited: fuel metering and epoch interruption on.

    Compiled code depends on these settings, so every engine that shares serialised
    modules must be made here.
    """
    config = wasmtime.Config()
    for name, value in ENGINE_SETTINGS:
        setattr(config, name, value)
    return wasmtime.Engine(config)


def engine_key(settings: Sequence[tuple[str, object]] = ENGINE_SETTINGS) -> str:
    """16 hex digits naming what the compiled code of a module depends on besides its
    bytes: wasmtime's version, the engine settings and the target (machine, OS). A
    ``.cwasm`` written under another key is never offered to this engine. (CPU features
    are not in it: wasmtime checks them when deserialising, and a refusal is a recompile.)"""
    try:
        version = importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - always installed
        version = "unknown"
    parts = [f"wasmtime={version}", f"target={platform.machine()}-{sys.platform}"]
    parts += [f"{name}={value}" for name, value in settings]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


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
    ``loads`` counts deserialisations from disk, ``rejected`` the disk entries found
    corrupt or forged and removed). Thread-safe: lookups hold a short lock; a compilation
    holds only that digest's lock, so hits never wait for another compile.

    An ``engine`` made elsewhere must come with the ``settings`` it was made with (they
    key the disk entries); without them its modules are kept in memory only.
    """

    def __init__(
        self,
        engine: wasmtime.Engine | None = None,
        cache_dir: Path | None = None,
        capacity: int = 64,
        *,
        settings: Sequence[tuple[str, object]] | None = None,
    ) -> None:
        self.engine = engine if engine is not None else make_engine()
        if engine is None:
            settings = ENGINE_SETTINGS
        self.engine_key = None if settings is None else engine_key(settings)
        self.cache_dir: Path | None = None
        self._mac_key = b""
        self.capacity = capacity
        self.compiles = 0
        self.loads = 0
        self.rejected = 0
        self._linker = wasmtime.Linker(self.engine)
        self._linker.define_wasi()
        self._entries: OrderedDict[str, CompiledModule] = OrderedDict()
        self._lock = threading.Lock()
        self._digest_locks: dict[str, threading.Lock] = {}
        if cache_dir is not None:
            self.use_dir(cache_dir)

    def use_dir(self, cache_dir: Path) -> None:
        """Keep compiled modules in ``cache_dir`` from now on, if it is safe: the directory
        is made (0700) or must already be this user's own and closed to everyone else,
        because whoever can write it could make this process run their machine code.
        Otherwise (and for an engine without known settings) modules stay in memory only,
        with a warning."""
        if self.engine_key is None:
            return
        try:
            cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = cache_dir.stat()
            if info.st_uid != os.getuid() or info.st_mode & 0o022:
                log.warning(
                    "not keeping compiled modules on disk: the directory is not this "
                    "user's own, or others may write it",
                    extra={"path": str(cache_dir), "mode": oct(stat.S_IMODE(info.st_mode))},
                )
                return
            os.chmod(cache_dir, 0o700)
            self._mac_key = _mac_key(cache_dir / "key")
            self._sweep(cache_dir)
        except OSError as exc:
            log.warning(
                "not keeping compiled modules on disk",
                extra={"path": str(cache_dir), "error": str(exc)},
            )
            return
        self.cache_dir = cache_dir

    def _sweep(self, cache_dir: Path) -> None:
        """Remove what no engine of this process can use: entries of another engine key
        (an older wasmtime, other settings, the un-keyed ``<digest>.cwasm`` of earlier
        versions) and temporary files of interrupted writes, so upgrades leave nothing
        behind."""
        mine = f"-{self.engine_key}.cwasm"
        for path in cache_dir.iterdir():
            name = path.name
            if (name.endswith(".cwasm") and not name.endswith(mine)) or name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    path.unlink()

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
            log.info("compiled module", extra={"digest": digest})
            self._to_disk(digest, module)
        sigs, needs_wasi = _describe(module)
        try:
            pre = self._linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise Invalid(f"module cannot be linked: {short_error(exc)}", field="file") from None
        return CompiledModule(digest, module, sigs, needs_wasi, pre)

    def _path(self, digest: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{digest}-{self.engine_key}.cwasm"

    def _from_disk(self, digest: str) -> wasmtime.Module | None:
        path = self._path(digest)
        if path is None:
            return None
        try:
            encoded = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning(
                "cannot read a compiled module", extra={"path": str(path), "error": str(exc)}
            )
            return None
        tag, body = encoded[:_TAG_BYTES], encoded[_TAG_BYTES:]
        if len(encoded) <= _TAG_BYTES or not hmac.compare_digest(tag, self._tag(digest, body)):
            # Truncated, corrupted or not written by this cache: never deserialised.
            self._reject(path, "its checksum does not match")
            return None
        try:
            module = wasmtime.Module.deserialize(self.engine, body)
        except wasmtime.WasmtimeError as exc:
            # Intact but refused (e.g. written on a CPU with other features): recompile.
            self._reject(path, short_error(exc))
            return None
        self.loads += 1
        log.info("loaded compiled module from disk", extra={"digest": digest})
        return module

    def _reject(self, path: Path, why: str) -> None:
        self.rejected += 1
        log.warning(
            "compiled module removed, compiling again", extra={"path": str(path), "why": why}
        )
        with contextlib.suppress(OSError):
            path.unlink()

    def _tag(self, digest: str, body: bytes) -> bytes:
        """HMAC-SHA256 of the digest and the serialised bytes under this directory's key."""
        mac = hmac.new(self._mac_key, digest.encode(), hashlib.sha256)
        mac.update(body)
        return mac.digest()

    def _to_disk(self, digest: str, module: wasmtime.Module) -> None:
        path = self._path(digest)
        if path is None:
            return
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            body = bytes(module.serialize())
            tmp.write_bytes(self._tag(digest, body) + body)
            os.replace(tmp, path)
        except OSError:
            # A full or read-only disk only costs a recompile after a restart.
            with contextlib.suppress(OSError):
                tmp.unlink()


_TAG_BYTES = 32


def _mac_key(path: Path) -> bytes:
    """The directory's HMAC key: 32 random bytes made once (0600), read at every start.
    A key file that is unreadable or of the wrong size is replaced, which only orphans
    the entries made under it (they fail the check and are compiled again)."""
    with contextlib.suppress(OSError):
        key = path.read_bytes()
        if len(key) == 32:
            return key
    key = secrets.token_bytes(32)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    os.replace(tmp, path)
    return key


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
            _process_cache.use_dir(cache_dir)
        return _process_cache
