"""Cold vs warm task start on a worker: what the module's state costs before the task runs.

The worker's own path for a wasm task whose start command names its module by digest
(``WorkerAgent._artifact`` then ``WasmRuntime.start`` + ``wait``), in three states:

- **not on the worker**: the verified bytes are kept in the blob store (as after the
  proxy delivered them), compiled, the ``.cwasm`` written, then run. The delivery over
  MQTT itself is not in this figure: ``python -m bench.delivery`` measures it;
- **on disk, not in memory** (a restarted worker): a new blob store and module cache on
  the same directories; the blob is read and hashed, the ``.cwasm`` read, its HMAC
  checked and deserialised, then run: no compile;
- **in memory**: the same task again: no file read, no compile.

Each run uses a module no other run has seen (a unique constant), at two sizes. Nothing
here asserts on time.

    python -m bench.coldstart [--reps 50] [--json bench/results/coldstart.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.runtimes import module_wasm, run_through, wasm_spec
from bench.spine import machine, percentile
from edgeplane.modules import ModuleCache
from edgeplane.runtimes import WasmRuntime
from edgeplane.worker.agent import ArtifactCache

DEFAULT_JSON = Path(__file__).parent / "results" / "coldstart.json"
#: Module sizes, in exported functions (as bench.runtimes' cold start).
FUNCS = (1, 200)
STATES = ("not on the worker", "on disk, not in memory", "in memory")


class Worker:
    """A worker's module caches on ``directory``: a new one is a restarted worker."""

    def __init__(self, directory: Path) -> None:
        self.artifacts = ArtifactCache(directory / "artifacts")
        self.runtime = WasmRuntime(modules=ModuleCache(cache_dir=directory / "modules"))

    async def run(self, data: bytes, name: str, *, delivered: bool) -> None:
        digest = hashlib.sha256(data).hexdigest()
        if delivered:
            await self.artifacts.keep(digest, data)  # verified bytes from the proxy
        held = await self.artifacts.load(digest)
        assert held is not None
        await run_through(self.runtime, wasm_spec(name, data), held)


async def measure(funcs: int, reps: int, root: Path) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {state: [] for state in STATES}
    warmup = 3  # the engine's first compile also sets up the compiler
    for i in range(warmup + reps):
        data = module_wasm(10**6 * funcs + i, funcs)
        directory = root / f"{funcs}-{i}"
        first = Worker(directory)
        began = time.perf_counter_ns()
        await first.run(data, f"cold-{i}", delivered=True)
        cold = time.perf_counter_ns() - began
        await first.runtime.close()
        restarted = Worker(directory)  # built before the clock: a worker's start-up
        began = time.perf_counter_ns()
        await restarted.run(data, f"disk-{i}", delivered=False)
        disk = time.perf_counter_ns() - began
        began = time.perf_counter_ns()
        await restarted.run(data, f"memory-{i}", delivered=False)
        memory = time.perf_counter_ns() - began
        compiled = restarted.runtime.modules
        assert (compiled.compiles, compiled.loads) == (0, 1), "a restart compiled again"
        await restarted.runtime.close()
        if i >= warmup:
            for state, ns in zip(STATES, (cold, disk, memory), strict=True):
                samples[state].append(ns / 1000)
    return samples


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__)
    parser.add_argument("--reps", type=int, default=50, help="timed runs per size and state")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="FILE")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", "bench.coldstart", *given])
    console = Console(width=None if sys.stdout.isatty() else 120)
    table = Table(title="wasm task start by where its module is (start + wait of a no-op)")
    for column in ("module", "state", "runs", "p50 µs", "p99 µs"):
        table.add_column(column)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeplane-coldstart-") as tmp:
        for funcs in FUNCS:
            size = len(module_wasm(0, funcs))
            samples = asyncio.run(measure(funcs, args.reps, Path(tmp)))
            for state, values in samples.items():
                ordered = sorted(values)
                row = {
                    "module": f"{funcs} function{'s' if funcs > 1 else ''}, {size} bytes",
                    "state": state,
                    "runs": len(ordered),
                    "p50 µs": round(percentile(ordered, 50), 1),
                    "p99 µs": round(percentile(ordered, 99), 1),
                }
                rows.append(row)
                table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    console.print(f"command: {command}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"command": command, "machine": machine(), "rows": rows}
    args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
