"""The placement benchmark: scheduler latency at each level of root → cluster → worker.

Only the pure schedulers run here, on synthetic but realistic inputs from a seeded RNG:
workers offering wasm, host or both, one of three site labels, random free cpu, memory
and slots. Four sections:

- **root**: one ``place_on_clusters`` call for one task, and per task in a batch of
  1,000, over 10 / 100 / 1,000 clusters built from aggregates of 20 workers each;
- **cluster**: ``make_plan`` (resource-fit and round-robin) over 45 / 1,000 / 10,000
  workers, one task and per task in a batch of 1,000;
- **aggregate**: the encoded message size, the time to fold workers into it, and the
  root's CPU per message received (``decode`` + ``parse_body`` + ``cluster_view``);
- **spread group**: both levels again for replicas of one service (a spread group,
  docs/scheduling.md), which look at every eligible worker or cluster once each.

Nothing here asserts on time: this is a measurement, not a test.

    python -m bench.placement [--quick] [--seed 7] [--json bench/results/placement.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgeplane import __version__
from edgeplane.model import Aggregate
from edgeplane.model.cluster import Location
from edgeplane.protocol.codec import decode, encode
from edgeplane.protocol.messages import parse_body
from edgeplane.scheduling.aggregate import aggregate, cluster_view
from edgeplane.scheduling.placement import place_on_clusters
from edgeplane.scheduling.snapshot import ClusterView, GeoPoint, TaskDemand, WorkerView
from edgeplane.scheduling.strategies import make_plan

DESCRIPTION = "Latency of the root and cluster schedulers and the cost of aggregates."
DEFAULT_JSON = Path(__file__).parent / "results" / "placement.json"
RUNTIME_SETS = (frozenset({"wasm"}), frozenset({"host"}), frozenset({"wasm", "host"}))
LABEL_SETS = ({"site": "a"}, {"site": "b"}, {"site": "c"})
WORKERS_PER_CLUSTER = 20
BATCH = 1000
ROOT_SIZES = (10, 100, 1000)
CLUSTER_SIZES = (45, 1000, 10_000)
AGGREGATE_SIZES = (10, 100, 1000, 10_000)
#: Cluster-level targets for one task, in ms by worker count (Oakestra: < 3.2 ms at 45).
CLUSTER_TARGET_MS = {45: 1, 10_000: 20}

Row = dict[str, Any]


# --- inputs -------------------------------------------------------------------------------


def make_workers(rng: random.Random, n: int, prefix: str = "w") -> list[WorkerView]:
    return [
        WorkerView(
            id=f"{prefix}{i}",
            runtimes=rng.choice(RUNTIME_SETS),
            labels=rng.choice(LABEL_SETS),
            tee=frozenset({"sgx"}) if rng.random() < 0.1 else frozenset(),
            free_slots=rng.randint(0, 8),
            free_cpu=round(rng.uniform(0, 8), 2),
            free_memory_mb=rng.randint(0, 16384),
            order=i,
        )
        for i in range(n)
    ]


def europe(rng: random.Random) -> Location:
    return Location(lat=round(rng.uniform(36, 60), 4), lon=round(rng.uniform(-9, 30), 4))


def make_clusters(rng: random.Random, n: int) -> list[ClusterView]:
    """Views from aggregates, as the root builds them; a third also carry a region label."""
    views = []
    for c in range(n):
        agg = aggregate(make_workers(rng, WORKERS_PER_CLUSTER, f"c{c}w"), location=europe(rng))
        labels = {"region": "eu"} if c % 3 == 0 else {}
        views.append(cluster_view(f"c{c}", c, agg, labels=labels))
    return views


def make_tasks(rng: random.Random, n: int, *, root: bool, prefix: str = "t") -> list[TaskDemand]:
    """A mix: a third label a site, and at the root a quarter ask for a 500 km geo radius."""
    tasks = []
    for i in range(n):
        labels = rng.choice(LABEL_SETS) if rng.random() < 1 / 3 else {}
        geo = None
        if root and rng.random() < 0.25:
            where = europe(rng)
            geo = GeoPoint(where.lat, where.lon, 500.0)
        tasks.append(
            TaskDemand(
                id=f"{prefix}{i}",
                runtime=rng.choice(("wasm", "host")),
                seq=float(i),
                labels=labels,
                cpu=rng.choice((0.0, 0.25, 0.5, 1.0, 2.0)),
                memory_mb=rng.choice((0, 64, 256, 1024)),
                geo=geo,
            )
        )
    return tasks


# --- timing -------------------------------------------------------------------------------


def sample_us(call: Callable[[int], object], reps: int, warmup: int) -> list[float]:
    """``call(i)`` timed ``reps`` times after ``warmup`` untimed calls, sorted, in µs."""
    for i in range(warmup):
        call(i)
    samples = []
    for i in range(reps):
        began = time.perf_counter_ns()
        call(i)
        samples.append((time.perf_counter_ns() - began) / 1000)
    samples.sort()
    return samples


def percentile(ordered: Sequence[float], q: int) -> float:
    """Nearest-rank percentile of already sorted values (as ``bench.spine``, which is not
    imported: it pulls in the HTTP client, and this benchmark needs none of it)."""
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[min(len(ordered), rank) - 1]


def us(value: float) -> float:
    return round(value, 1)


def single_and_batch(
    plan: Callable[[Sequence[TaskDemand]], object],
    singles: Sequence[TaskDemand],
    batch: Sequence[TaskDemand],
    reps: int,
    batch_reps: int,
) -> Row:
    """p50/p99 of one call for one task (cycling through ``singles``), and the median
    per-task time of a whole batch."""
    one = sample_us(lambda i: plan([singles[i % len(singles)]]), reps, warmup=max(5, reps // 10))
    whole = sample_us(lambda _: plan(batch), batch_reps, warmup=1)
    return {
        "p50 µs": us(percentile(one, 50)),
        "p99 µs": us(percentile(one, 99)),
        "batch µs/task": us(statistics.median(whole) / len(batch)),
    }


# --- sections -----------------------------------------------------------------------------


def bench_root(rng: random.Random, reps: int, batch_reps: int) -> list[Row]:
    rows = []
    singles = make_tasks(rng, 200, root=True, prefix="s")
    batch = make_tasks(rng, BATCH, root=True)
    for n in ROOT_SIZES:
        clusters = make_clusters(rng, n)
        figures = single_and_batch(
            partial(place_on_clusters, clusters), singles, batch, reps, batch_reps
        )
        rows.append({"clusters": n, **figures})
    return rows


def verdict(workers: int, figures: Row) -> str:
    """The target for one task at this size, and whether its p99 meets it."""
    target = CLUSTER_TARGET_MS.get(workers)
    if target is None:
        return "—"
    met = "met" if figures["p99 µs"] < target * 1000 else "MISSED"
    return f"p99 < {target} ms: {met}"


def bench_cluster(rng: random.Random, reps: int, batch_reps: int) -> list[Row]:
    rows = []
    singles = make_tasks(rng, 200, root=False, prefix="s")
    batch = make_tasks(rng, BATCH, root=False)
    for n in CLUSTER_SIZES:
        workers = make_workers(rng, n)
        for strategy in ("resource-fit", "round-robin"):
            figures = single_and_batch(
                partial(make_plan, strategy, workers), singles, batch, reps, batch_reps
            )
            rows.append(
                {"workers": n, "strategy": strategy, **figures, "target": verdict(n, figures)}
            )
    return rows


def bench_spread(rng: random.Random, reps: int, batch_reps: int) -> list[Row]:
    """Replicas of one spread group (an application's service): each looks at every
    eligible worker (cluster) with room once; plain tasks never take this path."""
    rows = []
    key = "default/app/web"

    def replicas(n: int, prefix: str) -> list[TaskDemand]:
        return [
            TaskDemand(f"{prefix}{i}", "wasm", seq=float(i), spread=key, cpu=0.25, memory_mb=64)
            for i in range(n)
        ]

    singles, batch = replicas(200, "s"), replicas(BATCH, "t")
    for n in CLUSTER_SIZES:
        workers = [replace(w, free_slots=w.free_slots + 4) for w in make_workers(rng, n)]
        live = {w.id: {key: count} for w in workers if (count := rng.randint(0, 2))}
        for strategy in ("resource-fit", "round-robin"):
            plan = partial(make_plan, strategy, workers, spread=live)
            figures = single_and_batch(plan, singles, batch, reps, batch_reps)
            rows.append({"level": "cluster", "size": n, "strategy": strategy, **figures})
    for n in ROOT_SIZES:
        clusters = [replace(c, spread={key: rng.randint(0, 3)}) for c in make_clusters(rng, n)]
        figures = single_and_batch(
            partial(place_on_clusters, clusters), singles, batch, reps, batch_reps
        )
        rows.append({"level": "root", "size": n, "strategy": "spread", **figures})
    return rows


def fold_once(workers: Sequence[WorkerView], location: Location, _: int) -> Aggregate:
    return aggregate(workers, location=location)


def bench_aggregate(rng: random.Random, reps: int) -> list[Row]:
    rows = []
    for n in AGGREGATE_SIZES:
        workers = make_workers(rng, n)
        location = europe(rng)
        fold = sample_us(partial(fold_once, workers, location), reps, warmup=3)
        message = encode("aggregate", aggregate(workers, location=location, ts=time.time()))

        def receive(_: int, data: bytes = message) -> ClusterView:
            envelope = decode(data)
            body = parse_body(envelope.type, envelope.body)
            assert isinstance(body, Aggregate)
            return cluster_view("c0", 0, body)

        root = sample_us(receive, reps * 5, warmup=20)
        rows.append(
            {
                "workers": n,
                "msg bytes": len(message),
                "fold p50 µs": us(percentile(fold, 50)),
                "fold p99 µs": us(percentile(fold, 99)),
                "root µs/msg": us(statistics.fmean(root)),
            }
        )
    return rows


# --- report -------------------------------------------------------------------------------


def table(title: str, rows: Sequence[Row]) -> Table:
    out = Table(title=title)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for name in columns:
        out.add_column(name, justify="right" if "µs" in name or "bytes" in name else "left")
    for row in rows:
        out.add_row(*(str(row.get(name, "")) for name in columns))
    return out


def machine() -> dict[str, Any]:
    """What the figures were taken on: other load on the box skews every one of them."""
    return {
        "edgeplane": __version__,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.placement", description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--seed", type=int, default=7, help="RNG seed for the inputs")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="FILE")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", "bench.placement", *given])
    reps, batch_reps = (50, 2) if args.quick else (1000, 7)
    console = Console()
    info = machine()
    rng = random.Random(args.seed)
    sections = {
        "root placement (place_on_clusters; 20 workers per cluster; no target set)": bench_root(
            rng, reps, batch_reps
        ),
        "cluster placement (make_plan; Oakestra < 3.2 ms at 45 workers)": bench_cluster(
            rng, reps, batch_reps
        ),
        "aggregate (3 label sets; root: decode + parse_body + cluster_view)": bench_aggregate(
            rng, max(10, reps // 10)
        ),
        # (its own RNG: the sections above keep the inputs they always had)
        "spread group (replicas of one service; workers / clusters)": bench_spread(
            random.Random(args.seed + 1), reps, batch_reps
        ),
    }
    for title, rows in sections.items():
        console.print(table(title, rows))
    console.print(
        f"machine: {info['nproc']} cpus, Python {info['python']}, {info['platform']},"
        f" load average (1 min) {info['loadavg_1m_at_start']}; edgeplane {info['edgeplane']}"
    )
    console.print(f"command: {command}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"command": command, "seed": args.seed, "machine": info, "sections": sections}
    args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
