"""The kit end to end, with real processes: the root and the manager run with the very
command lines and store URLs the Helm chart renders (only paths, ports and the database
server swapped for this machine's), and a worker runs with the env file and command line
install-worker.sh writes. The worker joins with a token over MQTTS, the manager registers
with the root, and a task submitted to the root runs on the worker."""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from deploy_fixtures import DEPLOY, containers, env_file, helm, written
from edgeplane.certs import init_certs
from edgeplane.transport import free_port
from faults.procs import TOKEN, Lab, wait_until
from store_fixtures import PG_SERVER, drop_pg_schema
from wasm_fixtures import add_wasm

pytestmark = [pytest.mark.timeout(120), pytest.mark.mosquitto, pytest.mark.postgres]


def pod(
    container: dict[str, Any], swap: dict[str, str], schemas: list[str]
) -> tuple[list[str], str]:
    """The container's args and store URL, on this machine."""
    args = [swap.get(a, a) for a in container["args"]]
    args = [a.replace("/etc/edgeplane/tls/", swap["tls"]) for a in args]
    store = next(e["value"] for e in container["env"] if e["name"] == "EDGEPLANE_STORE")
    rendered = urlsplit(store)
    schema = f"deploy_{uuid.uuid4().hex[:8]}_{rendered.query.removeprefix('schema=')}"
    schemas.append(schema)
    return args, f"{PG_SERVER}?schema={schema}"


def https(url: str, ca: Path) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(ca))
    return httpx.Client(base_url=url, verify=context, timeout=30,
                        headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip


def healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def test_chart_commands_and_the_installed_worker_run_a_task(lab: Lab) -> None:
    tls = lab.root / "tls"
    init_certs(tls, ["localhost", "127.0.0.1"])  # `edgeplane certs init`, in-process
    ca = tls / "certs" / "ca.pem"
    root_api, root_mqtt, api, mqtt = free_port(), free_port(), free_port(), free_port()
    swap = {
        "tls": f"{tls / 'certs'}/",
        "mqtts://ep-edgeplane-root:8884": f"mqtts://localhost:{root_mqtt}",
    }
    docs = helm()
    schemas: list[str] = []
    try:
        (root,) = containers(docs, "root")
        args, store = pod(root, {**swap, "7070": str(root_api), "8884": str(root_mqtt)}, schemas)
        env = lab.env(EDGEPLANE_DATA_DIR=str(lab.root / "root"), EDGEPLANE_STORE=store)
        root_role = lab.role("root", args, env).start()
        (manager,) = containers(docs, "manager")
        args, store = pod(manager, {**swap, "7070": str(api), "8883": str(mqtt)}, schemas)
        env = lab.env(EDGEPLANE_DATA_DIR=str(lab.root / "manager"), EDGEPLANE_STORE=store)
        manager_role = lab.role("manager", args, env).start()
        roles = [root_role, manager_role]
        with (
            https(f"https://127.0.0.1:{root_api}", ca) as at_root,
            https(f"https://127.0.0.1:{api}", ca) as at_manager,
        ):
            wait_until(lambda: healthy(at_root) and healthy(at_manager), "both APIs", watch=roles)

            def registered() -> bool:
                clusters = at_root.get("/api/v1/clusters").json()["items"]
                return any(c["id"] == "local" and c["state"] == "online" for c in clusters)

            wait_until(registered, "the manager to register with the root", watch=roles)

            token = at_manager.post("/api/v1/join-tokens", json={"ttl_s": 600}).json()["token"]
            installed = subprocess.run(
                ["bash", str(DEPLOY / "install-worker.sh"), "--manager",
                 f"mqtts://127.0.0.1:{mqtt}", "--ca", str(ca), "--join", token, "--dry-run"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert installed.returncode == 0, installed.stderr
            worker_env = env_file(written(installed.stdout, "/etc/edgeplane/worker.env"))
            worker_env |= {"EDGEPLANE_JOIN_TOKEN": token, "EDGEPLANE_CA": str(ca),
                           "EDGEPLANE_DATA_DIR": str(lab.root / "worker")}  # fmt: skip
            argv = ["worker", *worker_env.pop("WORKER_ARGS").split()]
            roles.append(lab.role("worker", argv, lab.env(**worker_env)).start())

            def worker_online() -> bool:
                workers = at_manager.get("/api/v1/workers").json()["items"]
                return any(w["state"] == "online" for w in workers)

            wait_until(worker_online, "the worker to join over MQTTS", watch=roles)
            body = {"name": "add", "file": base64.b64encode(add_wasm()).decode(),
                    "inputs": [2, 3], "start": True}  # fmt: skip
            task = at_root.post("/api/v1/tasks", params={"wait": 30}, json=body).json()
            assert (task["state"], task["results"]) == ("completed", [5]), task
    finally:
        lab.close()
        for schema in schemas:
            asyncio.run(drop_pg_schema(schema))
