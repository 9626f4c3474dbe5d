"""Identity and endpoints across processes (docs/architecture.md, "Identity and endpoints"):
no two processes share an MQTT client id, a worker id belongs to one live process, one
data dir to one process, and a restarted root or manager comes back where it was, its
members finding it again by themselves."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest
from procs import Api, Lab, Role, alive, wait_until

from edgeplane.transport import free_port

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed"),
]


def _lines(role: Role, needle: str) -> list[str]:
    try:
        text = role.log.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if needle in line]


def _link_drops(role: Role) -> list[str]:
    """What the process logged of its MQTT link dropping (link.py)."""
    return [line for line in _lines(role, "mqtt link") if " lost " in line]


def _wait_exit(role: Role, what: str) -> int:
    assert role.proc is not None
    wait_until(lambda: not role.running, what)
    code = role.proc.returncode
    assert code is not None
    return code


def _waiting_task(go: Path, out: str = "ok") -> dict[str, object]:
    """A host task that runs until ``go`` exists, then prints ``out``."""
    script = f'while [ ! -e "$0" ]; do sleep 0.05; done; echo {out}'
    return {"name": "long", "runtime": "host", "command": ["sh", "-c", script, str(go)]}


def test_a_second_worker_with_a_live_workers_id_is_refused_and_the_first_is_unharmed(
    lab: Lab,
) -> None:
    port = free_port()
    manager = lab.manager(port).start()
    first = lab.worker("twin").start()
    api = lab.api(port)
    api.wait_healthy(manager)
    api.wait_workers(["twin"], watch=[manager, first])
    go = lab.root / "go"
    [task_id] = api.submit([{**_waiting_task(go), "start": True}])
    wait_until(
        lambda: api.http.get(f"/tasks/{task_id}").json()["state"] == "running",
        "the task to run on the first worker",
        watch=[manager, first],
    )

    # Same --worker-id, its own data dir: what two machines given one id would do.
    second = lab.role(
        "twin-2",
        ["worker", "--manager", lab.broker.url, "--worker-id", "twin", "--allow-host",
         "--no-containers", "--data-dir", str(lab.root / "twin-2")],
    ).start()  # fmt: skip
    assert _wait_exit(second, "the second process to be refused") == 2, second.tail()
    assert "error: worker id twin is in use by a live worker" in second.tail(), second.tail()
    assert _lines(manager, "refused a second worker"), manager.tail()
    assert api.metric("edgeplane_members_refused_total") >= 1

    # The first keeps its task, runs it to the end and stays online.
    go.touch()
    done = api.http.get(f"/tasks/{task_id}", params={"wait": 30}).json()
    assert (done["state"], done["attempt"], done["worker_id"]) == ("completed", 1, "twin"), done
    assert done["results"]["stdout"] == "ok\n"
    assert api.worker("twin")["state"] == "online"  # type: ignore[index]
    assert first.running
    # No fight: nobody was kicked off the broker, nobody went offline.
    assert _link_drops(first) == [], _link_drops(first)
    assert _link_drops(manager) == [], _link_drops(manager)
    assert _lines(manager, "worker offline") == [], manager.tail()
    assert api.metric("edgeplane_workers_lost_total") == 0
    broker_log = (lab.root / "mosquitto" / "mosquitto.log").read_text(errors="replace")
    assert "already connected" not in broker_log

    # Once the first is really gone, the id is free again.
    first.kill9()
    third = lab.role(
        "twin-3",
        ["worker", "--manager", lab.broker.url, "--worker-id", "twin", "--allow-host",
         "--no-containers", "--data-dir", str(lab.root / "twin-3")],
    ).start()  # fmt: skip
    wait_until(
        lambda: "mqtt link" in third.tail() and "connected to" in third.tail(),
        "the new process to connect",
        watch=[manager, third],
    )
    [again] = api.submit(
        [{"name": "after", "runtime": "host", "command": ["echo", "hi"], "start": True}]
    )
    ran = api.http.get(f"/tasks/{again}", params={"wait": 30}).json()
    assert (ran["state"], ran["worker_id"]) == ("completed", "twin"), ran


def test_a_second_worker_on_one_data_dir_is_refused_at_start(lab: Lab) -> None:
    port = free_port()
    manager = lab.manager(port).start()
    first = lab.worker("w1").start()
    api = lab.api(port)
    api.wait_healthy(manager)
    api.wait_workers(["w1"], watch=[manager, first])
    # No --worker-id: the id kept in the data dir is the first one's.
    second = lab.role(
        "w1-again",
        ["worker", "--manager", lab.broker.url, "--no-containers",
         "--data-dir", str(lab.root / "w1")],
    ).start()  # fmt: skip
    assert _wait_exit(second, "the second process to be refused") == 2, second.tail()
    assert first.proc is not None
    assert f"is in use by another worker (pid {first.proc.pid})" in second.tail(), second.tail()
    assert first.running and api.online_workers() == {"w1"}
    assert _link_drops(first) == []


def test_two_managers_of_one_cluster_never_share_a_client_id(lab: Lab) -> None:
    """Two manager-level processes of one cluster on one broker (a misconfiguration, but
    not one that may make them kick each other off the broker forever)."""
    managers, apis = [], []
    for name in ("m1", "m2"):
        port = free_port()
        managers.append(
            lab.role(
                name,
                ["manager", "--broker", lab.broker.url, "--port", str(port),
                 "--store", f"sqlite:///{lab.root / name / 'store.db'}",
                 "--data-dir", str(lab.root / name)],
            ).start()
        )  # fmt: skip
        apis.append(lab.api(port))
    for api, manager in zip(apis, managers, strict=True):
        api.wait_healthy(manager)
    worker = lab.worker("w1").start()
    wait_until(
        lambda: all("w1" in api.online_workers() for api in apis),
        "both managers to hear the worker",
        watch=[*managers, worker],
    )
    broker_log = (lab.root / "mosquitto" / "mosquitto.log").read_text(errors="replace")
    ids = set(re.findall(r" as (edgeplane-manager-\S+) ", broker_log))
    assert len(ids) == 2, broker_log
    assert "already connected" not in broker_log
    for manager in managers:
        assert _link_drops(manager) == [], manager.tail()


def _join_token(root_api: Api, cluster_id: str) -> str:
    """A root's join token for ``cluster_id`` (its broker lets only joined clusters in)."""
    created = root_api.http.post("/join-tokens", json={"cluster_id": cluster_id})
    assert created.status_code == 201, created.text
    token: str = created.json()["token"]
    return token


def _port(data_dir: Path) -> int:
    return int((data_dir / "broker" / "port").read_text())


def test_a_root_killed_and_restarted_comes_back_on_its_port_and_its_clusters_with_it(
    lab: Lab,
) -> None:
    root_port = free_port()
    root_dir = lab.root / "root"
    root = lab.role("root", ["root", "--port", str(root_port), "--data-dir", str(root_dir)]).start()
    root_api = lab.api(root_port)
    root_api.wait_healthy(root)
    broker_port = _port(root_dir)
    clusters = {}
    for name in ("east", "west"):
        clusters[name] = lab.role(
            name,
            ["manager", "--cluster-id", name, "--broker", lab.broker.url,
             "--root", f"mqtt://127.0.0.1:{broker_port}", "--port", str(free_port()),
             "--store", f"sqlite:///{lab.root / name / 'store.db'}",
             "--data-dir", str(lab.root / name)],
            lab.env(EDGEPLANE_JOIN_TOKEN=_join_token(root_api, name)),
        ).start()  # fmt: skip

    def online() -> set[str]:
        try:
            items = root_api.http.get("/clusters").json()["items"]
        except (httpx.HTTPError, ValueError, KeyError):
            return set()
        return {c["id"] for c in items if c["state"] == "online"}

    wait_until(
        lambda: online() == {"east", "west"}, "both clusters", watch=[root, *clusters.values()]
    )
    [mosquitto] = [c for c in root.process().children(recursive=True) if c.name() == "mosquitto"]

    root.kill9()
    wait_until(lambda: not alive(mosquitto), "the root's broker to die with it")
    root.start()  # same data dir, no flag about its broker
    root_api.wait_healthy(root)
    assert _port(root_dir) == broker_port
    assert f"--root mqtt://127.0.0.1:{broker_port}" in root.tail()
    wait_until(
        lambda: online() == {"east", "west"},
        "both clusters back, neither restarted",
        watch=[root, *clusters.values()],
    )
    assert all(c.running for c in clusters.values())
    assert root.proc is not None
    [task] = root_api.submit(
        [{"name": "after", "runtime": "host", "command": ["echo", "x"], "start": True}]
    )
    assert task


def test_a_manager_restarted_keeps_its_broker_port_and_its_workers_come_back(lab: Lab) -> None:
    port = free_port()
    data_dir = lab.root / "manager"
    manager = lab.role(
        "manager",
        ["manager", "--store", lab.store, "--port", str(port), "--data-dir", str(data_dir)],
    ).start()
    api = lab.api(port)
    api.wait_healthy(manager)
    broker_port = _port(data_dir)
    created = api.http.post("/join-tokens", json={"ttl_s": 600})
    assert created.status_code == 201, created.text
    worker = lab.role(
        "edge-1",
        ["worker", "--manager", f"mqtt://127.0.0.1:{broker_port}", "--worker-id", "edge-1",
         "--allow-host", "--no-containers", "--data-dir", str(lab.root / "edge-1")],
        lab.env(EDGEPLANE_JOIN_TOKEN=created.json()["token"]),
    ).start()  # fmt: skip
    api.wait_workers({"edge-1"}, watch=[manager, worker])

    for stop in (manager.kill9, manager.stop):  # killed outright, then stopped properly
        drops = len(_link_drops(worker))
        stop()
        wait_until(
            lambda before=drops: len(_link_drops(worker)) > before,  # type: ignore[misc]
            "the worker to lose its manager",
        )
        manager.start()
        api.wait_healthy(manager)
        assert _port(data_dir) == broker_port
        api.wait_workers({"edge-1"}, watch=[manager, worker])
        [task] = api.submit(
            [{"name": "t", "runtime": "host", "command": ["echo", "back"], "start": True}]
        )
        ran = api.http.get(f"/tasks/{task}", params={"wait": 30}).json()
        assert (ran["state"], ran["worker_id"]) == ("completed", "edge-1"), ran
    assert worker.running


def test_a_second_manager_of_a_live_cluster_is_refused_by_the_root(lab: Lab) -> None:
    root_port = free_port()
    root_dir = lab.root / "root"
    root = lab.role("root", ["root", "--port", str(root_port), "--data-dir", str(root_dir)]).start()
    root_api = lab.api(root_port)
    root_api.wait_healthy(root)
    root_url = f"mqtt://127.0.0.1:{_port(root_dir)}"

    def east(name: str, **env: str) -> Role:
        return lab.role(
            name,
            ["manager", "--cluster-id", "east", "--root", root_url, "--port", str(free_port()),
             "--store", f"sqlite:///{lab.root / name / 'store.db'}",
             "--data-dir", str(lab.root / name)],
            lab.env(**env),
        ).start()  # fmt: skip

    first = east("east", EDGEPLANE_JOIN_TOKEN=_join_token(root_api, "east"))
    wait_until(
        lambda: (root_api.http.get("/clusters/east").json() or {}).get("state") == "online",
        "east to register",
        watch=[root, first],
    )
    # The same identity on a second machine: its data dir's uplink credentials copied.
    copied = lab.root / "east-2" / "uplink"
    copied.mkdir(parents=True)
    for kept in (lab.root / "east" / "uplink").glob("credentials*"):
        shutil.copy2(kept, copied / kept.name)
    second = east("east-2")
    assert _wait_exit(second, "the second manager to be refused") == 2, second.tail()
    assert "error: cluster id east is in use by a live cluster" in second.tail(), second.tail()
    assert first.running
    assert root_api.http.get("/clusters/east").json()["state"] == "online"
    assert _lines(root, "cluster offline") == [], root.tail()


def test_a_workers_credentials_copied_to_a_second_process_are_refused(lab: Lab) -> None:
    """On a broker edgeplane runs every worker has its own credentials: the same ones on
    two machines (a copied data dir) is the twin to stop."""
    port = free_port()
    data_dir = lab.root / "manager"
    manager = lab.role(
        "manager",
        ["manager", "--store", lab.store, "--port", str(port), "--data-dir", str(data_dir)],
    ).start()
    api = lab.api(port)
    api.wait_healthy(manager)
    broker = f"mqtt://127.0.0.1:{_port(data_dir)}"
    created = api.http.post("/join-tokens", json={"ttl_s": 600})
    assert created.status_code == 201, created.text
    first = lab.role(
        "edge-1",
        ["worker", "--manager", broker, "--worker-id", "edge-1", "--no-containers",
         "--data-dir", str(lab.root / "edge-1")],
        lab.env(EDGEPLANE_JOIN_TOKEN=created.json()["token"]),
    ).start()  # fmt: skip
    api.wait_workers({"edge-1"}, watch=[manager, first])
    copied = lab.root / "copy" / "worker"
    copied.mkdir(parents=True)
    for kept in (lab.root / "edge-1" / "worker").glob("credentials*"):
        shutil.copy2(kept, copied / kept.name)
    second = lab.role(
        "copy",
        ["worker", "--manager", broker, "--no-containers", "--data-dir", str(lab.root / "copy")],
    ).start()  # fmt: skip
    assert _wait_exit(second, "the copy to be refused") == 2, second.tail()
    assert "error: worker id edge-1 is in use by a live worker" in second.tail(), second.tail()
    assert first.running and api.online_workers() == {"edge-1"}
    assert _link_drops(first) == []
