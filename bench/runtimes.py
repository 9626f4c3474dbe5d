"""Runtime start times and process footprint: what a task costs before it does any work.

Five sections, each a table with its target beside the figures:

- **wasm warm**: a compiled module already cached → new instance → call of a no-op export,
  through :class:`WasmRuntime` (``start`` + ``wait``, the worker's real path) and as bare
  wasmtime-py steps on an engine configured the same way, so the runtime's own overhead
  shows; plus the pieces (instantiate only, call only, the event loop → pool thread hop);
- **wasm cold**: a module never seen before (every run's bytes differ), compiled,
  instantiated and called, at two module sizes; plus the ``.cwasm`` load of a restart;
- **host**: ``start`` + ``wait`` of ``true`` through :class:`HostRuntime` against bare
  ``asyncio.create_subprocess_exec`` and ``subprocess.run``;
- **container**: a busybox image (built offline from the static busybox) through
  :class:`ContainerRuntime`, start → process running and start → ``true`` completed,
  against plain ``runc run`` of the same rootfs; only as root with runc installed;
- **footprint**: idle RSS/USS of ``edgeplane worker`` and ``edgeplane manager`` (on a
  Mosquitto started here on a free port) and of ``edgeplane up``; when the worker is over
  its target (or with ``--imports``), the RSS each imported package adds, so it is clear
  what to cut.

Nothing here asserts on time: this is a measurement, not a test.

    python -m bench.runtimes [--quick] [--imports] [--json bench/results/runtimes.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import wasmtime
from rich.console import Console
from rich.table import Table

from bench.spine import (
    EDGEPLANE,
    MB,
    READY_TIMEOUT_S,
    SETTLE_S,
    Child,
    clean_env,
    machine,
    percentile,
    process,
    wait_ready,
)
from edgeplane.errors import EdgeplaneError
from edgeplane.modules import ModuleCache, make_engine
from edgeplane.runtimes import (
    ContainerRuntime,
    Handle,
    HostRuntime,
    Outcome,
    RunSpec,
    Runtime,
    WasmRuntime,
)
from edgeplane.runtimes.busybox import busybox_containers_unavailable, busybox_image
from edgeplane.runtimes.container import find_runc
from edgeplane.runtimes.host import group_alive, group_members
from edgeplane.runtimes.supervised import STDOUT
from edgeplane.runtimes.wasm import UNLIMITED_FUEL
from edgeplane.transport.broker import MosquittoProcess, free_port

DESCRIPTION = "Runtime start times (wasm, host, container) and idle footprint of each process."
DEFAULT_JSON = Path(__file__).parent / "results" / "runtimes.json"
#: Targets of the performance issue.
WARM_TARGET_US = 100.0
WORKER_RSS_TARGET_MB = 50.0
#: Cold-start module sizes, in exported functions.
COLD_FUNCS = (1, 200)
#: Untimed cold runs first: the engine's first compile also sets up the compiler.
COLD_WARMUP = 3
#: What ``edgeplane worker`` imports before it starts (the CLI, then its role).
WORKER_IMPORTS = "import edgeplane.cli.main, edgeplane.roles.worker"
#: Packages listed one by one in the import table (largest first); the rest share a row.
TOP_PACKAGES = 20

Row = dict[str, Any]


@dataclass(frozen=True)
class Reps:
    """Timed runs per measurement (warm-up runs come on top)."""

    warm: int
    cold: int
    host: int
    container: int


QUICK = Reps(warm=300, cold=30, host=30, container=20)
FULL = Reps(warm=5000, cold=300, host=500, container=200)


@dataclass
class Section:
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- timing -------------------------------------------------------------------------------


def sample_us(call: Callable[[int], object], reps: int, warmup: int) -> list[float]:
    """``call(i)`` for i = 0, 1, …: ``warmup`` untimed runs, then ``reps`` timed, in µs.

    The index runs on across warm-up and timed runs, so calls that must not repeat
    (a module never seen before) can take fresh inputs by index.
    """
    for i in range(warmup):
        call(i)
    samples = []
    for i in range(warmup, warmup + reps):
        began = time.perf_counter_ns()
        call(i)
        samples.append((time.perf_counter_ns() - began) / 1000)
    return samples


async def sample_async_us(
    call: Callable[[int], Awaitable[object]], reps: int, warmup: int
) -> list[float]:
    """:func:`sample_us` for coroutines, all on the running loop."""
    for i in range(warmup):
        await call(i)
    samples = []
    for i in range(warmup, warmup + reps):
        began = time.perf_counter_ns()
        await call(i)
        samples.append((time.perf_counter_ns() - began) / 1000)
    return samples


def spread(samples: Sequence[float]) -> Row:
    ordered = sorted(samples)
    return {
        "runs": len(ordered),
        "p50 µs": round(percentile(ordered, 50), 1),
        "p99 µs": round(percentile(ordered, 99), 1),
    }


def verdict(figure: float, target: float, what: str) -> str:
    return f"{what} ≤ {target:g}: {'met' if figure <= target else 'MISSED'}"


def completed(outcome: Outcome) -> None:
    """A run that did not complete measured something else: stop rather than report it."""
    if outcome.state != "completed":
        raise EdgeplaneError(f"benchmark task ended {outcome.state}: {outcome.error}")


async def run_through(runtime: Runtime, spec: RunSpec, artifact: bytes | None) -> None:
    """Start, wait and release an attempt, as the worker does (release: once the final
    event is saved), and check it completed."""
    handle = await runtime.start(spec, artifact)
    completed(await runtime.wait(handle))
    await runtime.release(handle)


# --- wasm ---------------------------------------------------------------------------------


def module_wasm(salt: int, funcs: int) -> bytes:
    """A module exporting ``noop`` and ``funcs - 1`` small functions; ``salt`` makes its
    bytes (so its digest) unique, which keeps every cache from hitting."""
    extra = "".join(
        f'(func (export "f{j}") (param i32) (result i32) local.get 0 i32.const {j} i32.add)'
        for j in range(funcs - 1)
    )
    wat = f'(module (global i32 (i32.const {salt})) (func (export "noop")) {extra})'
    return bytes(wasmtime.wat2wasm(wat))


def wasm_spec(name: str, data: bytes) -> RunSpec:
    digest = hashlib.sha256(data).hexdigest()
    return RunSpec(task_id=name, attempt=1, runtime="wasm", name="noop", artifact=digest)


def limited_store(engine: wasmtime.Engine) -> wasmtime.Store:
    """A store that may run on a fuel- and epoch-checked engine, as the runtime's stores."""
    store = wasmtime.Store(engine)
    store.set_fuel(UNLIMITED_FUEL)
    store.set_epoch_deadline(1)
    return store


def call_noop(store: wasmtime.Store, instance: wasmtime.Instance) -> None:
    noop = instance.exports(store)["noop"]
    assert isinstance(noop, wasmtime.Func)
    noop(store)


async def wasm_warm(reps: int) -> Section:
    section = Section("wasm warm start: cached module → new instance → call `noop` (no-op)")
    warmup = max(20, reps // 10)
    data = module_wasm(0, 1)
    spec = wasm_spec("warm", data)
    runtime = WasmRuntime()
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        await run_through(runtime, spec, data)  # compiles it once

        async def through_runtime(_: int) -> None:
            await run_through(runtime, spec, None)

        async def thread_hop(_: int) -> None:
            await asyncio.get_running_loop().run_in_executor(pool, int)

        path = spread(await sample_async_us(through_runtime, reps, warmup))
        hop = spread(await sample_async_us(thread_hop, reps, warmup))
    finally:
        await runtime.close()
        pool.shutdown()

    cache = ModuleCache(make_engine())
    compiled = cache.get(None, data)
    engine, module, pre = cache.engine, compiled.module, compiled.pre

    def instance_call(_: int) -> None:
        store = limited_store(engine)
        call_noop(store, wasmtime.Instance(store, module, []))

    def pre_call(_: int) -> None:
        store = limited_store(engine)
        call_noop(store, pre.instantiate(store))

    def pre_only(_: int) -> None:
        pre.instantiate(limited_store(engine))

    store = limited_store(engine)
    noop = pre.instantiate(store).exports(store)["noop"]
    assert isinstance(noop, wasmtime.Func)
    plain_engine = wasmtime.Engine()
    plain_module = wasmtime.Module(plain_engine, data)

    def plain_instance_call(_: int) -> None:
        plain_store = wasmtime.Store(plain_engine)
        call_noop(plain_store, wasmtime.Instance(plain_store, plain_module, []))

    bare = [
        ("bare: Store + InstancePre.instantiate + call", pre_call),
        ("bare: Store + Instance(module) + call", instance_call),
        ("bare: Store + InstancePre.instantiate (instantiate only)", pre_only),
        ("bare: call only (existing instance, Func.__call__)", lambda _: noop(store)),
        ("bare: ModuleCache hit (get by digest)", lambda _: cache.get(compiled.digest)),
        ("bare: Store + Instance + call, default engine (no fuel/epochs)", plain_instance_call),
    ]
    section.rows.append(
        {
            "path": "WasmRuntime start + wait",
            **path,
            "target": verdict(path["p50 µs"], WARM_TARGET_US, "p50 µs"),
        }
    )
    section.rows.append({"path": "asyncio → pool thread → asyncio (empty call)", **hop})
    figures = {name: spread(sample_us(call, reps, warmup)) for name, call in bare}
    section.rows.extend({"path": name, **row} for name, row in figures.items())
    floor = figures[bare[0][0]]["p50 µs"]
    section.notes.append(
        f"WasmRuntime adds {path['p50 µs'] - floor:.1f} µs (p50) to the bare InstancePre "
        f"steps; the loop → thread → loop hop alone is {hop['p50 µs']:.1f} µs."
    )
    section.notes.append(
        "bare rows use an engine configured as the runtime's (fuel metering, epoch "
        "interruption) and the public wasmtime-py API; the runtime calls through its own "
        "ctypes path and sets an epoch callback per store."
    )
    return section


async def wasm_cold(reps: int) -> Section:
    section = Section("wasm cold start: a module never seen before, compiled then run")
    salts = iter(range(1, 10**9))
    runtime = WasmRuntime()
    try:
        for funcs in COLD_FUNCS:
            section.rows.extend(await cold_rows(runtime, funcs, reps, salts))
    finally:
        await runtime.close()
    section.notes.append(
        "each run compiles different bytes (a unique constant), so neither the runtime's "
        "ModuleCache nor anything in wasmtime can hit; wat2wasm happens before timing."
    )
    return section


async def cold_rows(runtime: WasmRuntime, funcs: int, reps: int, salts: Iterator[int]) -> list[Row]:
    """Every path at one module size, each on modules no other run has seen."""
    total = COLD_WARMUP + reps
    label = f"{funcs} function{'s' if funcs > 1 else ''}, {len(module_wasm(0, funcs))} bytes"
    engine = make_engine()

    def fresh() -> list[bytes]:
        return [module_wasm(next(salts), funcs) for _ in range(total)]

    runs = fresh()
    specs = [wasm_spec(f"cold-{funcs}-{i}", data) for i, data in enumerate(runs)]

    async def through_runtime(i: int) -> None:
        await run_through(runtime, specs[i], runs[i])

    rows = [
        {
            "path": "WasmRuntime start + wait (cache miss, bytes given)",
            **spread(await sample_async_us(through_runtime, reps, COLD_WARMUP)),
        }
    ]
    whole = fresh()

    def compile_run(i: int) -> None:
        store = limited_store(engine)
        call_noop(store, wasmtime.Instance(store, wasmtime.Module(engine, whole[i]), []))

    only = fresh()
    blob = bytes(wasmtime.Module(engine, only[0]).serialize())
    bare: list[tuple[str, Callable[[int], object]]] = [
        ("bare: compile + Store + Instance + call", compile_run),
        ("bare: compile only (Module)", lambda i: wasmtime.Module(engine, only[i])),
        (
            "bare: Module.deserialize of its .cwasm (a restart)",
            lambda _: wasmtime.Module.deserialize(engine, blob),
        ),
    ]
    rows.extend({"path": name, **spread(sample_us(call, reps, COLD_WARMUP))} for name, call in bare)
    return [{"module": label, **row} for row in rows]


# --- host ---------------------------------------------------------------------------------


#: A process group id no process can have: above Linux's largest possible pid_max (2**22).
NO_SUCH_GROUP = 2**22 + 1


async def host_section(reps: int, work_dir: Path) -> Section:
    section = Section("host start: run `true` to its exit")
    warmup = max(3, reps // 10)
    runtime = HostRuntime(base_dir=work_dir / "host")
    spec = RunSpec(task_id="host", attempt=1, runtime="host", command=["true"])

    async def through_runtime(_: int) -> None:
        await run_through(runtime, spec, None)

    async def bare_asyncio(_: int) -> None:
        proc = await asyncio.create_subprocess_exec("true")
        if await proc.wait() != 0:
            raise EdgeplaneError("`true` failed")

    try:
        section.rows.append(
            {
                "path": "HostRuntime start + wait (allow-host)",
                **spread(await sample_async_us(through_runtime, reps, warmup)),
            }
        )
    finally:
        await runtime.close()
    section.rows.append(
        {
            "path": "bare: asyncio.create_subprocess_exec + wait",
            **spread(await sample_async_us(bare_asyncio, reps, warmup)),
        }
    )
    section.rows.append(
        {
            "path": "bare: subprocess.run",
            **spread(sample_us(lambda _: subprocess.run(["true"], check=True), reps, warmup)),
        }
    )
    processes = len(psutil.pids())
    section.rows.append(
        {
            "path": f"group_members scan ({processes} processes on the machine)",
            **spread(sample_us(lambda _: group_members(os.getpid()), reps, warmup)),
        }
    )
    section.rows.append(
        {
            "path": "group_alive, nothing left in the group (one killpg signal 0)",
            **spread(sample_us(lambda _: group_alive(NO_SUCH_GROUP), reps, warmup)),
        }
    )
    section.notes.append(
        "HostRuntime makes a scratch directory and log files per attempt; after the exit it "
        "asks with group_alive whether anything of the group is left, and scans the process "
        "table (group_members) only when something is."
    )
    return section


# --- container ----------------------------------------------------------------------------


def spread_ms(samples_us: Sequence[float]) -> Row:
    """Container starts are tens of milliseconds: p50/p95 in ms."""
    ordered = sorted(samples_us)
    return {
        "runs": len(ordered),
        "p50 ms": round(percentile(ordered, 50) / 1000, 2),
        "p95 ms": round(percentile(ordered, 95) / 1000, 2),
    }


def container_spec(i: int, command: list[str]) -> RunSpec:
    return RunSpec(
        task_id=f"bench-{i}", attempt=1, runtime="container", image="busybox", command=command
    )


async def first_output(runtime: ContainerRuntime, handle: Handle) -> None:
    """Until the container's process has written to its stdout (polled every 0.2 ms)."""
    stdout = Path(runtime.inspect(handle)["bundle"]) / STDOUT
    while not os.stat(stdout).st_size:  # noqa: ASYNC110 - a file has nothing to await
        await asyncio.sleep(0.0002)


async def container_section(reps: int, work_dir: Path) -> Section:
    """edgeplane's container start against plain ``runc run`` of the same rootfs."""
    section = Section("container start: busybox through ContainerRuntime vs plain `runc run`")
    if (why := busybox_containers_unavailable()) is not None:
        section.notes.append(f"not measured: {why}")
        return section
    busybox_image(work_dir / "images" / "busybox")
    warmup = max(3, reps // 10)
    runtime = ContainerRuntime(work_dir / "worker", work_dir / "images", grace_s=0.0)

    running: list[float] = []

    async def until_running(i: int) -> None:
        began = time.perf_counter_ns()
        handle = await runtime.start(container_spec(i, ["sh", "-c", "echo up"]), None)
        await first_output(runtime, handle)
        if i >= warmup:  # the exit and cleanup are not this figure's
            running.append((time.perf_counter_ns() - began) / 1000)
        completed(await runtime.wait(handle))
        await runtime.release(handle)

    async def until_completed(i: int) -> None:
        await run_through(runtime, container_spec(i, ["true"]), None)

    try:
        for i in range(warmup + reps):
            await until_running(i)
        whole = await sample_async_us(until_completed, reps, warmup)
    finally:
        await runtime.close()
    section.rows.append({"path": "ContainerRuntime start → process running", **spread_ms(running)})
    section.rows.append({"path": "ContainerRuntime start + wait of `true`", **spread_ms(whole)})
    (rootfs,) = runtime.images.cache_dir.iterdir()
    bundle = plain_bundle(rootfs, work_dir / "bundle")
    runc = find_runc()
    assert runc is not None
    state = work_dir / "runc-state"

    def run(i: int) -> None:
        argv = [runc, "--root", str(state), "run", "--bundle", str(bundle), f"bench-{i}"]
        subprocess.run(argv, check=True, capture_output=True, timeout=30)

    plain = sample_us(run, reps, warmup)
    section.rows.append({"path": "plain `runc run` of `true`, same rootfs", **spread_ms(plain)})
    overhead = percentile(sorted(whole), 50) - percentile(sorted(plain), 50)
    section.notes.append(
        f"ContainerRuntime adds {overhead / 1000:.1f} ms (p50) to plain `runc run`: the "
        "image lookup, a bundle dir with config.json and log files, asyncio's child "
        "watcher, and the cleanup after the exit (`runc delete` only when runc left state)."
    )
    section.notes.append(
        "'running' is the first byte of the container's stdout (`sh -c 'echo up'`), "
        "polled every 0.2 ms; plain `runc run` uses `runc spec`'s config with the root "
        "pointed at the rootfs the runtime unpacked, read-only."
    )
    return section


def plain_bundle(rootfs: Path, bundle: Path) -> Path:
    """A bundle of ``runc spec``'s own config running ``/bin/true`` in ``rootfs``."""
    bundle.mkdir(parents=True)
    runc = find_runc()
    assert runc is not None
    subprocess.run([runc, "spec"], cwd=bundle, capture_output=True, check=True)
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["args"] = ["/bin/true"]
    config["process"]["terminal"] = False
    config["root"] = {"path": str(rootfs), "readonly": True}
    config_path.write_text(json.dumps(config))
    return bundle


# --- footprint ----------------------------------------------------------------------------


def usage(ps: psutil.Process) -> Row:
    info = ps.memory_full_info()
    return {
        "RSS MB": round(info.rss / MB, 1),
        "USS MB": round(info.uss / MB, 1),
        "threads": ps.num_threads(),
    }


def wait_for_line(child: Child, text: str, what: str) -> None:
    """Until ``child`` prints a line containing ``text`` (its ready line)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(text in line for line in child.stdout().splitlines()):
            return
        if not child.alive():
            raise EdgeplaneError(f"{what} exited early:\n{child.stderr_tail()}")
        time.sleep(0.05)
    raise EdgeplaneError(f"{what} not ready after {READY_TIMEOUT_S:g}s:\n{child.stderr_tail()}")


def footprint_section(work_dir: Path, env: dict[str, str]) -> Section:
    section = Section(f"idle footprint, {SETTLE_S:g} s after ready")
    mosquitto = MosquittoProcess(work_dir / "mosquitto", free_port())
    url = mosquitto.start()
    try:
        manager_argv = [
            *EDGEPLANE,
            "manager",
            "--broker",
            url,
            "--port",
            str(free_port()),
            "--data-dir",
            str(work_dir / "manager"),
        ]
        worker_argv = [
            *EDGEPLANE,
            "worker",
            "--manager",
            url,
            "--worker-id",
            "bench-idle",
            "--data-dir",
            str(work_dir / "worker"),
        ]
        with process(manager_argv, env, work_dir, "manager") as manager:
            wait_for_line(manager, "serving", "`edgeplane manager`")
            with process(worker_argv, env, work_dir, "worker") as worker:
                wait_for_line(worker, "connected", "`edgeplane worker`")
                time.sleep(SETTLE_S)
                worker_row = usage(worker.ps)
                target = verdict(worker_row["RSS MB"], WORKER_RSS_TARGET_MB, "RSS MB")
                section.rows.append({"process": "edgeplane worker", **worker_row, "target": target})
                section.rows.append(
                    {"process": "edgeplane manager (SQLite, 1 worker joined)", **usage(manager.ps)}
                )
        if mosquitto.pid is not None:
            section.rows.append({"process": "mosquitto", **usage(psutil.Process(mosquitto.pid))})
    finally:
        mosquitto.stop()
    port = free_port()
    up_argv = [*EDGEPLANE, "up", "--data-dir", str(work_dir / "up"), "--port", str(port)]
    with process(up_argv, env, work_dir, "up") as up:
        wait_ready(f"http://127.0.0.1:{port}", up, time.monotonic() + READY_TIMEOUT_S)
        time.sleep(SETTLE_S)
        section.rows.append({"process": "edgeplane up (2 workers, in-process)", **usage(up.ps)})
        for child in up.ps.children(recursive=True):
            section.rows.append({"process": f"  its child {child.name()}", **usage(child)})
    section.notes.append(
        "each process runs as `python -m edgeplane …` with its own data dir; worker and "
        "manager share a Mosquitto started here; `up` brings its own."
    )
    return section


# --- where the worker's memory goes -------------------------------------------------------

#: Imports the modules named on each stdin line; answers with those that failed.
_IMPORTER = """
import importlib, sys
print("ready", flush=True)
for line in sys.stdin:
    failed = []
    for name in line.split():
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name)
    print(" ".join(failed), flush=True)
"""
_PRINT_LOADED = "import sys; print(chr(10).join(sys.modules))"


@dataclass(frozen=True)
class Package:
    """The modules of one package that the worker loads, in the order they finished."""

    name: str
    modules: tuple[str, ...]
    import_ms: float
    rank: int

    @property
    def stdlib(self) -> bool:
        return self.name.split(".")[0] in sys.stdlib_module_names


def package_of(module: str) -> str:
    """edgeplane by subpackage (what one would cut), everything else by top-level name."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "edgeplane" else parts[0]


def worker_packages() -> list[Package]:
    """The worker's imports by package, each package after the packages it imports.

    ``python -X importtime`` lists a module when it finished loading, so after all it
    imported; only modules that really loaded are kept. A package is ranked by its last
    module to finish: ranking by its ``__init__`` instead charges a package whose submodules
    load late (``edgeplane.cli``, ``importlib``) with everything those pull in.
    """
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"{WORKER_IMPORTS}; {_PRINT_LOADED}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    loaded = set(traced.stdout.split())
    order: dict[str, int] = {}  # module → self µs, in finishing order
    for line in traced.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        name = fields[-1].strip()
        if len(fields) == 3 and fields[0].strip().isdigit() and name in loaded:
            order.setdefault(name, int(fields[0]))
    position = {name: i for i, name in enumerate(order)}
    grouped: dict[str, list[str]] = {}
    for name in order:
        grouped.setdefault(package_of(name), []).append(name)
    packages = [
        Package(
            name=key,
            modules=tuple(members),
            import_ms=sum(order[m] for m in members) / 1000,
            rank=position[members[-1]],
        )
        for key, members in grouped.items()
    ]
    return sorted(packages, key=lambda p: p.rank)


def summed(label: str, packages: Sequence[Package], growth: dict[str, float]) -> Row:
    return {
        "package": label,
        "modules": sum(len(p.modules) for p in packages),
        "import ms": round(sum(p.import_ms for p in packages), 1),
        "RSS MB": round(sum(growth[p.name] for p in packages), 1),
    }


def imports_section(worker_rss_mb: float | None) -> Section:
    section = Section("worker imports: the RSS each package adds (its own, not its deps)")
    packages = worker_packages()
    growth: dict[str, float] = {}
    failed: list[str] = []
    child = subprocess.Popen(
        [sys.executable, "-c", _IMPORTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        ps = psutil.Process(child.pid)
        child.stdout.readline()
        base = usage(ps)
        rss = ps.memory_info().rss
        for package in packages:
            child.stdin.write(" ".join(package.modules) + "\n")
            failed.extend(child.stdout.readline().split())
            now = ps.memory_info().rss
            growth[package.name] = (now - rss) / MB
            rss = now
        loaded = usage(ps)
    finally:
        child.kill()
        child.wait()
    ranked = sorted(packages, key=lambda p: growth[p.name], reverse=True)
    for package in ranked[:TOP_PACKAGES]:
        label = f"{package.name} (stdlib)" if package.stdlib else package.name
        section.rows.append(summed(label, [package], growth))
    rest = ranked[TOP_PACKAGES:]
    stdlib = sum(p.stdlib for p in rest)
    label = f"{len(rest) - stdlib} other packages and {stdlib} other stdlib ones"
    section.rows.append(summed(label, rest, growth))
    section.rows.append(
        {
            "package": "= interpreter alone (RSS / USS)",
            "RSS MB": f"{base['RSS MB']} / {base['USS MB']}",
        }
    )
    everything = summed("= after all the worker's imports (RSS / USS)", packages, growth)
    everything["RSS MB"] = f"{loaded['RSS MB']} / {loaded['USS MB']}"
    section.rows.append(everything)
    if worker_rss_mb is not None:
        section.rows.append(
            {
                "package": "= running idle worker, beyond its imports",
                "RSS MB": round(worker_rss_mb - loaded["RSS MB"], 1),
            }
        )
    section.notes.append(
        f"modules from `python -X importtime -c '{WORKER_IMPORTS}'`, imported package by "
        "package in a fresh interpreter, dependencies first; a package's RSS is the growth "
        "while its modules load (shared libraries count as their pages are touched)."
    )
    if failed:
        section.notes.append(f"{len(failed)} modules did not import: {', '.join(failed[:5])}")
    return section


# --- report -------------------------------------------------------------------------------


def table(section: Section) -> Table:
    out = Table(title=section.title)
    columns = list(dict.fromkeys(key for row in section.rows for key in row))
    for name in columns:
        numeric = all(isinstance(row.get(name, 0), int | float) for row in section.rows)
        out.add_column(name, justify="right" if numeric or "MB" in name else "left")
    for row in section.rows:
        out.add_row(*(str(row.get(name, "")) for name in columns))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.runtimes", description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--imports", action="store_true", help="break down the worker's imports even under target"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="FILE")
    return parser.parse_args(argv)


def guarded(title: str, step: Callable[[], Section]) -> Section:
    """A section that raised is reported with why, and the next sections still run."""
    try:
        return step()
    except (EdgeplaneError, OSError, subprocess.SubprocessError, psutil.Error) as exc:
        return Section(title, notes=[f"not finished: {type(exc).__name__}: {exc}"])


def run(args: argparse.Namespace, console: Console, work_dir: Path) -> dict[str, Section]:
    """Every section by key (the keys of the JSON file)."""
    reps = QUICK if args.quick else FULL
    env = clean_env(secrets.token_urlsafe(16))
    steps: list[tuple[str, Callable[[], Section]]] = [
        ("wasm_warm", lambda: asyncio.run(wasm_warm(reps.warm))),
        ("wasm_cold", lambda: asyncio.run(wasm_cold(reps.cold))),
        ("host", lambda: asyncio.run(host_section(reps.host, work_dir))),
        ("container", lambda: asyncio.run(container_section(reps.container, work_dir))),
        ("footprint", lambda: footprint_section(work_dir, env)),
    ]
    sections = {}
    for key, step in steps:
        console.print(f"{key} …")
        sections[key] = guarded(key, step)
    rows = sections["footprint"].rows
    worker = next((row for row in rows if row.get("process") == "edgeplane worker"), None)
    worker_rss = None if worker is None else float(worker["RSS MB"])
    if args.imports or (worker_rss is not None and worker_rss > WORKER_RSS_TARGET_MB):
        console.print("worker_imports …")
        sections["worker_imports"] = guarded("worker_imports", lambda: imports_section(worker_rss))
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", "bench.runtimes", *given])
    # Piped output (a log, a report) keeps tables unwrapped rather than 80 columns wide.
    console = Console(width=None if sys.stdout.isatty() else 120)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="edgeplane-bench-") as tmp:
        sections = run(args, console, Path(tmp))
    info["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    for section in sections.values():
        console.print(table(section))
        for note in section.notes:
            console.print(f"  note: {note}")
    console.print(
        f"machine: {info['nproc']} cpus, {info['memory_mb']} MB, Python {info['python']},"
        f" {info['platform']}, load average (1 min) {info['loadavg_1m_at_start']} at start,"
        f" {info['loadavg_1m_at_end']} at end; edgeplane {info['edgeplane']}"
    )
    console.print(f"command: {command}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": command,
        "machine": info,
        "sections": {k: asdict(s) for k, s in sections.items()},
    }
    args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
