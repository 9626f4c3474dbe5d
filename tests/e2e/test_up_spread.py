"""Spread as users meet it: `edgeplane up --clusters 2 --workers 2` (a root over two
clusters of two workers each), driven through the CLI and the REST API."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_up import cli, free_port, stop, wait_healthy, wait_until
from test_up_clusters import popen

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def up_two_by_two(tmp_path: Path) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    port = free_port()
    env = {**os.environ, "EDGEPLANE_DATA_DIR": str(tmp_path), "EDGEPLANE_HEARTBEAT_S": "0.5"}
    env.pop("EDGEPLANE_URL", None)
    env.pop("EDGEPLANE_TOKEN", None)
    args = ("up", "--clusters", "2", "--workers", "2", "--port", str(port), "--allow-host")
    proc = popen(*args, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        token = (tmp_path / "admin-token").read_text().strip()
        with httpx.Client(
            base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as http:

            def ready() -> bool:
                items = http.get("/clusters").json()["items"]
                full = [c for c in items if c["aggregate"] and c["aggregate"]["workers"] == 2]
                return len(full) == 2

            wait_until(ready, "two clusters of two workers", timeout=40)
            yield http, env
    finally:
        stop(proc)


def test_replicas_and_tasks_spread_over_clusters_and_workers(
    up_two_by_two: tuple[httpx.Client, dict[str, str]], tmp_path: Path
) -> None:
    http, env = up_two_by_two
    descriptor = tmp_path / "shop.yaml"
    descriptor.write_text(
        "name: shop\n"
        "services:\n"
        "  - name: web\n"
        "    runtime: host\n"
        "    command: [sleep, '120']\n"
        "    replicas: 4\n"
        "    placement: {spread: worker, anti_affinity: required}\n"
    )
    applied = cli("app", "apply", str(descriptor), "--wait", "--timeout", "60", env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    shown = http.get("/applications").json()["items"][0]
    instances = [i for s in shown["services"] for i in s["instances"]]
    assert len({i["worker_id"] for i in instances}) == 4
    assert Counter(i["cluster_id"] for i in instances) == {"cluster-1": 2, "cluster-2": 2}

    # 8 plain tasks, one CLI call each: 4 per cluster, whatever the aggregates said
    ids = []
    for _ in range(8):
        run = cli("task", "run", "--no-wait", "--runtime", "host", "--", "sleep", "120", env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        ids.append(run.stdout.strip().split()[-1])

    def all_running() -> list[dict[str, Any]] | None:
        tasks = [http.get(f"/tasks/{i}").json() for i in ids]
        return tasks if all(t["state"] == "running" for t in tasks) else None

    tasks = wait_until(all_running, "the 8 tasks to run", timeout=60)
    assert Counter(t["cluster_id"] for t in tasks) == {"cluster-1": 4, "cluster-2": 4}

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nservices:\n  - {name: a, runtime: host, command: ['true'],\n"
        "     placement: {spread: none, anti_affinity: required}}\n"
    )
    refused = cli("app", "apply", str(bad), env=env)
    assert refused.returncode == 2
    assert "services[0].placement.anti_affinity" in refused.stderr + refused.stdout
