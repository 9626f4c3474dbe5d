"""Real edgeplane processes for the fault tests: start, wait on what they report, kill -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

EDGEPLANE = [sys.executable, "-m", "edgeplane"]
TOKEN = "faults-token"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], T | None], what: str, timeout: float = 30) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Procs:
    """The processes a test started, each with its output in a file; all stopped at the end."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [*EDGEPLANE, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.running.append(proc)
        return proc

    def output(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def kill9(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.running):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextmanager
def processes(tmp: Path, **env: str) -> Iterator[Procs]:
    procs = Procs(tmp, {**os.environ, "EDGEPLANE_ADMIN_TOKEN": TOKEN, **env})
    try:
        yield procs
    finally:
        procs.stop_all()


def api(url: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )


def wait_healthy(url: str, proc: subprocess.Popen[bytes], procs: Procs, name: str) -> None:
    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited early:\n{procs.output(name)}")
        try:
            return bool(httpx.get(f"{url}/healthz", timeout=1).json()["broker"])
        except httpx.HTTPError:
            return False

    wait_until(healthy, f"{name} to serve {url}")


def worker_doc(http: httpx.Client, worker_id: str) -> dict[str, Any] | None:
    answer = http.get(f"/workers/{worker_id}")
    return answer.json() if answer.status_code == 200 else None
