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
import os
import pwd
import re
import secrets
import signal
import socket
import ssl
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from deploy_fixtures import DEPLOY, EDGEPLANE, containers, env_file, helm, notes, written
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


def test_several_managers_of_one_cluster_as_the_chart_runs_them(lab: Lab) -> None:
    """managers[].replicas: 2 as the chart renders it: the shared Mosquitto with its
    rendered config and start command, two managers with their rendered command lines and
    env on one store schema, the cluster's identity at the root made as the chart's notes
    say (one join, a Secret's credentials.json), a worker dialing the broker as the notes
    say. One manager leads, the other stands by; the root runs a task there; kill -9 of
    the leader: the other takes over, registers with the root, and runs the next task."""
    tls = lab.root / "tls"
    init_certs(tls, ["localhost", "127.0.0.1"])
    certs, ca = f"{tls / 'certs'}/", tls / "certs" / "ca.pem"
    root_api, root_mqtt, broker_port = free_port(), free_port(), free_port()
    name = "ep-edgeplane-manager-local"
    values = {"adminToken": {"existingSecret": "admin"},
              "managers": [{"clusterId": "local", "replicas": 2}]}  # fmt: skip
    docs = helm(values)
    schemas: list[str] = []
    broker: subprocess.Popen[bytes] | None = None
    swap = {"tls": certs, "mqtts://ep-edgeplane-root:8884": f"mqtts://localhost:{root_mqtt}"}
    try:
        (root,) = containers(docs, "root")
        args, store = pod(root, {**swap, "7070": str(root_api), "8884": str(root_mqtt)}, schemas)
        env = lab.env(EDGEPLANE_DATA_DIR=str(lab.root / "root"), EDGEPLANE_STORE=store)
        roles = [lab.role("root", args, env).start()]
        with https(f"https://127.0.0.1:{root_api}", ca) as at_root:
            wait_until(lambda: healthy(at_root), "the root's API", watch=roles)

            # The identity, as the notes say: a token, one join, its file into a Secret.
            text = notes(values)
            body = re.search(r"-d '(\{\"cluster_id\": \"local\".*?\})'", text)
            assert body and "--print-bridge-config" in text, text
            made = at_root.post("/api/v1/join-tokens", content=body[1],
                                headers={"Content-Type": "application/json"})  # fmt: skip
            assert made.status_code == 201, made.text
            joined = subprocess.run(
                [*EDGEPLANE, "manager", "--cluster-id", "local", "--root",
                 f"mqtts://localhost:{root_mqtt}", "--ca", str(ca), "--join",
                 made.json()["token"], "--data-dir", str(lab.root / "join"),
                 "--print-bridge-config"],
                env=lab.env(), capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert joined.returncode == 0, joined.stderr
            identity = lab.root / "join" / "uplink" / "credentials.json"

            # The shared broker: its rendered config and command, paths and port swapped.
            password = secrets.token_hex(16)  # what the chart's Secret holds
            broker = shared_broker(lab, docs, f"{name}-broker", broker_port, certs, password)
            wait_until(lambda: port_open(broker_port), "the shared broker")

            # The two managers: one store schema, each its own data dir and API port.
            (manager,) = containers(docs, "manager")
            service = f"https://localhost:{free_port()}"  # the Service: nothing here
            ports = [free_port(), free_port()]
            managers, apis = [], []
            store = ""
            for n, port in enumerate(ports):
                swaps = {**swap, "7070": str(port), f"https://{name}:7070": service,
                         "/etc/edgeplane/uplink/credentials.json": str(identity)}  # fmt: skip
                args, url = pod(manager, swaps, schemas if n == 0 else [])
                store = store or url
                env_in_pod = {e["name"]: e.get("value") for e in manager["env"]}
                shared = (
                    str(env_in_pod["EDGEPLANE_BROKER"])
                    .replace("$(BROKER_PASSWORD)", password)
                    .replace(f"{name}-broker:8883", f"localhost:{broker_port}")
                )
                env = lab.env(EDGEPLANE_DATA_DIR=str(lab.root / f"m{n}"), EDGEPLANE_STORE=store,
                              EDGEPLANE_BROKER=shared)  # fmt: skip
                managers.append(lab.role(f"m{n}", args, env).start())
                apis.append(https(f"https://127.0.0.1:{port}", ca))
            roles += managers

            def leader() -> list[int] | None:
                codes = [status(api) for api in apis]
                return [codes.index(200)] if sorted(codes) == [200, 503] else None

            (first,) = wait_until(leader, "one manager to lead, the other to stand by", 60,
                                  watch=roles)  # fmt: skip
            standby = apis[1 - first].get("/healthz").json()
            assert (standby["status"], standby["leader"]) == ("standby", service)

            worker_line = re.search(r"edgeplane worker --cluster-id local --manager (\S+)", text)
            assert worker_line and worker_line[1].startswith("mqtts://edgeplane:PASSWORD@HOST:")
            dial = f"mqtts://edgeplane:{password}@localhost:{broker_port}"
            roles.append(lab.role("w1", ["worker", "--cluster-id", "local", "--manager", dial,
                                         "--ca", str(ca), "--no-containers",
                                         "--data-dir", str(lab.root / "w1")]).start())  # fmt: skip

            def runs_a_task() -> bool:
                body = {"name": "add", "file": base64.b64encode(add_wasm()).decode(),
                        "inputs": [2, 3], "start": True}  # fmt: skip
                task = at_root.post("/api/v1/tasks", params={"wait": 20}, json=body).json()
                return (task.get("state"), task.get("results")) == ("completed", [5])

            wait_until(runs_a_task, "a task from the root to run in the cluster", 60, watch=roles)
            # the shared broker's password is in the managers' env only: never shown
            assert password not in at_root.get("/api/v1/clusters/local").text
            for role in managers:
                assert password not in role.log.read_text()

            managers[first].kill9()
            roles.remove(managers[first])
            wait_until(lambda: status(apis[1 - first]) == 200, "the standby to take over", 60,
                       watch=roles)  # fmt: skip
            wait_until(runs_a_task, "a task to run under the new leader", 60, watch=roles)
            for api in apis:
                api.close()
    finally:
        lab.close()
        if broker is not None:
            os.killpg(broker.pid, signal.SIGKILL)
            broker.wait()
        for schema in schemas:
            asyncio.run(drop_pg_schema(schema))


def test_several_roots_as_the_chart_runs_them(lab: Lab) -> None:
    """root.replicas: 2 as the chart renders it: the roots' shared Mosquitto, two roots and
    a manager with their rendered command lines and env; the manager registers through the
    shared broker as user edgeplane; kill -9 of the leading root: the other takes over and
    has the cluster online."""
    tls = lab.root / "tls"
    init_certs(tls, ["localhost", "127.0.0.1"])
    certs, ca = f"{tls / 'certs'}/", tls / "certs" / "ca.pem"
    broker_port, api, mqtt = free_port(), free_port(), free_port()
    name = "ep-edgeplane-root"
    docs = helm({"adminToken": {"existingSecret": "admin"}, "root": {"replicas": 2}})
    schemas: list[str] = []
    broker: subprocess.Popen[bytes] | None = None
    password = secrets.token_hex(16)

    def resolved(container: dict[str, Any], variable: str) -> str:
        value = next(e["value"] for e in container["env"] if e["name"] == variable)
        return (
            str(value)
            .replace("$(ROOT_BROKER_PASSWORD)", password)
            .replace(f"{name}-broker:8884", f"localhost:{broker_port}")
        )

    try:
        broker = shared_broker(lab, docs, f"{name}-broker", broker_port, certs, password)
        wait_until(lambda: port_open(broker_port), "the roots' shared broker")
        (root,) = containers(docs, "root")
        service = f"https://localhost:{free_port()}"  # the Service: nothing here
        ports, apis, roots, store = [free_port(), free_port()], [], [], ""
        for n, port in enumerate(ports):
            swap = {"tls": certs, "7070": str(port), f"https://{name}:7070": service}
            args, url = pod(root, swap, schemas if n == 0 else [])
            store = store or url  # one schema for both
            env = lab.env(EDGEPLANE_DATA_DIR=str(lab.root / f"r{n}"), EDGEPLANE_STORE=store,
                          EDGEPLANE_BROKER=resolved(root, "EDGEPLANE_BROKER"))  # fmt: skip
            roots.append(lab.role(f"r{n}", args, env).start())
            apis.append(https(f"https://127.0.0.1:{port}", ca))
        roles = list(roots)

        def leader() -> list[int] | None:
            codes = [status(api) for api in apis]
            return [codes.index(200)] if sorted(codes) == [200, 503] else None

        (first,) = wait_until(leader, "one root to lead", 60, watch=roles)
        (manager,) = containers(docs, "manager")
        args, store = pod(manager, {"tls": certs, "7070": str(api), "8883": str(mqtt)}, schemas)
        env = lab.env(EDGEPLANE_DATA_DIR=str(lab.root / "m"), EDGEPLANE_STORE=store,
                      EDGEPLANE_ROOT=resolved(manager, "EDGEPLANE_ROOT"))  # fmt: skip
        roles.append(lab.role("manager", args, env).start())

        def online(api: httpx.Client) -> bool:
            found = api.get("/api/v1/clusters/local")
            return found.status_code == 200 and found.json()["state"] == "online"

        wait_until(lambda: online(apis[first]), "the cluster at the leading root", 60, watch=roles)
        roots[first].kill9()
        roles.remove(roots[first])
        wait_until(lambda: status(apis[1 - first]) == 200, "the other root to lead", 60,
                   watch=roles)  # fmt: skip
        wait_until(lambda: online(apis[1 - first]), "the cluster at the new root", 60, watch=roles)
        assert password not in apis[1 - first].get("/api/v1/clusters/local").text
        for client in apis:
            client.close()
    finally:
        lab.close()
        if broker is not None:
            os.killpg(broker.pid, signal.SIGKILL)
            broker.wait()
        for schema in schemas:
            asyncio.run(drop_pg_schema(schema))


def shared_broker(
    lab: Lab, docs: list[dict[str, Any]], name: str, port: int, certs: str, password: str
) -> subprocess.Popen[bytes]:
    """The chart's shared Mosquitto ``name``: its rendered config and start command, with
    the port, the paths and the user swapped for this machine's."""
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)
    conf = lab.root / name / "mosquitto.conf"
    conf.parent.mkdir()
    rendered = config_map["data"]["mosquitto.conf"]
    listen = next(line for line in rendered.splitlines() if line.startswith("listener "))
    conf.write_text(
        rendered.replace(listen, f"listener {port} 127.0.0.1")
        .replace("/etc/edgeplane/tls/", certs)
        .replace("/tmp/passwd", str(conf.parent / "passwd"))
        # the pod runs as uid 10001; Mosquitto started as root would switch users
        + f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
    )
    deployment = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name
    )
    (mosquitto,) = deployment["spec"]["template"]["spec"]["containers"]
    script = (
        mosquitto["args"][0]
        .replace("/tmp/passwd", str(conf.parent / "passwd"))
        .replace("/etc/mosquitto-edgeplane/mosquitto.conf", str(conf))
    )
    with (lab.root / f"{name}.log").open("wb") as out:
        return subprocess.Popen(
            [*mosquitto["command"], script],
            env={**os.environ, "BROKER_PASSWORD": password},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def status(client: httpx.Client) -> int:
    try:
        return client.get("/healthz").status_code
    except httpx.HTTPError:
        return 0


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
