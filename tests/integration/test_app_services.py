"""Applications as networked container services on real runc containers (docs/services.md):
published ports that never collide, instances listed with addresses that answer, health
checks that decide `running` and gate a rolling update, services written as chute
manifests, plain container tasks on the bridge.

A real manager (its own SQLite store and REST API) on the test Mosquitto, and one real
worker whose container runtime attaches to a bridge network of the test's own (bridge,
subnet, nft table and host port range: tests never meet each other's rules).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner, Result

from chute_fixtures import chute_image, names, require_chute_host
from edgeplane.chutes.network import TASK_CHUTE, NodeNetwork
from edgeplane.cli.main import app as cli_app
from edgeplane.config import Settings
from edgeplane.protocol import Topics, encode
from edgeplane.roles.control import ControlPlane
from edgeplane.roles.worker import build_worker
from edgeplane.transport import MqttLink
from edgeplane.worker import WorkerAgent

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(300)]

TOKEN = "test-admin-token"


def httpd(text: str, *, port: int = 8000, delay: float = 0) -> list[str]:
    """busybox httpd on ``port`` serving ``text`` (after ``delay`` seconds)."""
    wait = f"sleep {delay} && " if delay else ""
    return [
        "sh",
        "-c",
        f"mkdir -p /tmp/w && echo {text} > /tmp/w/index.html && {wait}"
        f"exec httpd -f -p {port} -h /tmp/w",
    ]


def service(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "web",
        "runtime": "container",
        "image": "busybox",
        "command": httpd(text),
        "ports": [{"port": 8000, "name": "http"}],
        "replicas": 2,
        **extra,
    }


#: checked often, but patient with a loaded machine (the suite shares 2 cores): a check
#: that times out on a busy machine is not the service's failure
PACE = {"interval_s": 0.2, "timeout_s": 5, "retries": 3}
FAST_CHECK = {"http": {"port": 8000}, **PACE}


def port_window() -> tuple[int, int]:
    """A host port range of this test's own, below the ephemeral ports."""
    low = 20000 + secrets.randbelow(120) * 100
    return low, low + 99


@dataclass
class Plane:
    control: ControlPlane
    worker: WorkerAgent
    net: NodeNetwork
    http: httpx.AsyncClient
    ports: tuple[int, int]
    broker: str
    domain: str

    async def app(self, body: dict[str, Any]) -> str:
        created = await self.http.post("/applications", json=body)
        assert created.status_code == 201, created.text
        app_id: str = created.json()["id"]
        return app_id

    async def instances(self, app_id: str) -> list[dict[str, Any]]:
        doc = (await self.http.get(f"/applications/{app_id}")).json()
        return [i for s in doc["services"] for i in s["instances"]]


@contextlib.asynccontextmanager
async def plane_with(
    tmp_path: Path, broker: str, domain: str, ports: tuple[int, int] | None = None
) -> AsyncIterator[Plane]:
    require_chute_host()
    images = chute_image(tmp_path / "images")
    bridge, subnet, table = names()
    net = NodeNetwork(tmp_path / "net", bridge=bridge, subnet=subnet, table=table)
    window = ports or port_window()
    data = tmp_path / "plane"
    settings = Settings(
        data_dir=data,
        store=f"sqlite:///{tmp_path / 'plane.db'}",
        broker=broker,
        domain=domain,
        port=0,
        admin_token=TOKEN,
        heartbeat_s=0.3,
        retry_backoff_s=0.05,
        images_dir=images,
        service_ports=f"{window[0]}-{window[1]}",
    )
    data.mkdir(parents=True)
    control = ControlPlane(settings, broker)
    await control.start()
    worker = build_worker(
        settings, broker_url=broker, worker_id="w1", data_dir=tmp_path / "w1", network=net
    )
    try:
        await worker.start()
        async with httpx.AsyncClient(
            base_url=control.url + "/api/v1",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        ) as http:
            yield Plane(control, worker, net, http, window, broker, domain)
    finally:
        await worker.stop()
        await control.stop()
        await asyncio.to_thread(net.teardown)


@pytest.fixture
async def plane(tmp_path: Path, fast_broker_url: str, unique_domain: str) -> AsyncIterator[Plane]:
    async with plane_with(tmp_path, fast_broker_url, unique_domain) as found:
        yield found


async def eventually(check: Callable[[], Awaitable[Any]], what: str, within: float = 60) -> Any:
    """Poll ``check`` until it returns something truthy; that value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        await asyncio.sleep(0.1)


async def fetch(endpoint: dict[str, Any]) -> str | None:
    """GET / at an endpoint from this machine, as a client would: the body, or None."""
    url = f"http://{endpoint['address']}:{endpoint['host_port']}/"
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.get(url)
    except httpx.HTTPError:
        return None
    return answer.text.strip() if answer.status_code == 200 else None


async def cli(plane: Plane, *args: str) -> Result:
    given = ["--url", plane.control.url, "--token", TOKEN]
    return await asyncio.to_thread(
        CliRunner().invoke, cli_app, [*given, *args], catch_exceptions=False
    )


def running(found: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    up = [i for i in found if i["state"] == "running"]
    return up if len(up) == n and len(found) == n else []


async def test_two_replicas_on_one_worker_publish_port_8000_on_two_host_ports(
    plane: Plane,
) -> None:
    # checked, so "running" means serving
    app_id = await plane.app(
        {"name": "shop", "services": [service("hello", healthcheck=FAST_CHECK)]}
    )

    async def both() -> list[dict[str, Any]]:
        return running(await plane.instances(app_id), 2)

    instances = await eventually(both, "two running instances")
    assert {i["worker_id"] for i in instances} == {"w1"}
    endpoints = [i["endpoints"][0] for i in instances]
    hosts = {e["host_port"] for e in endpoints}
    assert len(hosts) == 2 and all(plane.ports[0] <= p <= plane.ports[1] for p in hosts)
    assert all(e["port"] == 8000 and e["name"] == "http" for e in endpoints)
    for endpoint in endpoints:  # each reachable from this machine at the listed address
        assert await fetch(endpoint) == "hello", endpoint
        assert await fetch({**endpoint, "address": "127.0.0.1"}) == "hello"
    state = (await plane.http.get(f"/applications/{app_id}")).json()
    assert state["state"] == "running"
    assert all(i["restarts"] == 0 for i in instances)  # no crash loop, no collision

    # the CLI lists them with their addresses
    shown = await cli(plane, "app", "get", "shop")
    assert shown.exit_code == 0, shown.output
    for endpoint in endpoints:
        assert f"{endpoint['address']}:{endpoint['host_port']}->8000/tcp" in shown.stdout

    # deleted: the instances' namespaces, veths and host ports are released
    held = [lease.netns for lease in plane.net.leases() if lease.chute == TASK_CHUTE]
    assert len(held) == 2
    assert (await plane.http.delete(f"/applications/{app_id}")).status_code == 204

    async def released() -> bool:
        return not [lease for lease in plane.net.leases() if lease.chute == TASK_CHUTE]

    await eventually(released, "the instances' network leases released")
    listed = await asyncio.to_thread(
        subprocess.run, ["ip", "netns", "list"], capture_output=True, text=True
    )
    assert not [name for name in held if name in listed.stdout]
    for endpoint in endpoints:
        assert await fetch(endpoint) is None


async def test_a_host_port_in_use_is_never_handed_out(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    """A fault: something on the node listens on a port of the range. Three replicas
    in a range of three: two get the free ports, the third fails saying why (and is
    retried with backoff), and the taken port is never given to an instance."""
    for _ in range(50):
        low = 20000 + secrets.randbelow(12000)
        taken = socket.socket()
        try:
            taken.bind(("0.0.0.0", low + 1))
        except OSError:
            taken.close()
            continue
        break
    else:
        pytest.fail("no free port to occupy")
    taken.listen()
    try:
        async with plane_with(tmp_path, fast_broker_url, unique_domain, (low, low + 2)) as plane:
            body = {"name": "tight", "services": [service("x", replicas=3, restart="always")]}
            app_id = await plane.app(body)

            async def settled() -> list[dict[str, Any]]:
                found = await plane.instances(app_id)
                up = [i for i in found if i["state"] == "running"]
                refused = [i for i in found if i["restarts"] > 0]
                return found if len(up) == 2 and refused else []

            found = await eventually(settled, "two running, one refused")
            ports = {i["endpoints"][0]["host_port"] for i in found if i["state"] == "running"}
            assert ports == {low, low + 2}
            tasks = (await plane.http.get("/tasks", params={"limit": 100})).json()["items"]
            refused = [t for t in tasks if t["state"] == "failed"]
            assert refused and all(t["reason"] == "no_network" for t in refused)
            assert all("no free node port left" in t["error"] for t in refused)
    finally:
        taken.close()


async def test_health_checks_decide_running_and_an_unhealthy_instance_is_restarted(
    plane: Plane,
) -> None:
    checks = {
        "http": {"http": {"port": 8000, "path": "/"}},
        "tcp": {"tcp": {"port": 8000}},
        "exec": {"exec": ["busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:8000/"]},
    }
    services = [
        {**service(kind, replicas=1), "name": kind, "healthcheck": {**PACE, **check}}
        for kind, check in checks.items()
    ]
    # never healthy: its check asks a port nothing listens on
    services.append(
        {
            **service("bad", replicas=1),
            "name": "bad",
            "healthcheck": {**FAST_CHECK, "http": {"port": 9999}, "start_period_s": 1},
        }
    )
    app_id = await plane.app({"name": "checked", "services": services})

    async def settled() -> dict[str, dict[str, Any]]:
        found = {i["service"]: i for i in await plane.instances(app_id)}
        good = all(found.get(k, {}).get("state") == "running" for k in checks)
        return found if good and found.get("bad", {}).get("restarts", 0) >= 1 else {}

    found = await eventually(settled, "three healthy services, the bad one restarted")
    for kind in checks:
        assert await fetch(found[kind]["endpoints"][0]) == kind
    bad = found["bad"]
    assert bad["state"] != "running"  # running means healthy: it never was
    tasks = (await plane.http.get("/tasks", params={"limit": 100})).json()["items"]
    ended = [t for t in tasks if t["metadata"].get("service") == "bad" and t["state"] == "failed"]
    assert ended and all(t["reason"] == "unhealthy" for t in ended)
    assert all(t["error"].startswith("unhealthy: http GET / on port 9999") for t in ended)
    assert all(t["endpoints"] == [] for t in ended)  # never reported running
    app = (await plane.http.get(f"/applications/{app_id}")).json()
    assert app["state"] == "degraded"


async def test_a_rolling_update_waits_for_health_and_the_service_is_never_down(
    plane: Plane,
) -> None:
    body = {"name": "roll", "services": [service("v1", healthcheck=FAST_CHECK)]}
    app_id = await plane.app(body)
    await eventually(lambda: _running(plane, app_id, 2), "v1 running")
    answers: list[str] = []
    downs: list[list[dict[str, Any]]] = []
    stop = asyncio.Event()

    async def poll() -> None:
        """As a client that reads the instance list and uses a running instance: a round
        fails only when no listed running instance answers, read twice."""
        while not stop.is_set():
            for _ in range(2):
                found = await plane.instances(app_id)
                up = [i for i in found if i["state"] == "running" and i["endpoints"]]
                said = [await fetch(i["endpoints"][0]) for i in up]
                got = [s for s in said if s]
                if got:
                    answers.extend(got)
                    break
            else:
                downs.append(found)
            await asyncio.sleep(0.05)

    poller = asyncio.create_task(poll())
    try:
        # v2 takes seconds to listen, longer than an old instance takes to stop (the
        # worker's 2 s grace): only waiting for health keeps the service up
        slow = service("v2", command=httpd("v2", delay=5), healthcheck=FAST_CHECK)
        put = await plane.http.put(f"/applications/{app_id}", json={**body, "services": [slow]})
        assert put.status_code == 200, put.text

        async def rolled() -> list[dict[str, Any]]:
            found = running(await plane.instances(app_id), 2)
            return found if found and await _all_say(found, "v2") else []

        rolled_out = await eventually(rolled, "v2 on both instances", within=120)
        old_revision = rolled_out[0]["revision"]

        # v3 never gets healthy: it fails and restarts, v2 keeps serving
        check = {**FAST_CHECK, "http": {"port": 9999}, "start_period_s": 1}
        bad = service("v3", healthcheck=check)
        put = await plane.http.put(f"/applications/{app_id}", json={**body, "services": [bad]})
        assert put.status_code == 200, put.text

        async def failed_new() -> list[dict[str, Any]]:
            found = await plane.instances(app_id)
            return found if any(i["restarts"] >= 1 for i in found) else []

        found = await eventually(failed_new, "the v3 instance failed and restarted", within=120)
    finally:
        stop.set()
        await poller
    assert not downs, downs[:1]
    assert "v1" in answers and "v2" in answers and "v3" not in answers
    olds = [i for i in found if i["state"] == "running"]
    assert len(olds) == 2 and {i["revision"] for i in olds} == {old_revision}
    doc = (await plane.http.get(f"/applications/{app_id}")).json()
    assert doc["state"] == "degraded"


async def _running(plane: Plane, app_id: str, n: int) -> list[dict[str, Any]]:
    return running(await plane.instances(app_id), n)


async def _all_say(instances: list[dict[str, Any]], text: str) -> bool:
    return all([await fetch(i["endpoints"][0]) == text for i in instances])


async def test_a_service_written_as_a_chute_manifest(plane: Plane, tmp_path: Path) -> None:
    manifest = {
        "name": "hello",
        "version": "1.0",
        "services": [
            {
                "name": "web",
                "image": "busybox",
                "command": httpd("from-a-chute", port=8080),
                "ports": [{"host": 18080, "chute": 8080}],
                "healthcheck": {"http": {"port": 8080}, "interval_s": 0.2},
            }
        ],
        "resources": {"memory_mb": 64},
        "web": {"service": "web", "port": 8080},
    }
    chuted = {"name": "hello", "replicas": 2, "chute": manifest}
    app_id = await plane.app({"name": "chuted", "services": [chuted]})
    found = await eventually(lambda: _running(plane, app_id, 2), "two chute instances")
    endpoints = [i["endpoints"][0] for i in found]
    assert {e["name"] for e in endpoints} == {"web"}
    assert len({e["host_port"] for e in endpoints}) == 2
    assert 18080 not in {e["host_port"] for e in endpoints}  # the manifest's host port is not used
    for endpoint in endpoints:
        assert await fetch(endpoint) == "from-a-chute"
    task = (await plane.http.get(f"/tasks/{found[0]['task_id']}")).json()
    assert task["limits"]["memory_mb"] == 64 and task["network"] == "bridge"

    # the CLI reads it from a file beside the descriptor (chute_file)
    (tmp_path / "chute.yaml").write_text(yaml.safe_dump(manifest))
    (tmp_path / "app.yaml").write_text(
        "name: chuted2\nservices:\n  - {name: hello, replicas: 1, chute_file: chute.yaml}\n"
    )
    applied = await cli(plane, "app", "apply", str(tmp_path / "app.yaml"))
    assert applied.exit_code == 0, applied.output
    other = applied.stdout.strip()
    found = await eventually(lambda: _running(plane, other, 1), "the chute_file instance")
    assert await fetch(found[0]["endpoints"][0]) == "from-a-chute"


async def test_a_plain_container_task_on_the_bridge(plane: Plane) -> None:
    body = {
        "runtime": "container",
        "image": "busybox",
        "command": httpd("plain", port=9000),
        "ports": [{"port": 9000}],
        "healthcheck": {"tcp": {"port": 9000}, "interval_s": 0.2},
        "daemon": True,
        "start": True,
    }
    created = await plane.http.post("/tasks", json=body)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]

    async def up() -> dict[str, Any] | None:
        task: dict[str, Any] = (await plane.http.get(f"/tasks/{task_id}")).json()
        return task if task["state"] == "running" else None

    task = await eventually(up, "the task running")
    assert task["network"] == "bridge" and len(task["endpoints"]) == 1
    assert await fetch(task["endpoints"][0]) == "plain"
    lease = next(lease for lease in plane.net.leases() if lease.chute == TASK_CHUTE)
    assert ipaddress.ip_address(lease.address) in plane.net.subnet
    assert [(p.port, p.node_port) for p in lease.ports] == [
        (9000, task["endpoints"][0]["host_port"])
    ]

    # A forged running event with endpoints that are not ones (a name with a space, too
    # many) is refused whole, logged and counted; the task keeps what its worker said.
    manager = plane.control.manager
    before = manager.stats.bad_messages
    endpoint = {"address": "evil host", "host_port": 1, "port": 1}
    good = {"address": "192.0.2.9", "host_port": 1, "port": 1}
    topic = Topics(plane.domain, "local").events("w1")

    async def ignore(topic: str, payload: bytes) -> None:
        return None

    link = MqttLink(plane.broker, client_id="test-forger", subscriptions=[], on_message=ignore)
    await link.start()
    try:
        for endpoints in ([endpoint], [good] * 33):
            event = {"task_id": task_id, "attempt": task["attempt"], "state": "running"}
            body = {"events": [{**event, "endpoints": endpoints}]}
            await link.publish(topic, encode("task.events", body))

        async def counted() -> bool:
            return manager.stats.bad_messages >= before + 2

        await eventually(counted, "the forged events counted as bad")
    finally:
        await link.stop()
    again = (await plane.http.get(f"/tasks/{task_id}")).json()
    assert again["endpoints"] == task["endpoints"] and again["state"] == "running"

    await plane.http.post(f"/tasks/{task_id}/stop")

    async def gone() -> bool:
        return not any(lease.chute == TASK_CHUTE for lease in plane.net.leases())

    await eventually(gone, "its lease released")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "web", "runtime": "host", "command": ["x"], "ports": [{"port": 80}]},
         "services[0].ports"),
        ({"name": "web", "runtime": "host", "command": ["x"], "network": "bridge"},
         "services[0].network"),
        ({"name": "web", "runtime": "container", "image": "busybox",
          "healthcheck": {"tcp": {"port": 80}, "http": {"port": 80}}}, "services[0].healthcheck"),
        ({"name": "web", "runtime": "container", "image": "busybox",
          "healthcheck": {"tcp": {"port": 80}, "bogus": 1}}, "services[0].healthcheck.bogus"),
        ({"name": "web", "runtime": "container", "image": "busybox",
          "ports": [{"port": 80}, {"port": 80}]}, "services[0].ports[1]"),
        ({"name": "web", "runtime": "container", "image": "busybox",
          "ports": [{"port": 0}]}, "services[0].ports[0].port"),
        ({"name": "web", "chute": {"name": "x", "version": "1", "services": [
            {"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}]}},
         "services[0].chute.services"),
        ({"name": "web", "chute": {"name": "x", "version": "1", "services": [
            {"name": "a", "image": "busybox", "ports": [{"host": 1, "chute": 1, "x": 1}]}]}},
         "services[0].chute.services.0.ports.0.x"),
    ],
)  # fmt: skip
async def test_bad_input_is_a_422_naming_the_field(
    plane: Plane, body: dict[str, Any], field: str
) -> None:
    answer = await plane.http.post("/applications", json={"name": "bad", "services": [body]})
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["field"] == field, answer.json()
    assert (await plane.http.get("/applications")).json()["total"] == 0


async def test_at_the_root_instances_are_listed_with_their_workers_addresses(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    """Root → cluster → worker: the worker's running event carries the endpoints, its
    cluster passes them up, the root shows them per instance."""
    require_chute_host()
    images = chute_image(tmp_path / "images")
    bridge, subnet, table = names()
    net = NodeNetwork(tmp_path / "net", bridge=bridge, subnet=subnet, table=table)
    low, high = port_window()
    base: dict[str, Any] = {
        "broker": fast_broker_url,
        "domain": unique_domain,
        "port": 0,
        "admin_token": TOKEN,
        "heartbeat_s": 0.3,
        "retry_backoff_s": 0.05,
        "aggregate_interval_s": 0.5,
        "images_dir": images,
        "service_ports": f"{low}-{high}",
    }
    root = ControlPlane(
        Settings(**base, data_dir=tmp_path / "root", store=f"sqlite:///{tmp_path / 'root.db'}"),
        fast_broker_url,
        root=True,
    )
    cluster_settings = Settings(
        **base,
        data_dir=tmp_path / "a",
        store=f"sqlite:///{tmp_path / 'a.db'}",
        cluster_id="a",
        root=fast_broker_url,
    )
    for directory in (tmp_path / "root", tmp_path / "a"):
        directory.mkdir(exist_ok=True)
    cluster = ControlPlane(cluster_settings, fast_broker_url, serve_api=False)
    worker = build_worker(
        cluster_settings,
        broker_url=fast_broker_url,
        worker_id="a-w1",
        data_dir=tmp_path / "a-w1",
        network=net,
    )
    try:
        await root.start()
        await cluster.start()
        await worker.start()
        async with httpx.AsyncClient(
            base_url=root.url + "/api/v1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as http:

            async def cluster_up() -> bool:
                items = (await http.get("/clusters")).json()["items"]
                return any(c["state"] == "online" and c["aggregate"] for c in items)

            await eventually(cluster_up, "cluster a online")
            # checked: "running" then means serving (CI once fetched a started httpd
            # that did not listen yet)
            far = service("far", healthcheck=FAST_CHECK)
            created = await http.post("/applications", json={"name": "far", "services": [far]})
            assert created.status_code == 201, created.text
            app_id = created.json()["id"]

            async def both() -> list[dict[str, Any]]:
                doc = (await http.get(f"/applications/{app_id}")).json()
                found = [i for s in doc["services"] for i in s["instances"]]
                return running(found, 2) if all(i["endpoints"] for i in found) else []

            found = await eventually(both, "two instances with endpoints at the root")
            assert {(i["cluster_id"], i["worker_id"]) for i in found} == {("a", "a-w1")}
            assert len({i["endpoints"][0]["host_port"] for i in found}) == 2
            for instance in found:
                assert await fetch(instance["endpoints"][0]) == "far"
            assert (await http.delete(f"/applications/{app_id}")).status_code == 204
    finally:
        await worker.stop()
        await cluster.stop()
        await root.stop()
        await asyncio.to_thread(net.teardown)
