"""Real processes for the fault suite: a Mosquitto of the test's own, `edgeplane` roles
with their own data dirs and ports, and an HTTP view of the API to wait on and count.

Every role writes its output to a file (a pipe nobody reads would block it once full) and
runs in a session of its own, so a test can kill -9 exactly one process. ``Lab`` stops
whatever a test started, by pid, whatever happened.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

from edgeplane.transport import free_port
from edgeplane.transport.broker import MosquittoProcess

EDGEPLANE = [sys.executable, "-m", "edgeplane"]
TOKEN = "fault-suite-token"
#: Short beats so that a worker really lost is noticed within a test's bounds (1.5 s).
HEARTBEAT_S = 0.5
TERMINAL = ("completed", "failed", "cancelled", "skipped")
LOG_TAIL = 4000

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None],
    what: str,
    timeout: float = 30,
    *,
    watch: Iterable[Role] = (),
) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``, or at
    once with its log when a watched process died."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        for role in watch:
            if not role.running:
                raise AssertionError(f"{role.name} exited while waiting for {what}:\n{role.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def alive(process: psutil.Process | int) -> bool:
    """Still running (a ``psutil.Process``: still that process, not a later one with its
    pid), and not a zombie."""
    try:
        found = psutil.Process(process) if isinstance(process, int) else process
        return found.is_running() and found.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Broker:
    """The test's own Mosquitto, stopped and started again on the same port."""

    def __init__(self, directory: Path) -> None:
        executable = shutil.which("mosquitto")
        if executable is None:
            pytest.skip("mosquitto is not installed")
        self._mosquitto = MosquittoProcess(directory, free_port(), executable)

    @property
    def url(self) -> str:
        return self._mosquitto.url

    def start(self) -> str:
        return self._mosquitto.start()

    def stop(self) -> None:
        self._mosquitto.stop()


@dataclass
class Role:
    """One ``edgeplane …`` process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Role:
        """Start the process (again, after it stopped or was killed: same argv, same log)."""
        with self.log.open("ab") as out:
            out.write(f"--- start {' '.join(self.argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [*EDGEPLANE, *self.argv],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def process(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def pause(self) -> None:
        """SIGSTOP: the process does nothing at all, as if its event loop were blocked."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill9(self) -> None:
        """kill -9 the process itself (not what it spawned in sessions of their own)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def tail(self) -> str:
        try:
            return self.log.read_bytes()[-LOG_TAIL:].decode(errors="replace")
        except OSError:
            return ""


class Api:
    """The REST API of a control plane, as a test polls it."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )

    def close(self) -> None:
        self.http.close()

    def health(self) -> tuple[int, dict[str, Any]] | None:
        """``/healthz``: its status code and body (None while nothing answers)."""
        try:
            answer = httpx.get(f"{self.url}/healthz", timeout=5)
            return answer.status_code, answer.json()
        except (httpx.HTTPError, ValueError):
            return None

    def healthz(self) -> dict[str, Any] | None:
        health = self.health()
        return None if health is None else health[1]

    def wait_healthy(self, role: Role, timeout: float = 30) -> None:
        wait_until(
            lambda: (self.healthz() or {}).get("broker"),
            f"{role.name} to answer /healthz",
            timeout,
            watch=[role],
        )

    def metric(self, name: str) -> float:
        """One unlabelled value of ``/metrics``."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        raise AssertionError(f"no metric {name} in /metrics")

    def online_workers(self) -> set[str]:
        try:
            items = self.http.get("/workers").json()["items"]
        except (httpx.HTTPError, ValueError, KeyError):
            return set()
        return {w["id"] for w in items if w["state"] == "online"}

    def worker(self, worker_id: str) -> dict[str, Any] | None:
        """``GET /workers/{id}`` (None while the manager does not know it)."""
        answer = self.http.get(f"/workers/{worker_id}")
        return answer.json() if answer.status_code == 200 else None

    def wait_workers(self, ids: Iterable[str], watch: Iterable[Role] = ()) -> None:
        wanted = set(ids)
        wait_until(lambda: wanted <= self.online_workers(), f"workers {wanted}", watch=watch)

    def submit(self, specs: list[dict[str, Any]]) -> list[str]:
        """POST /tasks/batch in pieces of 1,000; the ids of the accepted tasks."""
        ids = []
        for start in range(0, len(specs), 1000):
            answer = self.http.post("/tasks/batch", json={"tasks": specs[start : start + 1000]})
            assert answer.status_code == 201, answer.text
            ids += [task["id"] for task in answer.json()["items"]]
        return ids

    def count(self, state: str) -> int:
        answer = self.http.get("/tasks", params={"state": state, "limit": 1})
        answer.raise_for_status()
        total: int = answer.json()["total"]
        return total

    def ended(self) -> int | None:
        """How many tasks are in a final state (None while the API does not answer)."""
        try:
            return sum(self.count(state) for state in TERMINAL)
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def wait_ended(self, n: int, watch: Iterable[Role] = (), timeout: float = 90) -> int:
        """Wait until at least ``n`` tasks ended; how many had."""

        def enough() -> int | None:
            ended = self.ended()
            return ended if ended is not None and ended >= n else None

        return wait_until(enough, f"{n} tasks to end", timeout, watch=watch)

    def tasks(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = self.http.get("/tasks", params={"limit": 1000, "offset": len(found)})
            page.raise_for_status()
            items = page.json()["items"]
            found += items
            if not items:
                return found


@dataclass
class Lab:
    """Everything one test runs: its broker, roles and API clients, all stopped at the end."""

    root: Path
    store: str
    domain: str = field(default_factory=lambda: f"f{uuid.uuid4().hex[:10]}")
    roles: list[Role] = field(default_factory=list)
    apis: list[Api] = field(default_factory=list)
    #: a broker the lab did not start (the broker matrix's): every role dials it instead
    external_broker: str = ""
    #: every role's heartbeat (a test of a broker that pauses longer than 3 beats raises it)
    heartbeat_s: float = HEARTBEAT_S
    _broker: Broker | None = None

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            self._broker = Broker(self.root / "mosquitto")
            self._broker.start()
        return self._broker

    @property
    def broker_url(self) -> str:
        """Where the roles dial: the external broker if there is one, else the lab's."""
        return self.external_broker or self.broker.url

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "EDGEPLANE_ADMIN_TOKEN": TOKEN,
            "EDGEPLANE_DOMAIN": self.domain,
            "EDGEPLANE_HEARTBEAT_S": str(self.heartbeat_s),
            **extra,
        }
        for name in ("EDGEPLANE_URL", "EDGEPLANE_TOKEN"):
            env.pop(name, None)
        return env

    def role(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Role:
        role = Role(name, argv, dict(env or self.env()), self.root / f"{name}.log")
        self.roles.append(role)
        return role

    def manager(self, port: int, *flags: str, name: str = "manager") -> Role:
        """``edgeplane manager`` on the lab's broker and store, with ``flags`` added."""
        return self.role(
            name,
            ["manager", "--broker", self.broker_url, "--store", self.store,
             "--port", str(port), "--data-dir", str(self.root / name), *flags],
        )  # fmt: skip

    def worker(
        self, worker_id: str, *, slots: int = 4, prefetch: int = 2, broker: str | None = None
    ) -> Role:
        """``edgeplane worker`` on ``broker`` (default: the lab's), host tasks allowed, as
        root: the suite's host tasks write into the test's own directory, which only root
        may enter (tests/faults/test_host_user.py runs them as the default user)."""
        return self.role(
            worker_id,
            ["worker", "--manager", broker or self.broker_url, "--worker-id", worker_id,
             "--allow-host", "--host-user", "root", "--no-containers", "--slots", str(slots),
             "--prefetch", str(prefetch), "--data-dir", str(self.root / worker_id)],
        )  # fmt: skip

    def manager_and_workers(self) -> tuple[Role, list[Role], Api]:
        """A manager on a free port and two workers, ``w1`` and ``w2`` (4 slots, prefetch
        2), the manager serving and both online; its API."""
        port = free_port()
        manager = self.manager(port).start()
        workers = [self.worker(f"w{n}").start() for n in (1, 2)]
        api = self.api(port)
        api.wait_healthy(manager)
        api.wait_workers(["w1", "w2"], watch=[manager, *workers])
        return manager, workers, api

    def up(self, port: int, *, workers: int = 2, name: str = "up", **env: str) -> Role:
        return self.role(
            name,
            ["up", "--broker", self.broker_url, "--store", self.store, "--port", str(port),
             "--workers", str(workers), "--no-containers", "--data-dir", str(self.root / name)],
            self.env(**env),
        )  # fmt: skip

    def api(self, port: int) -> Api:
        api = Api(port)
        self.apis.append(api)
        return api

    def close(self) -> None:
        for api in self.apis:
            api.close()
        for role in reversed(self.roles):
            role.stop()
        if self._broker is not None:
            self._broker.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {r.name}\n{r.tail()}" for r in self.roles)


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A ``Lab`` on SQLite in the test's directory; ``store_url`` (if the test has one) wins."""
    store = (
        request.getfixturevalue("store_url")
        if "store_url" in request.fixturenames
        else f"sqlite:///{tmp_path / 'store.db'}"
    )
    lab = Lab(tmp_path, store)
    try:
        yield lab
    finally:
        lab.close()


# ---------------------------------------------------------------------- exactly once


def host_tasks(names: Iterable[str], out: Path, *, sleep_s: float = 0) -> list[dict[str, Any]]:
    """Host tasks that each append their name to ``out`` once and print it."""
    pause = f"sleep {sleep_s}; " if sleep_s else ""
    return [
        {
            "name": name,
            "runtime": "host",
            "command": ["sh", "-c", f'{pause}echo "$0" >> "$1"; echo "$0"', name, str(out)],
            "start": True,
        }
        for name in names
    ]


def check_exactly_once(
    tasks: list[dict[str, Any]],
    accepted: Iterable[str],
    expected: Mapping[str, Any],
    *,
    attempts: Callable[[dict[str, Any]], bool] = lambda task: task["attempt"] == 1,
) -> None:
    """Every accepted task is stored once, ``completed``, with ``expected[name]`` as its
    results and an attempt ``attempts`` accepts; nothing else is stored."""
    ids = Counter(task["id"] for task in tasks)
    assert [i for i, n in ids.items() if n > 1] == [], "a task is listed twice"
    accepted = set(accepted)
    assert set(ids) == accepted, (
        f"missing {len(accepted - set(ids))}, unexpected {len(set(ids) - accepted)}"
    )
    wrong = [
        (t["name"], t["state"], t["error"], t["attempt"], t["results"], t.get("reason"))
        for t in tasks
        if t["state"] != "completed" or t["results"] != expected[t["name"]] or not attempts(t)
    ]
    states = Counter(t["state"] for t in tasks)
    assert wrong == [], f"{len(wrong)} tasks ended wrong ({dict(states)}), e.g. {wrong[:5]}"


def check_lines(out: Path, names: Iterable[str]) -> None:
    """The side effect of each host task is there exactly once."""
    lines = Counter(out.read_text().split()) if out.exists() else Counter()
    names = list(names)
    twice = sorted(name for name, n in lines.items() if n > 1)
    never = sorted(name for name in names if lines[name] == 0)
    assert (twice[:5], len(twice), never[:5], len(never)) == ([], 0, [], 0), "ran twice / never"
    assert set(lines) == set(names)
