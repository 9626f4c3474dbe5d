"""Pages of the task list on a store of N tasks: what the dashboard's tasks page asks.

    python -m bench.task_list [--tasks 10000] [--pg postgresql://postgres@127.0.0.1/test]

Fills a fresh SQLite file (and, with ``--pg``, a throwaway PostgreSQL schema) with N
tasks (4 names, 10 % failed, 100 workers, 10 per creation time), then times
``Store.list_tasks`` as ``GET /tasks`` calls it (the page of 50 and its total): newest
first unfiltered, by state, by name prefix, by worker, all three, and a page near the end
by cursor and by offset; then the counts by state as the dashboard overview read them
(7 counts, one per state) and as ``GET /tasks/counts`` does (``Store.count_tasks``, one
``GROUP BY``). Prints the median of 20 calls each, in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from edgeplane.model import TASK_STATES, Task
from edgeplane.store import open_store

STATES = ["completed"] * 8 + ["failed", "running"]
NAMES = ["etl", "train", "probe", "sync"]
REPEATS = 20


def tasks(count: int) -> list[Task]:
    return [
        Task(
            id=str(uuid.uuid4()),
            name=f"{NAMES[i % 4]}-{i}",
            state=STATES[i % 10],
            worker_id=f"w{i % 100}",
            created_at=1e9 + i // 10,
            runtime="host",
            command=["true"],
            stdout="x" * 200,
        )
        for i in range(count)
    ]


async def median_ms(call: Callable[[], Awaitable[Any]]) -> float:
    await call()
    took = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        await call()
        took.append((time.perf_counter() - start) * 1000)
    return statistics.median(took)


async def measure(url: str, label: str, count: int) -> None:
    store = open_store(url)
    await store.open()
    try:
        made = tasks(count)
        for start in range(0, count, 1000):
            await store.add_tasks(made[start : start + 1000])
        near_end = count - 60
        (deep,), _ = await store.list_tasks(newest_first=True, limit=1, offset=near_end)
        cases: dict[str, dict[str, Any]] = {
            "newest 50": {},
            "state=failed": {"state": "failed"},
            "name=probe-1 (prefix)": {"name": "probe-1"},
            "worker_id=w7": {"worker_id": "w7"},
            "state, worker and name": {"state": "failed", "worker_id": "w9", "name": "etl"},
            f"page at {near_end} by cursor": {"after": (deep.created_at, deep.id)},
            f"page at {near_end} by offset": {"offset": near_end},
        }
        for name, filters in cases.items():

            def page(filters: dict[str, Any] = filters) -> Awaitable[Any]:
                return store.list_tasks(newest_first=True, limit=51, **filters)

            print(f"{label:10} {count:>7} tasks  {name:28} {await median_ms(page):7.2f} ms")

        # the dashboard overview's "tasks by state": a count per state, or one GROUP BY
        async def per_state() -> None:
            for state in TASK_STATES:
                await store.list_tasks(state=state, limit=1)

        for name, call in (
            ("7 counts, one per state", per_state),
            ("counts by state (GROUP BY)", store.count_tasks),
        ):
            print(f"{label:10} {count:>7} tasks  {name:28} {await median_ms(call):7.2f} ms")
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--pg", help="a PostgreSQL server URL (a schema is made and dropped)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        await measure(f"sqlite:///{folder}/bench.db", "sqlite", args.tasks)
    if args.pg:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        try:
            await measure(f"{args.pg}?schema={schema}", "postgresql", args.tasks)
        finally:
            conn = await asyncpg.connect(args.pg)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
