"""A schedule firing every second for N minutes: is any slot missed or doubled?

    python -m bench.cron [--minutes 10] [--json out.json]

Runs the whole stack in-process (embedded broker, SQLite), creates an ``@every 1s``
schedule of a no-op wasm task, lets it run, then reads every task the schedule made and
checks that the slots (from the run ids ``schedule_id:slot``) are consecutive seconds,
each present once, and how late each run was created after its slot.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import wasmtime
from rich.console import Console
from rich.table import Table

from edgeplane.config import Settings
from edgeplane.roles.up import running_stack

NOOP = base64.b64encode(wasmtime.wat2wasm('(module (func (export "noop")))')).decode()
TOKEN = "bench-cron"


async def measure(minutes: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            broker="",
            store=f"sqlite:///{tmp}/bench.db",
            port=0,
            workers=2,
            admin_token=TOKEN,
            log_level="warning",
        )
        async with (
            running_stack(settings) as stack,
            httpx.AsyncClient(
                base_url=stack.control.url + "/api/v1",
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=60,
            ) as http,
        ):
            created = await http.post(
                "/tasks",
                json={"name": "tick", "export": "noop", "file": NOOP, "schedule": "@every 1s"},
            )
            created.raise_for_status()
            schedule = created.json()
            started = time.time()
            await asyncio.sleep(minutes * 60)
            await http.delete(f"/schedules/{schedule['id']}")
            ended = time.time()
            await asyncio.sleep(2)  # let the last runs finish
            tasks: list[dict[str, Any]] = []
            while True:
                page = (
                    await http.get("/tasks", params={"limit": 1000, "offset": len(tasks)})
                ).json()
                tasks += page["items"]
                if len(tasks) >= page["total"] or not page["items"]:
                    break
    runs = [t for t in tasks if t.get("schedule_id") == schedule["id"]]
    slots = sorted(int(t["id"].rsplit(":", 1)[1]) for t in runs)
    missing = sorted(set(range(slots[0], slots[-1] + 1)) - set(slots)) if slots else []
    lag_ms = sorted(1000 * (t["created_at"] - int(t["id"].rsplit(":", 1)[1])) for t in runs)
    return {
        "minutes": minutes,
        "window_s": round(ended - started, 1),
        "runs": len(runs),
        "distinct_slots": len(set(slots)),
        "doubled": len(slots) - len(set(slots)),
        "missing": len(missing),
        "completed": sum(t["state"] == "completed" for t in runs),
        "lag_p50_ms": round(statistics.median(lag_ms), 1) if lag_ms else None,
        "lag_max_ms": round(lag_ms[-1], 1) if lag_ms else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(measure(args.minutes))
    table = Table(title=f"cron soak: {' '.join(['python -m bench.cron', *sys.argv[1:]])}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, str(value))
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
