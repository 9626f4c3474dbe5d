"""Several managers of one cluster on one store (PostgreSQL, and SQLite for processes on
one machine): one leads, the other stands by.

- kill -9 of the leader during 1,000 host tasks: the standby takes over and every task
  ends exactly once (one line each in the file the tasks append to, attempt 1);
- a leader paused (SIGSTOP) past its lease, then resumed: it writes and dispatches
  nothing more (its store refuses the old term, its workers refuse its commands), the
  new leader finishes every task exactly once, and the old one stands by. PostgreSQL
  only: on SQLite a process paused inside a write holds the database's one write lock,
  so nobody can take over until it resumes (docs/operations.md);
- a cluster's leader under a root killed (kill -9) or paused past its lease while still
  connected to the root: the standby, with the cluster's identity, takes the cluster over
  at the root (its lease's lineage and later term), runs the root's tasks, and a paused
  old leader resumed stands by instead of being refused and exiting.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import wasm_fixtures
from edgeplane import Client
from edgeplane.transport import free_port
from faults.procs import (
    TOKEN,
    Api,
    Lab,
    Role,
    check_exactly_once,
    check_lines,
    host_tasks,
    wait_until,
)

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(180)]

TASKS = 1000
KILL_AFTER = 150
#: The lease: long enough that a loaded 2-core machine does not depose a live leader,
#: short enough to keep the test quick (production default: the heartbeat, 5 s).
LEASE_S = "1.5"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


def standby_of(api: Api) -> dict[str, Any] | None:
    """The body of a standby's /healthz (None: it leads, or does not answer)."""
    health = api.health()
    if health is None or health[0] != 503 or health[1].get("status") != "standby":
        return None
    return health[1]


def leader_and_standby(lab: Lab) -> tuple[Role, Api, Role, Api, list[Role]]:
    first, second = free_port(), free_port()
    one = lab.manager(first, "--lease-s", LEASE_S, name="m1").start()
    api_one = lab.api(first)
    api_one.wait_healthy(one)
    two = lab.manager(second, "--lease-s", LEASE_S, name="m2").start()
    api_two = lab.api(second)
    seen = wait_until(lambda: standby_of(api_two), "m2 to stand by", watch=[two])
    assert seen["leader"] == api_one.url
    workers = [lab.worker(f"w{n}").start() for n in (1, 2)]
    api_one.wait_workers(["w1", "w2"], watch=[one, *workers])
    return one, api_one, two, api_two, workers


def test_a_standby_redirects_to_the_leader(lab: Lab, store_url: str) -> None:
    _, api_one, _, api_two, _ = leader_and_standby(lab)
    answer = httpx.post(
        f"{api_two.url}/api/v1/tasks",
        json={"name": "x", "runtime": "host", "command": ["true"]},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 307
    assert answer.headers["location"] == f"{api_one.url}/api/v1/tasks"
    assert answer.headers["x-edgeplane-leader"] == api_one.url
    # the client walks its URLs: given the standby first, it lands on the leader
    with Client(f"{api_two.url},{api_one.url}", TOKEN) as client:
        task = client.submit(name="y", runtime="host", command=["true"])
        assert client.url == api_one.url
        assert client.get(task.id).id == task.id


def test_leader_killed_during_1000_tasks(lab: Lab, store_url: str) -> None:
    one, api_one, two, api_two, workers = leader_and_standby(lab)
    out = lab.root / "out.txt"
    names = [f"t{n:04d}" for n in range(TASKS)]
    accepted = api_one.submit(host_tasks(names, out))
    ended = api_one.wait_ended(KILL_AFTER, watch=[one])

    one.kill9()
    assert ended < TASKS, "every task ended before the kill: nothing was tested"
    api_two.wait_healthy(two)
    api_two.wait_ended(TASKS, watch=[two, *workers], timeout=120)

    expected = {name: {"stdout": f"{name}\n", "exit_code": 0} for name in names}
    check_exactly_once(api_two.tasks(), accepted, expected)
    check_lines(out, names)


def proxy_requests(api: Api) -> float:
    """What the manager's artifact proxy was asked (its /metrics)."""
    return api.metric("edgeplane_proxy_requests_total")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_leading_manager_serves_modules_and_its_successor_takes_over(
    lab: Lab, store_url: str
) -> None:
    """`edgeplane manager` runs the artifact proxy on its leader only: a worker gets a
    task's module from it over MQTT (start commands carry the digest); after a kill -9 of
    the leader, the new leader's proxy serves the next module."""
    one, api_one, two, api_two, workers = leader_and_standby(lab)

    def run(api: Api, module: bytes, export: str, *inputs: int) -> dict[str, Any]:
        body = {"name": export, "file": base64.b64encode(module).decode(), "start": True,
                "inputs": list(inputs)}  # fmt: skip
        answer = api.http.post("/tasks", json=body, params={"wait": 30})
        assert answer.status_code == 201, answer.text
        task: dict[str, Any] = answer.json()
        assert task["state"] == "completed", task
        return task

    assert run(api_one, wasm_fixtures.add_wasm(), "add", 2, 3)["results"] == [5]
    assert proxy_requests(api_one) >= 1  # the worker asked the leader's proxy
    one.kill9()
    api_two.wait_healthy(two)
    api_two.wait_workers(["w1", "w2"], watch=[two, *workers])
    assert proxy_requests(api_two) == 0
    task = run(api_two, wasm_fixtures.wasi_hello_wasm(), "answer")
    assert task["results"] == [42], task
    assert proxy_requests(api_two) >= 1


@pytest.mark.parametrize(
    "store_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_a_paused_leader_cannot_write_or_dispatch(lab: Lab, store_url: str) -> None:
    one, api_one, two, api_two, workers = leader_and_standby(lab)
    out = lab.root / "out.txt"
    first = [f"a{n:03d}" for n in range(200)]
    accepted = api_one.submit(host_tasks(first, out))
    api_one.wait_ended(50, watch=[one])

    one.pause()  # past its lease: m2 takes over
    api_two.wait_healthy(two, timeout=30)
    later = [f"b{n:03d}" for n in range(200)]
    accepted += api_two.submit(host_tasks(later, out))
    one.resume()  # wakes up thinking it leads: its writes and commands must go nowhere

    wait_until(lambda: standby_of(api_one), "m1 to stand by again", watch=[one], timeout=30)
    api_two.wait_ended(len(first) + len(later), watch=[two, *workers], timeout=120)
    names = first + later
    expected = {name: {"stdout": f"{name}\n", "exit_code": 0} for name in names}
    check_exactly_once(api_two.tasks(), accepted, expected)
    check_lines(out, names)
    assert "no longer leading" in one.log.read_text()


@pytest.mark.parametrize(
    "store_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_root_leader_killed_with_two_clusters_and_an_application(lab: Lab, store_url: str) -> None:
    """Two roots on one store over two clusters: the leading root is killed during 1,000
    tasks with an application deployed. The other takes over; every task ends exactly
    once, and the application keeps exactly its instances (none lost, none doubled)."""
    ports = {"r1": free_port(), "r2": free_port()}
    roots = {
        name: lab.role(
            name,
            [
                "root",
                "--broker",
                lab.broker.url,
                "--store",
                store_url,
                "--port",
                str(port),
                "--data-dir",
                str(lab.root / name),
                "--lease-s",
                LEASE_S,
            ],
        )
        for name, port in ports.items()
    }
    roots["r1"].start()
    api_one, api_two = lab.api(ports["r1"]), lab.api(ports["r2"])
    api_one.wait_healthy(roots["r1"])
    roots["r2"].start()
    wait_until(lambda: standby_of(api_two), "r2 to stand by", watch=[roots["r2"]])
    members: list[Role] = []
    for name in ("east", "west"):
        members.append(
            lab.role(
                name,
                [
                    "manager",
                    "--cluster-id",
                    name,
                    "--broker",
                    lab.broker.url,
                    "--root",
                    lab.broker.url,
                    "--port",
                    str(free_port()),
                    "--store",
                    f"sqlite:///{lab.root / name / 'store.db'}",
                    "--data-dir",
                    str(lab.root / name),
                ],
            ).start()
        )
        members.append(
            lab.role(
                f"{name}-w",
                [
                    "worker",
                    "--cluster-id",
                    name,
                    "--manager",
                    lab.broker.url,
                    "--worker-id",
                    f"{name}-w",
                    "--allow-host",
                    "--host-user",
                    "root",
                    "--no-containers",
                    "--slots",
                    "4",
                    "--data-dir",
                    str(lab.root / f"{name}-w"),
                ],
            ).start()
        )

    def clusters(api: Api) -> set[str]:
        try:
            items = api.http.get("/clusters").json()["items"]
        except (httpx.HTTPError, ValueError, KeyError):
            return set()
        return {
            c["id"]
            for c in items
            if c["state"] == "online" and (c.get("aggregate") or {}).get("workers")
        }

    wait_until(lambda: clusters(api_one) == {"east", "west"}, "both clusters", watch=members)
    app = {
        "name": "shop",
        "services": [{"name": "web", "runtime": "host", "command": ["sleep", "120"],
                      "replicas": 2}],
    }  # fmt: skip
    created = api_one.http.post("/applications", json=app)
    assert created.status_code in (201, 202), created.text
    app_id = created.json()["id"]

    def instances(api: Api) -> list[dict[str, Any]]:
        try:
            doc = api.http.get(f"/applications/{app_id}").json()
        except (httpx.HTTPError, ValueError):
            return []
        return [i for s in doc.get("services", []) for i in s["instances"]]

    def running(api: Api) -> list[dict[str, Any]]:
        found = instances(api)
        up = [i for i in found if i["state"] == "running"]
        return up if len(up) == len(found) == 2 else []

    before = wait_until(lambda: running(api_one), "the application's 2 instances")
    out = lab.root / "out.txt"
    names = [f"t{n:04d}" for n in range(TASKS)]
    accepted = api_one.submit(host_tasks(names, out))
    ended = api_one.wait_ended(KILL_AFTER, watch=[roots["r1"]], timeout=120)

    roots["r1"].kill9()
    assert ended < TASKS + 2, "every task ended before the kill: nothing was tested"
    api_two.wait_healthy(roots["r2"])
    done = api_two.wait_ended(TASKS, watch=[roots["r2"], *members], timeout=150)
    assert done >= TASKS

    expected = {name: {"stdout": f"{name}\n", "exit_code": 0} for name in names}
    ran = [t for t in api_two.tasks() if t["name"] in expected]
    check_exactly_once(ran, accepted, expected)
    check_lines(out, names)
    after = running(api_two)
    assert sorted(i["task_id"] for i in after) == sorted(i["task_id"] for i in before)


def _root_task(root: Api, text: str) -> dict[str, Any]:
    """A host task submitted to the root, as it ended (or as it is after 30 s)."""
    body = {"runtime": "host", "command": ["echo", text], "start": True}
    created = root.http.post("/tasks", json=body)
    assert created.status_code == 201, created.text
    task: dict[str, Any] = root.http.get(
        f"/tasks/{created.json()['id']}", params={"wait": 30}
    ).json()
    return task


@pytest.mark.parametrize("fault", ["kill9", "pause"])
@pytest.mark.parametrize(
    "store_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_a_clusters_standby_takes_it_over_at_the_root(lab: Lab, store_url: str, fault: str) -> None:
    """Two managers of cluster east on one store, with its one identity at the root (as
    the chart runs them). The root's beats are long, so it holds a paused leader's
    session live throughout (a pause on PostgreSQL only: see the module's docstring)."""
    root_port = free_port()
    root_dir = lab.root / "root"
    root = lab.role(
        "root",
        ["root", "--port", str(root_port), "--data-dir", str(root_dir)],
        lab.env(EDGEPLANE_HEARTBEAT_S="10"),
    ).start()
    at_root = lab.api(root_port)
    at_root.wait_healthy(root)
    root_url = f"mqtt://127.0.0.1:{int((root_dir / 'broker' / 'port').read_text())}"
    created = at_root.http.post("/join-tokens", json={"cluster_id": "east"})
    assert created.status_code == 201, created.text

    ports = [free_port(), free_port()]
    flags = ["--cluster-id", "east", "--root", root_url, "--lease-s", LEASE_S]
    one = lab.manager(ports[0], *flags, name="m1")
    one.env["EDGEPLANE_JOIN_TOKEN"] = created.json()["token"]
    one.start()
    api_one = lab.api(ports[0])
    api_one.wait_healthy(one)
    kept = lab.root / "m2" / "uplink"  # the cluster's identity, as the chart's Secret
    kept.mkdir(parents=True)
    for credential in (lab.root / "m1" / "uplink").glob("credentials*"):
        shutil.copy2(credential, kept / credential.name)
    two = lab.manager(ports[1], *flags, name="m2").start()
    api_two = lab.api(ports[1])
    wait_until(lambda: standby_of(api_two), "m2 to stand by", watch=[two])
    worker = lab.worker("w1")
    worker.env["EDGEPLANE_CLUSTER_ID"] = "east"
    worker.start()
    api_one.wait_workers(["w1"], watch=[one, worker])
    ran = _root_task(at_root, "first")
    assert (ran["state"], ran["cluster_id"]) == ("completed", "east"), ran

    # The leader goes: killed (its will tells the root at once), or paused past its
    # lease with its link to the root open (the root hears nothing of it).
    if fault == "kill9":
        one.kill9()
    else:
        one.pause()
    try:
        api_two.wait_healthy(two)
        # Only m2 can run it: registered with the root, not refused as "in use".
        ran = _root_task(at_root, "second")
        assert two.running, two.tail()
        assert (ran["state"], ran["cluster_id"]) == ("completed", "east"), (ran, two.tail())
    finally:
        if fault == "pause":
            one.resume()
    if fault == "pause":
        # Resumed, it finds itself deposed and stands by: not refused as a twin.
        wait_until(lambda: standby_of(api_one), "m1 to stand by", watch=[one], timeout=30)
    ran = _root_task(at_root, "third")
    assert (ran["state"], ran["cluster_id"]) == ("completed", "east"), ran
    assert two.running and (fault == "kill9" or one.running)
    assert at_root.http.get("/clusters/east").json()["state"] == "online"
