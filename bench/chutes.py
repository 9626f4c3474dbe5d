"""Chutes on one node: install (cached image) and start latency beside plain ``runc run``
of the same bundle, and the memory a node's Python process holds for 0 and 20 chutes.

    python -m bench.chutes [--reps 10] [--chutes 20] [--json out.json]

Needs root, runc and a static busybox (``scripts/system-deps.sh``). Chutes run on the
loopback network (``LoopbackNetwork``): what is measured is the node's own path (change
queue, runc config, ``runc run --detach``, the health wait), not iproute2. A chute is one
busybox service ``sleep`` with no health check and ``settle_s=0`` (healthy once
running), so the figures hold no fixed wait. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from edgeplane.chutes import manifest
from edgeplane.chutes.node import Node
from edgeplane.runtimes.busybox import busybox_containers_unavailable, busybox_image
from edgeplane.runtimes.container import find_runc


def chute(name: str, health: bool = False) -> manifest.Manifest:
    service: dict[str, Any] = {"name": "main", "image": "busybox", "command": ["sleep", "100000"]}
    if health:
        service["healthcheck"] = {"exec": ["true"], "interval_s": 2}
    return manifest.parse({"name": name, "version": "1", "services": [service]})


def ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def timed(node: Node, change: Any) -> float:
    started = time.perf_counter()
    done = await asyncio.wait_for(node.changes.wait((await change).id), 60)
    assert done.state == "done", done
    return time.perf_counter() - started


def rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


async def main(reps: int, count: int) -> dict[str, Any]:
    why = busybox_containers_unavailable()
    if why is not None:
        raise SystemExit(f"cannot run chutes here: {why}")
    runc = find_runc()
    assert runc is not None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        busybox_image(root / "images" / "busybox")
        node = Node(root / "worker", root / "images", grace_s=0.2, settle_s=0)
        await node.start()
        result: dict[str, Any] = {"rss_mb_0_chutes": rss_mb()}
        try:
            await timed(node, node.install(chute("warm")))  # unpacks the image once
            installs, starts, plain = [], [], []
            bundle = root / "plain"
            for i in range(reps):
                name = f"c{i}"
                installs.append(await timed(node, node.install(chute(name))))
                cid = (await node.status(name))["services"][0]["container"]
                # the same bundle (config and rootfs) for plain runc
                shutil.rmtree(bundle, ignore_errors=True)
                shutil.copytree(node._dir(name) / "bundles" / cid, bundle)
                await timed(node, node.act(name, "stop"))
                # plain runc while the chute is stopped: the bundle's mounts (its config
                # dir) are there, its container is not
                config = json.loads((bundle / "config.json").read_text())
                config["linux"].pop("cgroupsPath", None)
                (bundle / "config.json").write_text(json.dumps(config))
                state = root / "plain-state"
                argv = [runc, "--root", str(state), "run", "--detach", "--bundle", str(bundle)]
                started = time.perf_counter()
                # a detached container keeps its stdio: a pipe here would never close
                with (root / "plain.log").open("w") as out:
                    done = subprocess.run(  # noqa: ASYNC221 - timed as a user runs it
                        [*argv, f"plain{i}"],
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=out,
                        check=False,
                    )
                plain.append(time.perf_counter() - started)
                if done.returncode != 0:
                    raise SystemExit(f"plain runc run failed: {(root / 'plain.log').read_text()}")
                subprocess.run(  # noqa: ASYNC221 - timed as a user runs it
                    [runc, "--root", str(state), "delete", "--force", f"plain{i}"],
                    check=True,
                    capture_output=True,
                )
                starts.append(await timed(node, node.act(name, "start")))
                await timed(node, node.act(name, "delete"))
            result["install"] = ms(installs)
            result["start"] = ms(starts)
            result["plain_runc_run_detach"] = ms(plain)
            await timed(node, node.act("warm", "delete"))
            result["rss_mb_0_chutes_after_runs"] = rss_mb()
            for i in range(count):  # with an exec health check: a monitor task each
                await timed(node, node.install(chute(f"n{i}", health=True)))
            result[f"rss_mb_{count}_chutes"] = rss_mb()
        finally:
            for name in node.names():
                await asyncio.wait_for(node.changes.wait((await node.act(name, "delete")).id), 60)
            await node.close()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--chutes", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    found = asyncio.run(main(args.reps, args.chutes))
    print(json.dumps(found, indent=1))
    if args.json:
        args.json.write_text(json.dumps(found, indent=1))
