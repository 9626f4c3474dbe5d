"""The kit end to end, with real processes: the root and the manager run with the very
command lines and store URLs the Helm chart renders (only paths, ports and the database
server swapped for this machine's), and a worker runs with the env file and command line
install-worker.sh writes. The manager joins the root with a token minted on the running
root's API as the chart's notes tell the operator (into the Secret its pod reads), the
worker joins its manager with a token over MQTTS, and a task submitted to the root runs on
the worker. The manager restarted with its used token keeps its identity; a manager that
lost its data volume cannot join again with that token."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from deploy_fixtures import DEPLOY, containers, env_file, helm, notes, written
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


def from_secrets(container: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's variables that come from Secrets (the store's password aside: the
    store URL is swapped), as Kubernetes resolves them; a missing Secret is a KeyError
    where the pod would wait for it."""
    return {
        e["name"]: secrets[ref["name"]][ref["key"]]
        for e in container["env"]
        if e["name"] != "POSTGRES_PASSWORD" and (ref := e.get("valueFrom", {}).get("secretKeyRef"))
    }


def join_secret(at_root: httpx.Client) -> dict[str, dict[str, str]]:
    """What the chart's notes tell the operator to do for cluster `local`: mint a join token
    on the root's API (their body, their headers), and put it into the Secret they name."""
    text = notes()
    body = re.search(r"-d '(\{\"cluster_id\": \"local\".*?\})'", text)
    name = re.search(r"create secret generic (\S+) --from-literal=token=", text)
    assert body and name, text
    assert "Content-Type: application/json" in text
    assert "https://ep-edgeplane-root:7070/api/v1/join-tokens" in text
    made = at_root.post("/api/v1/join-tokens", content=body[1],
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert made.status_code == 201, made.text
    return {name[1]: {"token": made.json()["token"]}}


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
        roles = [root_role]
        with (
            https(f"https://127.0.0.1:{root_api}", ca) as at_root,
            https(f"https://127.0.0.1:{api}", ca) as at_manager,
        ):
            wait_until(lambda: healthy(at_root), "the root's API", watch=roles)
            secrets = join_secret(at_root)
            (manager,) = containers(docs, "manager")
            args, store = pod(manager, {**swap, "7070": str(api), "8883": str(mqtt)}, schemas)
            pod_env = from_secrets(manager, secrets)
            assert set(pod_env) == {"EDGEPLANE_JOIN_TOKEN"}
            data = lab.root / "manager"
            env = lab.env(EDGEPLANE_DATA_DIR=str(data), EDGEPLANE_STORE=store, **pod_env)
            manager_role = lab.role("manager", args, env).start()
            roles.append(manager_role)
            wait_until(lambda: healthy(at_manager), "the manager's API", watch=roles)

            def registered() -> bool:
                clusters = at_root.get("/api/v1/clusters").json()["items"]
                return any(c["id"] == "local" and c["state"] == "online" for c in clusters)

            wait_until(registered, "the manager to register with the root", watch=roles)
            credentials = data / "uplink" / "credentials.json"
            kept = credentials.read_bytes()
            (made,) = at_root.get("/api/v1/join-tokens").json()
            assert made["cluster_id"] == "local" and made["clusters"] == ["local"]

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

            # the pod restarted: same Secret (its token used), same volume: the kept
            # identity is used, the token not presented again
            manager_role.stop()
            wait_until(
                lambda: not registered(), "the root to see the manager go", watch=[root_role]
            )
            manager_role.start()
            wait_until(registered, "the manager to register again", watch=roles)
            assert credentials.read_bytes() == kept
            task = at_root.post("/api/v1/tasks", params={"wait": 30}, json=body).json()
            assert (task["state"], task["results"]) == ("completed", [5]), task

            # its volume lost: the used token joins no one again (exit 2, not restarted)
            manager_role.stop()
            lost = lab.env(EDGEPLANE_DATA_DIR=str(lab.root / "lost"), EDGEPLANE_STORE=store,
                           **pod_env)  # fmt: skip
            again = lab.role("manager-lost", args, lost).start()
            assert again.proc is not None
            assert again.proc.wait(timeout=60) == 2, again.tail()
            assert "has joined already" in again.tail()
            assert json.loads(credentials.read_bytes())  # the first volume's is untouched
    finally:
        lab.close()
        for schema in schemas:
            asyncio.run(drop_pg_schema(schema))
