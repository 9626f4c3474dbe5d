"""A site's broker bridged to the root's (docs/brokers.md, "Mosquitto bridges between
sites"), with real processes: `edgeplane root` with its own locked-down Mosquitto, a site
Mosquitto whose bridge is `deploy/brokers/mosquitto-bridge/bridge.conf` as
`--print-bridge-config` fills it in, a manager (`--root-via-bridge`) and two workers on
the site's broker. Everything is asked of the ROOT's API: tasks end with their results, a
workflow completes, a worker killed -9 is seen and its task run elsewhere, and the site
broker killed -9 and started again on its port loses nothing."""

from __future__ import annotations

import base64
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from edgeplane.examples import EXAMPLES
from edgeplane.transport import free_port
from faults.procs import EDGEPLANE, TERMINAL, Lab, Role, check_exactly_once, host_tasks, wait_until

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed"),
]

CLUSTER = "site-a"
MATH = base64.b64encode(wasmtime.wat2wasm(EXAMPLES["add.wasm"])).decode()
#: how long the root holds a silent cluster's tasks: longer than the site broker's restart
ROOT_GRACE_S = 60


class SiteBroker:
    """The site's own Mosquitto as an operator runs it: its config includes a directory
    that holds the bridge's. Killed -9 and started again on the same port."""

    def __init__(self, directory: Path, bridge: str) -> None:
        self.directory = directory
        self.port = free_port()
        conf_d = directory / "conf.d"
        conf_d.mkdir(parents=True)
        bridge_file = conf_d / "bridge.conf"
        bridge_file.write_text(bridge)
        bridge_file.chmod(0o600)
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            "\n".join(
                [
                    # as the test's user (Mosquitto started as root switches to its own)
                    f"user {pwd.getpwuid(os.geteuid()).pw_name}",
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    "set_tcp_nodelay true",
                    "max_queued_messages 100000",
                    "max_inflight_messages 0",
                    "log_dest stderr",
                    "log_type all",
                    f"include_dir {conf_d}",
                    "",
                ]
            )
        )
        self.log = directory / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self.bridged, "the site broker's bridge to connect", timeout=30)

    def bridged(self) -> bool:
        """The bridge is up (Mosquitto logs it on every connection)."""
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the site broker exited:\n{self.tail()}")
        text = self.tail()
        return text.count("Connecting bridge") > 0 and "Error" not in text.rsplit("---", 1)[-1]

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        with self.log.open("ab") as out:
            out.write(b"--- killed\n")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)

    def tail(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Site:
    """A root, its broker's URL, and a cluster behind a bridge."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        port = free_port()
        self.root = lab.role(
            "root",
            ["root", "--store", "memory://", "--port", str(port),
             "--data-dir", str(lab.root / "root")],
            lab.env(EDGEPLANE_LOST_GRACE_S=str(ROOT_GRACE_S)),
        ).start()  # fmt: skip
        self.api = lab.api(port)
        self.api.wait_healthy(self.root)
        kept = lab.root / "root" / "broker" / "port"
        self.root_broker = f"mqtt://127.0.0.1:{kept.read_text().strip()}"
        self.env = lab.env(EDGEPLANE_CLUSTER_ID=CLUSTER)
        self.data = lab.root / CLUSTER
        self.broker: SiteBroker | None = None
        self.manager: Role | None = None
        self.workers: dict[str, Role] = {}

    def join(self) -> str:
        """What the operator runs once: join the root and print the bridge's config."""
        created = self.api.http.post("/join-tokens", json={"cluster_id": CLUSTER})
        assert created.status_code == 201, created.text
        printed = subprocess.run(
            [*EDGEPLANE, "manager", "--root", self.root_broker, "--print-bridge-config",
             "--data-dir", str(self.data)],
            env={**self.env, "EDGEPLANE_JOIN_TOKEN": created.json()["token"]},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert printed.returncode == 0, printed.stderr
        return printed.stdout

    def start(self, bridge: str) -> None:
        self.broker = SiteBroker(self.lab.root / "site-broker", bridge)
        self.broker.start()
        self.manager = self.lab.role(
            "manager",
            ["manager", "--broker", self.broker.url, "--root-via-bridge",
             "--store", f"sqlite:///{self.lab.root / 'site-a.db'}", "--port", "0",
             "--data-dir", str(self.data)],
            self.env,
        ).start()  # fmt: skip
        for name in ("w1", "w2"):
            self.workers[name] = self.lab.role(
                name,
                ["worker", "--manager", self.broker.url, "--worker-id", name, "--allow-host",
                 "--host-user", "root", "--no-containers", "--slots", "4",
                 "--data-dir", str(self.lab.root / name)],
                self.env,
            ).start()  # fmt: skip
        self.wait_workers(2)

    @property
    def watch(self) -> list[Role]:
        assert self.manager is not None
        return [self.root, self.manager]

    def cluster(self) -> dict[str, Any] | None:
        found = self.api.http.get(f"/clusters/{CLUSTER}")
        return found.json() if found.status_code == 200 else None

    def wait_workers(self, n: int) -> None:
        """The root sees the cluster online with ``n`` workers (its aggregate)."""

        def seen() -> bool:
            doc = self.cluster()
            return doc is not None and doc["state"] == "online" and _workers(doc) == n

        wait_until(seen, f"the root to see {CLUSTER} online with {n} workers", watch=self.watch)

    def task(self, task_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.api.http.get(f"/tasks/{task_id}").json()
        return found

    def close(self) -> None:
        if self.broker is not None:
            self.broker.stop()


def _workers(cluster: dict[str, Any]) -> int | None:
    aggregate = cluster.get("aggregate") or {}
    workers = aggregate.get("workers")
    return workers if isinstance(workers, int) else None


@pytest.fixture
def site(lab: Lab) -> Iterator[Site]:
    site = Site(lab)
    try:
        yield site
    finally:
        lab.close()  # the roles first: the site broker must not outlive their logs' needs
        site.close()


def test_a_cluster_behind_a_bridge(site: Site, lab: Lab) -> None:
    bridge = site.join()
    kept = site.data / "uplink" / "credentials.json"
    assert kept.stat().st_mode & 0o777 == 0o600
    assert f"remote_username {CLUSTER}\n" in bridge
    assert f"address {site.root_broker.removeprefix('mqtt://')}\n" in bridge
    assert "${" not in bridge
    site.start(bridge)
    api = site.api

    # Tasks end with their results, placed by the root through the bridge.
    out = lab.root / "out.txt"
    names = [f"t{n:02d}" for n in range(20)]
    accepted = api.submit(host_tasks(names, out))
    api.wait_ended(len(names), watch=site.watch)
    expected = {name: {"stdout": f"{name}\n", "exit_code": 0} for name in names}
    check_exactly_once(api.tasks(), accepted, expected)

    # A workflow completes.
    body = {
        "name": "bridged",
        "tasks": [
            {"name": "first", "runtime": "host", "command": ["sh", "-c", "echo ok"]},
            {"name": "second", "export": "add", "file": MATH, "inputs": [1, 1],
             "depends_on": ["first"]},
            {"name": "third", "export": "add", "file": MATH, "inputs": [2, 2],
             "depends_on": ["second"]},
        ],
    }  # fmt: skip
    created = api.http.post("/workflows", json=body)
    assert created.status_code == 201, created.text
    run = api.http.get(f"/workflows/{created.json()['id']}", params={"wait": 60}).json()
    assert run["state"] == "completed", [(t["name"], t["state"], t["error"]) for t in run["tasks"]]
    by_name = {t["name"]: t for t in run["tasks"]}
    assert by_name["first"]["results"]["stdout"] == "ok\n"
    assert by_name["third"]["results"] == [4]

    # A worker killed -9 while it runs a task: the root sees the cluster one worker
    # short, and the task ends on the other worker.
    files = lab.root / "files"
    files.mkdir()
    script = (  # the n-th run writes its pid to pid-n
        f"echo run >> {files}/runs; echo $$ > {files}/pid-$(wc -l < {files}/runs); "
        f"while [ ! -e {files}/go ]; do sleep 0.05; done; echo done"
    )
    [held] = api.submit([{"name": "held", "runtime": "host", "command": ["sh", "-c", script],
                          "retries": 1, "start": True}])  # fmt: skip
    running = wait_until(
        lambda: (t := site.task(held))["state"] == "running" and t.get("worker_id") and t,
        "the held task to run",
        watch=site.watch,
    )
    victim = running["worker_id"]
    survivor = ({"w1", "w2"} - {victim}).pop()
    site.workers[victim].kill9()
    site.wait_workers(1)
    wait_until(
        lambda: (t := site.task(held))["state"] == "running" and t.get("worker_id") == survivor,
        f"the held task to run again on {survivor}",
        watch=site.watch,
    )
    with contextlib.suppress(ProcessLookupError):  # the lost worker's run is an orphan now
        os.kill(int((files / "pid-1").read_text()), signal.SIGKILL)
    (files / "go").touch()
    ended = wait_until(
        lambda: (t := site.task(held))["state"] in ("completed", "failed") and t,
        "the held task to end",
        watch=site.watch,
    )
    assert (ended["state"], ended["worker_id"]) == ("completed", survivor), ended
    assert ended["results"]["stdout"] == "done\n"
    site.workers[victim].start()
    site.wait_workers(2)

    # The site broker killed -9 and started again on its port while tasks run: every
    # task ends once, none lost.
    assert site.broker is not None
    slow = [f"s{n:02d}" for n in range(40)]
    more = api.submit(host_tasks(slow, lab.root / "slow.txt", sleep_s=0.3))
    more_ids = set(more)

    def slow_ended() -> int:
        return sum(t["state"] in TERMINAL for t in api.tasks() if t["id"] in more_ids)

    wait_until(lambda: slow_ended() >= 5, "5 slow tasks to end", watch=site.watch)
    site.broker.kill9()
    site.broker.start()
    wait_until(lambda: slow_ended() == len(slow), "every slow task to end", 120, watch=site.watch)
    slow_expected = {name: {"stdout": f"{name}\n", "exit_code": 0} for name in slow}
    check_exactly_once([t for t in api.tasks() if t["id"] in more_ids], more, slow_expected)
    lines = (lab.root / "slow.txt").read_text().split()
    assert sorted(lines) == sorted(slow), "a task ran twice or never"
    site.wait_workers(2)
