"""WebAssembly tasks on wasmtime: an exported function call or a WASI program.

One engine per runtime (fuel metering and epoch interruption on) and one compiled module
per digest (:class:`~edgeplane.modules.ModuleCache`). Each attempt gets a fresh
``Store`` and instance and runs in a pool thread, so the event loop stays free.

Except the common short call: a function-mode call that needs no WASI first runs right
on the event loop, with a budget of one epoch tick. Most calls end in microseconds, which
saves the thread hop (about 40 µs of a 60 µs start). A call still running at the tick is
trapped and run again from scratch in a pool thread: a function in a fresh store has no
effects outside it, so running it twice is invisible. The bound on the loop: one tick
(:data:`TICK_S`, plus the ticker thread's wait for the GIL, which the call releases) of
wasm code, plus what wasm does between two epoch checks: instantiating (copying the
module's data segments, at most the module's size, into a memory at most the memory
limit) and single bulk instructions (``memory.fill``/``copy``/``grow``, bounded by the
memory limit; ``table.grow``, bounded by :data:`MAX_TABLE_ELEMENTS`). The start function
of a module runs under the same tick. (``tests/integration/test_wasm_runtime.py`` checks
that a spinning call and a spinning start function leave the loop.)

Limits: ``fuel`` is the store's fuel (unlimited when not given), ``memory_mb`` the store's
memory limit (``memory.grow`` past it returns -1, as the wasm spec says; an initial memory
above it fails the task), ``timeout_s`` is checked on every epoch tick. A task that gives
no ``memory_mb`` gets the runtime's default (the worker's ``wasm_memory_mb``), and one that
is not a daemon and gives no ``timeout_s`` the default ``wasm_timeout_s``: a worker of
``edgeplane up`` shares its process with the control plane, whose memory a task must not
take. A store holds one linear memory (so the memory limit is the whole store's; WASI and
the usual toolchains use one) and at most :data:`MAX_TABLES` tables of
:data:`MAX_TABLE_ELEMENTS` elements. A ticker thread
advances the engine's epoch every :data:`TICK_S`; each store has an epoch-deadline callback
that runs in the store's own thread on every tick and traps the call once its timeout has
passed or it was stopped. That callback is the only safe way to interrupt a store from outside
(wasmtime stores are single-threaded), so ``stop`` ends a running call within one tick,
daemons included. Code blocked inside a WASI host call (e.g. a sleep) is interrupted when
it returns to wasm.

wasmtime-py exposes neither that callback nor a call path that reuses function types,
and its generic ``Func.__call__`` costs ~4x the call itself, so the hot path below talks
to wasmtime's C API through ``wasmtime._ffi`` — kept in the few functions marked so. The
same callback notes the call's fuel consumed and linear memory size for
:meth:`WasmRuntime.stats` (the monitor's thread may not touch the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar, cast

import psutil
import wasmtime
from wasmtime import _ffi as ffi

from edgeplane.clock import Clock, SystemClock
from edgeplane.errors import Conflict, Invalid, NotFound, TaskFailure, TransientTaskFailure
from edgeplane.limits import (
    DEFAULT_WASM_MAX_MEMORY_MB,
    DEFAULT_WASM_MEMORY_MB,
    DEFAULT_WASM_TIMEOUT_S,
)
from edgeplane.modules import Arg, CompiledModule, ModuleCache, check_call, short_error
from edgeplane.runtimes.base import MAX_LOG_CHARS, Handle, Outcome, OutcomeState, Runtime
from edgeplane.runtimes.spec import RunSpec

#: Seconds between epoch ticks: the resolution of timeouts and of ``stop``.
TICK_S = 0.01
#: Fuel metering is engine-wide, so a task without a fuel limit gets all there is.
UNLIMITED_FUEL = 2**64 - 1
#: Tables a store may hold, and elements per table (8 bytes each): with one linear memory,
#: all a task can allocate is its memory limit plus at most 32 MB of tables.
MAX_TABLES = 4
MAX_TABLE_ELEMENTS = 1_000_000
_MIB = 1024 * 1024
_STOPPED = "stopped"
_TIMEOUT = "timeout"
#: the call outgrew its inline budget (one tick on the event loop): rerun it in a thread
_TOO_LONG_INLINE = "too long to run inline"


# --- wasmtime C API the Python wrapper does not expose -------------------------------------

_EpochCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)
_NO_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()  # NULL: run state is freed by us
_VAL_KINDS: dict[str, int] = {"i32": 0, "i64": 1, "f32": 2, "f64": 3}
_UPDATE_CONTINUE = 0

#: Attempts by the id given to their store's epoch callback; read from wasm threads.
_RUNS: dict[int, _Run] = {}
_RUN_IDS = itertools.count(1)


def _on_epoch(ctx: Any, data: int | None, delta: Any, kind: Any) -> int:
    """Runs in the store's thread on every tick: note the call's usage, and trap when
    stopped or out of time."""
    run = _RUNS.get(data or 0)
    if run is not None:
        if run.inline:
            run.interrupted = _TOO_LONG_INLINE
        elif run.stopped:
            run.interrupted = _STOPPED
        elif run.deadline is not None and run.clock.monotonic() >= run.deadline:
            run.interrupted = _TIMEOUT
        if run.interrupted is not None:
            error = ffi.wasmtime_error_new(run.interrupted.encode())
            return ctypes.cast(error, ctypes.c_void_p).value or 0
        if not run.inline:
            _note_usage(ctx, run)
    delta[0] = 1
    kind[0] = _UPDATE_CONTINUE
    return 0


_ON_EPOCH = _EpochCallback(_on_epoch)
#: ``_Run.memory`` of an instance that exports no memory (none to find on later ticks)
_NO_MEMORY = ffi.wasmtime_memory_t()


def _note_usage(ctx: Any, run: _Run) -> None:
    """Fuel consumed and linear memory size, kept on ``run`` for :meth:`WasmRuntime.stats`.

    Read here, in the store's own thread, because a store may not be touched from another
    (the monitor's): ``stats`` then only reads two ints. Costs two C calls a tick (3 µs
    measured, every 10 ms of a running call); calls shorter than a tick never get here.
    wasmtime keeps a running call's fuel count in a register and stores it at calls and
    returns, so the fuel read is as of the call's last function call.
    """
    remaining = ctypes.c_uint64()
    error = ffi.wasmtime_context_get_fuel(ctx, ctypes.byref(remaining))
    if error:  # fuel metering off: the runtime's engine always has it on
        ffi.wasmtime_error_delete(error)
    else:
        run.fuel_used = run.fuel_given - remaining.value
    if run.memory is None and run.instance is not None:
        run.memory = _exported_memory(ctx, run.instance)
    if run.memory is not None and run.memory is not _NO_MEMORY:
        run.memory_bytes = ffi.wasmtime_memory_data_size(ctx, ctypes.byref(run.memory))


def _exported_memory(ctx: Any, instance: Any) -> Any:
    """The first memory ``instance`` exports (WASI and the usual toolchains export their
    one memory as ``memory``), else :data:`_NO_MEMORY`: a memory the module keeps to
    itself cannot be reached through the C API."""
    item = ffi.wasmtime_extern_t()
    name = ctypes.POINTER(ctypes.c_char)()
    length = ctypes.c_size_t()
    for index in itertools.count():
        found = ffi.wasmtime_instance_export_nth(
            ctx,
            ctypes.byref(instance),
            index,
            ctypes.byref(name),
            ctypes.byref(length),
            ctypes.byref(item),
        )
        if not found:
            return _NO_MEMORY
        if cast(int, item.kind) == ffi.WASMTIME_EXTERN_MEMORY.value:
            return ffi.wasmtime_memory_t.from_buffer_copy(item.of.memory)
    return _NO_MEMORY  # pragma: no cover - the loop returns


def _watch_epochs(store: wasmtime.Store, run_id: int) -> None:
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _ON_EPOCH, run_id, _NO_FINALIZER)
    store.set_epoch_deadline(1)


def _invoke(
    store: wasmtime.Store,
    instance: wasmtime.Instance,
    export: str,
    params: Sequence[str],
    results: Sequence[str],
    args: Sequence[Arg],
) -> list[Arg]:
    """Call an exported function whose signature is already known (no type lookups)."""
    ctx = store._context()
    item = ffi.wasmtime_extern_t()
    name = export.encode()
    found = ffi.wasmtime_instance_export_get(
        ctx, ctypes.byref(instance._instance), name, len(name), ctypes.byref(item)
    )
    if not found or cast(int, item.kind) != ffi.WASMTIME_EXTERN_FUNC.value:
        raise wasmtime.WasmtimeError(f"export {export!r} is not a function")
    raw_args = (ffi.wasmtime_val_t * len(args))()
    for slot, type_name, value in zip(raw_args, params, args, strict=True):
        slot.kind = _VAL_KINDS[type_name]
        setattr(slot.of, type_name, value)
    raw_results = (ffi.wasmtime_val_t * len(results))()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_func_call(
        ctx,
        ctypes.byref(item.of.func),
        raw_args,
        len(args),
        raw_results,
        len(results),
        ctypes.byref(trap),
    )
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    if trap:
        raise wasmtime.Trap._from_ptr(trap)
    return [getattr(raw.of, type_name) for raw, type_name in zip(raw_results, results, strict=True)]


# --- epoch ticker ---------------------------------------------------------------------------


class _Ticker:
    """Advances one engine's epoch every tick; shared by the runtimes using that engine."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self.engine = engine
        self.users = 0
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._tick, name="edgeplane-wasm-epoch", daemon=True)

    def _tick(self) -> None:
        # Scheduled on absolute times so late wake-ups do not stretch timeouts.
        due = time.monotonic()
        while True:
            due += TICK_S
            if self.halt.wait(max(0.0, due - time.monotonic())):
                return
            self.engine.increment_epoch()


_tickers: dict[int, _Ticker] = {}
_tickers_lock = threading.Lock()


def _acquire_ticker(engine: wasmtime.Engine) -> None:
    with _tickers_lock:
        ticker = _tickers.get(id(engine))
        if ticker is None:
            ticker = _tickers[id(engine)] = _Ticker(engine)
            ticker.thread.start()
        ticker.users += 1


def _release_ticker(engine: wasmtime.Engine) -> threading.Thread | None:
    """Drop one user; returns the thread to join when it was the last."""
    with _tickers_lock:
        ticker = _tickers[id(engine)]
        ticker.users -= 1
        if ticker.users:
            return None
        del _tickers[id(engine)]
    ticker.halt.set()
    return ticker.thread


# --- the runtime ----------------------------------------------------------------------------


class _Tail:
    """The last :data:`MAX_LOG_CHARS` characters of a stream, in bounded memory."""

    _KEEP = MAX_LOG_CHARS * 4  # bytes: a UTF-8 character takes at most four

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self._KEEP:
            del self._buf[: -self._KEEP]

    def text(self) -> str:
        return self._buf.decode("utf-8", "replace")[-MAX_LOG_CHARS:]


@dataclass(eq=False)
class _Run:
    """One attempt, shared by the event loop and the pool thread running it."""

    spec: RunSpec
    outcome: asyncio.Future[Outcome]
    started: float
    clock: Clock
    #: the limits applied: the task's own, else the runtime's defaults
    memory_mb: int | None = None
    timeout_s: float | None = None
    deadline: float | None = None
    stopped: bool = False
    interrupted: str | None = None
    thread_done: bool = False
    #: released by the worker: forgotten (by its thread as it ends, if it still runs)
    delivered: bool = False
    #: running on the event loop: trap at the first tick (see the module docstring)
    inline: bool = False
    native_id: int | None = None
    cpu_at_start: float = 0.0
    #: usage noted on each epoch tick in the store's thread (``_note_usage``)
    fuel_given: int = 0
    fuel_used: int | None = None
    memory_bytes: int | None = None
    #: the call's instance (``wasmtime_instance_t``) and its exported memory, once known
    instance: Any = None
    memory: Any = None
    stdout: _Tail = field(default_factory=_Tail)
    stderr: _Tail = field(default_factory=_Tail)


def _json_number(value: Arg) -> Arg | str:
    """JSON has no NaN or infinity: spell them as strings rather than lose them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class WasmRuntime(Runtime):
    """Runs ``wasm`` tasks. See the module docstring for limits and how ``stop`` works.

    ``start`` raises :class:`~edgeplane.errors.TaskFailure` (``field`` set) for what the
    user got wrong before anything ran: a module that does not compile or link, a missing
    export, a wrong number of inputs, an input that does not convert, ``wasi`` mode without
    ``_start``. :class:`~edgeplane.errors.TransientTaskFailure` means the module bytes were
    not given and are not cached. Everything that happens once the module runs (trap, limit,
    timeout, non-zero exit) is a ``failed`` :class:`Outcome`.

    Each running call holds one of ``max_threads`` pool threads (a daemon holds it until
    stopped); attempts beyond that wait in the pool's queue, and their timeout starts when
    they get a thread. An attempt is forgotten once ``wait`` has returned its outcome and
    its thread ended; ``wait`` on a forgotten handle raises :class:`~edgeplane.errors.NotFound`.
    """

    name: ClassVar[str] = "wasm"

    def __init__(
        self,
        cache_dir: Path | None = None,
        *,
        modules: ModuleCache | None = None,
        max_threads: int = 64,
        clock: Clock | None = None,
        default_memory_mb: int | None = DEFAULT_WASM_MEMORY_MB,
        default_timeout_s: float | None = DEFAULT_WASM_TIMEOUT_S,
        max_memory_mb: int | None = DEFAULT_WASM_MAX_MEMORY_MB,
    ) -> None:
        self.modules = modules if modules is not None else ModuleCache(cache_dir=cache_dir)
        #: limits of a task that gives none (None: no limit); no timeout for daemons
        self.default_memory_mb = default_memory_mb
        self.default_timeout_s = default_timeout_s
        #: the most a task may ask for (None: no cap)
        self.max_memory_mb = max_memory_mb
        self.engine = self.modules.engine
        self._clock = clock if clock is not None else SystemClock()
        self._pool = ThreadPoolExecutor(
            max_workers=max_threads, thread_name_prefix="edgeplane-wasm"
        )
        self._runs: dict[tuple[str, int], _Run] = {}
        self._ticking = False

    def fingerprint(self) -> dict[str, Any]:
        return {
            "engine": "wasmtime",
            "version": version("wasmtime"),
            "modes": ["function", "wasi"],
            "limits": ["timeout_s", "fuel", "memory_mb"],
        }

    async def start(self, spec: RunSpec, artifact: bytes | None) -> Handle:
        compiled = await self._compiled(spec, artifact)
        export = spec.entrypoint or spec.name
        try:
            args = check_call(compiled.exports, export, spec.inputs, spec.mode)
        except Invalid as exc:
            raise TaskFailure(exc.detail, field=exc.field) from None
        key = (spec.task_id, spec.attempt)
        if key in self._runs:
            raise Conflict(f"task {spec.task_id} attempt {spec.attempt} is already running")
        wanted, cap = spec.limits.memory_mb, self.max_memory_mb
        if wanted is not None and cap is not None and wanted > cap:
            raise TaskFailure(
                f"limits.memory_mb {wanted} is more than this worker gives a wasm task "
                f"({cap} MB; its operator can raise it with --wasm-max-memory-mb)",
                field="limits.memory_mb",
            )
        if not self._ticking:
            _acquire_ticker(self.engine)
            self._ticking = True
        loop = asyncio.get_running_loop()
        own = spec.limits
        run = _Run(
            spec=spec,
            outcome=loop.create_future(),
            started=self._clock.monotonic(),
            clock=self._clock,
            memory_mb=self.default_memory_mb if own.memory_mb is None else own.memory_mb,
            timeout_s=own.timeout_s
            if own.timeout_s is not None or spec.daemon
            else self.default_timeout_s,
        )
        self._runs[key] = run
        handle = Handle(
            spec.task_id, spec.attempt, self.name, {"task_id": key[0], "attempt": key[1]}
        )
        if spec.mode == "function" and not compiled.needs_wasi:
            run.inline = True
            outcome = self._execute(run, compiled, export, args)
            run.inline = False
            if run.interrupted != _TOO_LONG_INLINE:
                run.thread_done = True
                run.outcome.set_result(outcome)
                return handle
            run.interrupted = None
        future = self._pool.submit(self._execute, run, compiled, export, args)

        def ended(done: Future[Outcome]) -> None:
            # The loop may be gone when a stopped call finishes after its owner shut down.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._thread_ended, key, run, done)

        future.add_done_callback(ended)
        return handle

    async def wait(self, handle: Handle) -> Outcome:
        key = (handle.task_id, handle.attempt)
        run = self._runs.get(key)
        if run is None or run.delivered:
            raise NotFound(f"no wasm attempt {handle.attempt} of task {handle.task_id} is known")
        return await asyncio.shield(run.outcome)

    async def release(self, handle: Handle) -> None:
        """Forget an ended call (its thread, when still trapping out of a stopped call,
        drops it as it ends). Nothing of a wasm call outlives the worker anyway."""
        key = (handle.task_id, handle.attempt)
        run = self._runs.get(key)
        if run is None or not run.outcome.done():
            return
        run.delivered = True
        if run.thread_done:
            del self._runs[key]

    async def stop(self, handle: Handle) -> None:
        """Resolve ``wait`` as ``cancelled`` now; the call itself traps on the next tick."""
        run = self._runs.get((handle.task_id, handle.attempt))
        if run is None or run.outcome.done():
            return
        run.stopped = True
        run.outcome.set_result(
            Outcome("cancelled", error=_STOPPED, stdout=run.stdout.text(), stderr=run.stderr.text())
        )

    def inspect(self, handle: Handle) -> dict[str, Any]:
        run = self._runs.get((handle.task_id, handle.attempt))
        if run is None or run.delivered:
            return {"running": False}
        return {
            "running": not run.outcome.done(),
            "elapsed_s": self._clock.monotonic() - run.started,
        }

    async def stats(self, handle: Handle) -> dict[str, float]:
        """CPU use of the thread running the call, averaged since it started; fuel
        consumed and the size of its exported linear memory as of the last epoch tick."""
        run = self._runs.get((handle.task_id, handle.attempt))
        if run is None or run.outcome.done() or run.native_id is None:
            return {}
        elapsed = self._clock.monotonic() - run.started
        stats = {"elapsed_s": elapsed}
        if run.fuel_used is not None:
            stats["fuel_used"] = float(run.fuel_used)
        if run.memory_bytes is not None:
            stats["memory_bytes"] = float(run.memory_bytes)
        for thread in psutil.Process().threads():
            if thread.id == run.native_id:
                cpu = max(0.0, thread.user_time + thread.system_time - run.cpu_at_start)
                stats["cpu_percent"] = 100.0 * cpu / elapsed if elapsed > 0 else 0.0
        return stats

    async def recover(self, state: dict[str, Any]) -> Handle | None:
        """A wasm call lives in the worker process, so it never outlives it."""
        return None

    async def close(self) -> None:
        """Stop every attempt, wait briefly for their threads, stop the ticker."""
        pending = []
        for key, run in list(self._runs.items()):
            await self.stop(Handle(key[0], key[1], self.name))
            if not run.thread_done:
                pending.append(run)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for _ in range(100):
            if all(run.thread_done for run in pending):
                break
            await asyncio.sleep(TICK_S)
        self._runs.clear()
        if self._ticking:
            self._ticking = False
            thread = _release_ticker(self.engine)
            if thread is not None:
                await asyncio.to_thread(thread.join)

    async def _compiled(self, spec: RunSpec, artifact: bytes | None) -> CompiledModule:
        if spec.artifact is not None:
            compiled = self.modules.cached(spec.artifact)
            if compiled is not None:
                return compiled
        try:
            # A miss compiles (milliseconds to seconds) or reads a file: off the event loop.
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self.modules.get, spec.artifact, artifact
            )
        except Invalid as exc:
            raise TaskFailure(exc.detail, field=exc.field) from None
        except NotFound as exc:
            raise TransientTaskFailure(exc.detail, field=exc.field) from None

    def _thread_ended(self, key: tuple[str, int], run: _Run, done: Future[Outcome]) -> None:
        run.thread_done = True
        if not run.outcome.done():
            if done.cancelled():
                run.outcome.set_result(Outcome("cancelled", error=_STOPPED))
            elif (exc := done.exception()) is not None:
                run.outcome.set_result(Outcome("failed", error=f"wasm runtime error: {exc!r}"))
            else:
                run.outcome.set_result(done.result())
        if run.delivered:
            self._runs.pop(key, None)

    # --- in the pool thread -----------------------------------------------------------------

    def _execute(
        self, run: _Run, compiled: CompiledModule, export: str, args: list[Arg]
    ) -> Outcome:
        if run.stopped:
            return Outcome("cancelled", error=_STOPPED)
        spec = run.spec
        run.native_id = threading.get_native_id()
        run.cpu_at_start = time.thread_time()
        if run.timeout_s is not None:
            # Counted from when the call really starts, not from a wait in the pool's queue.
            run.deadline = self._clock.monotonic() + run.timeout_s
        store = wasmtime.Store(self.engine)
        run_id = next(_RUN_IDS)
        _RUNS[run_id] = run
        try:
            _watch_epochs(store, run_id)
            run.fuel_given = spec.limits.fuel if spec.limits.fuel is not None else UNLIMITED_FUEL
            store.set_fuel(run.fuel_given)
            store.set_limits(
                memory_size=-1 if run.memory_mb is None else run.memory_mb * _MIB,
                table_elements=MAX_TABLE_ELEMENTS,
                tables=MAX_TABLES,
                memories=1,
            )
            if spec.mode == "wasi":
                return self._run_wasi(run, compiled, store)
            if compiled.needs_wasi:
                store.set_wasi(wasmtime.WasiConfig())
            return self._run_function(run, compiled, store, export, args)
        finally:
            _RUNS.pop(run_id, None)

    def _run_function(
        self,
        run: _Run,
        compiled: CompiledModule,
        store: wasmtime.Store,
        export: str,
        args: list[Arg],
    ) -> Outcome:
        sig = compiled.exports[export]
        try:
            instance = compiled.pre.instantiate(store)
            run.instance = instance._instance
            values = _invoke(store, instance, export, sig.params, sig.results, args)
        except wasmtime.ExitTrap as exc:
            return self._failed(run, f"module exited with code {exc.code}")
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            return self._failed(run, _describe_failure(run, exc))
        return Outcome("completed", results=[_json_number(v) for v in values])

    def _run_wasi(self, run: _Run, compiled: CompiledModule, store: wasmtime.Store) -> Outcome:
        spec = run.spec
        config = wasmtime.WasiConfig()
        config.argv = [spec.name or spec.task_id, *spec.cli_args]
        config.env = list(spec.env.items())
        config.stdout_custom = run.stdout.write
        config.stderr_custom = run.stderr.write
        store.set_wasi(config)
        try:
            instance = compiled.pre.instantiate(store)
            run.instance = instance._instance
            _invoke(store, instance, "_start", (), (), ())
            code = 0
        except wasmtime.ExitTrap as exc:
            code = exc.code
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            return self._failed(run, _describe_failure(run, exc))
        stdout, stderr = run.stdout.text(), run.stderr.text()
        results = {"stdout": stdout, "exit_code": code}
        if code != 0:
            return Outcome(
                "failed",
                results=results,
                error=f"exit code {code}",
                exit_code=code,
                stdout=stdout,
                stderr=stderr,
            )
        return Outcome("completed", results=results, exit_code=0, stdout=stdout, stderr=stderr)

    def _failed(self, run: _Run, error: str) -> Outcome:
        state: OutcomeState = "cancelled" if run.interrupted == _STOPPED else "failed"
        return Outcome(state, error=error, stdout=run.stdout.text(), stderr=run.stderr.text())


def _describe_failure(run: _Run, exc: wasmtime.WasmtimeError | wasmtime.Trap) -> str:
    """One clear line for what stopped the module."""
    limits = run.spec.limits
    if run.interrupted == _TIMEOUT:
        default = "" if limits.timeout_s is not None else _DEFAULT.format(field="timeout_s")
        return f"timeout after {float(run.timeout_s or 0)}s{default}"
    if run.interrupted == _STOPPED:
        return _STOPPED
    if isinstance(exc, wasmtime.Trap):
        code = exc.trap_code
        if code is wasmtime.TrapCode.OUT_OF_FUEL:
            return f"out of fuel (limit {limits.fuel})" if limits.fuel else "out of fuel"
        if code is not None:
            return f"wasm trap: {code.name.lower().replace('_', ' ')}"
        return f"wasm trap: {short_error(exc)}"
    text = short_error(exc)
    if run.memory_mb is not None and "exceeds memory limits" in text:
        default = "" if limits.memory_mb is not None else _DEFAULT.format(field="memory_mb")
        return f"memory limit {run.memory_mb} MB exceeded{default} ({text})"
    return text


_DEFAULT = " (the worker's default for wasm tasks; set limits.{field} to change it)"
