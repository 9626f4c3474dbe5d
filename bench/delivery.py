"""Artifact delivery (docs/artifacts.md): time for the proxy to deliver one artifact to
1, 10 and 50 workers at once, what crosses the broker per worker, and the proxy's
memory while it serves.

A Mosquitto started here on a free port; the proxy is the real role
(``python -m edgeplane proxy``, its own process, reading a SQLite store the artifact
was put in); the workers are simulated in this process: each is the worker's own
fetcher (``artifacts/fetch.py``) on its own MQTT connection, verifying what it gets.
Bytes per worker are the MQTT payloads received on its chunks topic, divided by the
artifact's size (base64 in a command was 1.33x). The proxy's RSS is sampled every 20 ms.

Nothing here asserts on time: this is a measurement, not a test.

    python -m bench.delivery [--sizes-mb 5 50] [--workers 1 10 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from edgeplane.artifacts.fetch import Fetcher
from edgeplane.protocol import Topics
from edgeplane.store import open_store
from edgeplane.transport import MqttLink, unique_client_id
from edgeplane.transport.broker import MosquittoProcess, free_port

MB = 1024 * 1024
SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass
class Row:
    size_mb: int
    workers: int
    seconds: float
    bytes_per_worker_ratio: float
    proxy_rss_idle_mb: float
    proxy_rss_peak_mb: float


async def put(store_url: str, data: bytes) -> str:
    store = open_store(store_url)
    await store.open()
    digest = hashlib.sha256(data).hexdigest()
    await store.put_artifact(digest, data)
    await store.close()
    return digest


async def deliver(url: str, topics: Topics, digest: str, n: int, tag: str) -> tuple[float, int]:
    received = [0] * n
    links: list[MqttLink] = []
    fetchers: list[Fetcher] = []
    for i in range(n):
        worker = f"{tag}-w{i}"

        async def on_message(topic: str, payload: bytes, i: int = i) -> None:
            received[i] += len(payload)
            fetchers[i].on_chunk(payload)

        link = MqttLink(
            url,
            client_id=unique_client_id(worker),
            subscriptions=[topics.chunks(worker)],
            on_message=on_message,
        )
        fetch_topic = topics.fetch(worker)
        fetchers.append(
            Fetcher(
                lambda request, link=link, t=fetch_topic: link.publish(t, request),
                max_bytes=1024 * MB,
                retry_s=30,
            )
        )
        links.append(link)
    for link in links:
        await link.start()
    await asyncio.gather(*(link.connected.wait() for link in links))
    started = time.perf_counter()
    await asyncio.gather(*(f.fetch(digest) for f in fetchers))
    seconds = time.perf_counter() - started
    for link in links:
        await link.stop()
    return seconds, max(received)


async def sample(proc: psutil.Process, peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            peak[0] = max(peak[0], proc.memory_info().rss / MB)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)


async def main(sizes: list[int], counts: list[int], work: Path) -> list[Row]:
    broker = MosquittoProcess(work / "broker", free_port())
    url = broker.start()
    store_url = f"sqlite:///{work / 'store.db'}"
    domain = "bench"
    topics = Topics(domain)
    digests = {size: await put(store_url, os.urandom(size * MB)) for size in sizes}
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    argv = [sys.executable, "-m", "edgeplane", "proxy", "--broker", url, "--store", store_url]
    argv += ["--domain", domain, "--data-dir", str(work / "proxy"), "--log-level", "warning"]
    child = await asyncio.create_subprocess_exec(*argv, env=env, stdout=subprocess.PIPE)
    rows = []
    try:
        assert child.stdout is not None
        print((await child.stdout.readline()).decode().strip())  # "artifact proxy … serving"
        proc = psutil.Process(child.pid)
        for size in sizes:
            for n in counts:
                idle = proc.memory_info().rss / MB
                peak = [idle]
                stop = asyncio.Event()
                sampler = asyncio.create_task(sample(proc, peak, stop))
                seconds, got = await deliver(url, topics, digests[size], n, f"s{size}n{n}")
                stop.set()
                await sampler
                row = Row(size, n, round(seconds, 3), round(got / (size * MB), 4), idle, peak[0])
                print(row)
                rows.append(row)
    finally:
        child.terminate()
        await asyncio.wait_for(child.wait(), 10)
        broker.stop()
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[5, 50])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeplane-delivery-") as tmp:
        result = asyncio.run(main(args.sizes_mb, args.workers, Path(tmp)))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in result], indent=2))
