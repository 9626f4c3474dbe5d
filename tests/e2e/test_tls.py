"""TLS across the network, as an operator sets it up (README "TLS"): `certs init`, a manager
serving HTTPS and MQTTS off loopback, a worker process and the CLI verifying both with the
generated CA; another CA is refused; plain off loopback needs --insecure."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeplane import Client
from edgeplane.errors import Unavailable
from edgeplane.transport import free_port
from faults.procs import EDGEPLANE, TOKEN, Lab, Role, wait_until
from wasm_fixtures import add_wasm

pytestmark = [pytest.mark.timeout(120), pytest.mark.mosquitto]


def edgeplane(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGEPLANE, *args], env=lab.env(), capture_output=True, text=True, timeout=60, check=False
    )


def certs_init(lab: Lab, data_dir: Path) -> Path:
    done = edgeplane(lab, "certs", "init", "--data-dir", str(data_dir), "--hosts", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    return data_dir / "certs" / "ca.pem"


class Secured:
    """A manager with the data dir's certificates, listening off loopback (so TLS is on by
    itself), its embedded broker's port chosen by the test."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.data_dir = lab.root / "manager"
        self.ca = certs_init(lab, self.data_dir)
        self.port, self.broker_port = free_port(), free_port()
        # the embedded broker keeps the port recorded there (roles/control.py)
        (self.data_dir / "broker").mkdir()
        (self.data_dir / "broker" / "port").write_text(f"{self.broker_port}\n")
        self.api = f"https://127.0.0.1:{self.port}"
        self.broker = f"mqtts://127.0.0.1:{self.broker_port}"
        self.manager = lab.role(
            "manager",
            ["manager", "--host", "0.0.0.0", "--broker-host", "0.0.0.0", "--port",
             str(self.port), "--store", lab.store, "--data-dir", str(self.data_dir)],
        ).start()  # fmt: skip
        wait_until(self._healthy, "the manager to answer over HTTPS", watch=[self.manager])

    def _healthy(self) -> bool:
        try:
            verify = ssl.create_default_context(cafile=str(self.ca))
            return bool(httpx.get(f"{self.api}/healthz", verify=verify).json()["broker"])
        except httpx.HTTPError:
            return False

    def join_token(self) -> str:
        """A join token (the manager's broker lets only joined workers in)."""
        created = httpx.post(
            f"{self.api}/api/v1/join-tokens",
            json={"ttl_s": 600},
            headers={"Authorization": f"Bearer {TOKEN}"},
            verify=ssl.create_default_context(cafile=str(self.ca)),
        )
        assert created.status_code == 201, created.text
        token: str = created.json()["token"]
        return token

    def worker(self, worker_id: str, ca: Path) -> Role:
        return self.lab.role(
            worker_id,
            ["worker", "--manager", self.broker, "--ca", str(ca), "--worker-id", worker_id,
             "--no-containers", "--data-dir", str(self.lab.root / worker_id)],
            self.lab.env(EDGEPLANE_JOIN_TOKEN=self.join_token()),
        ).start()  # fmt: skip


@pytest.fixture
def secured(lab: Lab) -> Iterator[Secured]:
    yield Secured(lab)


def test_worker_and_cli_complete_a_task_over_mqtts_and_https(lab: Lab, secured: Secured) -> None:
    assert "listener" in (config := (secured.data_dir / "broker" / "mosquitto.conf").read_text())
    assert f"certfile {secured.data_dir / 'certs' / 'server.pem'}" in config
    worker = secured.worker("tls-1", secured.ca)
    module = lab.root / "add.wasm"
    module.write_bytes(add_wasm())

    def online() -> bool:
        with Client(secured.api, TOKEN, ca=secured.ca) as client:
            return any(w.id == "tls-1" and w.state == "online" for w in client.workers().items)

    wait_until(online, "the worker to join over MQTTS", watch=[worker, secured.manager])
    done = edgeplane(
        lab, "--url", secured.api, "--ca", str(secured.ca), "--token", TOKEN,
        "task", "run", str(module), "add", "2", "3",
    )  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "5"), done.stderr
    # nothing is served in the clear: plain HTTP cannot reach the API
    plain = edgeplane(
        lab, "--url", secured.api.replace("https", "http"), "--token", TOKEN, "task", "list"
    )
    assert plain.returncode == 3, plain.stderr


def test_another_ca_is_refused(lab: Lab, secured: Secured) -> None:
    wrong = certs_init(lab, lab.root / "elsewhere")
    done = edgeplane(
        lab, "--url", secured.api, "--ca", str(wrong), "--token", TOKEN, "task", "list"
    )
    # exit code 3: the CLI cannot reach a server it can trust (docs/tls.md)
    assert done.returncode == 3, done.stderr
    assert "certificate verify failed" in done.stderr
    assert "--ca" in done.stderr
    with pytest.raises(Unavailable, match="certificate verify failed"):
        Client(secured.api, TOKEN, ca=wrong).workers()

    worker = secured.worker("tls-wrong", wrong)
    assert worker.proc is not None
    assert worker.proc.wait(timeout=60) == 3
    assert "certificate verify failed" in worker.tail()


@pytest.mark.parametrize(
    ("flags", "what"),
    [
        (["--host", "0.0.0.0"], "the API would listen on 0.0.0.0 without TLS"),
        (["--broker-host", "0.0.0.0"], "the embedded broker would listen on 0.0.0.0 without TLS"),
    ],
)
def test_nothing_plain_off_loopback_without_insecure(lab: Lab, flags: list[str], what: str) -> None:
    args = ["manager", "--port", str(free_port()), "--store", lab.store]
    done = edgeplane(lab, *args, "--data-dir", str(lab.root / "plain"), *flags)
    assert done.returncode == 2, done.stderr
    assert what in done.stderr and "--insecure" in done.stderr


def test_a_manager_registers_with_its_root_over_mqtts(lab: Lab) -> None:
    root_dir = lab.root / "root"
    ca = certs_init(lab, root_dir)
    port, broker_port = free_port(), free_port()
    (root_dir / "broker").mkdir()
    (root_dir / "broker" / "port").write_text(f"{broker_port}\n")
    root = lab.role(
        "root",
        ["root", "--host", "0.0.0.0", "--broker-host", "0.0.0.0", "--port", str(port),
         "--store", f"sqlite:///{lab.root / 'root.db'}", "--data-dir", str(root_dir)],
    ).start()  # fmt: skip

    def join_token() -> str | None:  # the root's broker is its own: clusters join it
        try:
            created = httpx.post(
                f"https://127.0.0.1:{port}/api/v1/join-tokens",
                json={"cluster_id": "tls-cluster"},
                headers={"Authorization": f"Bearer {TOKEN}"},
                verify=ssl.create_default_context(cafile=str(ca)),
            )
        except httpx.HTTPError:
            return None
        return str(created.json()["token"]) if created.status_code == 201 else None

    token = wait_until(join_token, "the root's API", watch=[root])
    manager = lab.role(
        "cluster",
        ["manager", "--cluster-id", "tls-cluster", "--root", f"mqtts://127.0.0.1:{broker_port}",
         "--join", token, "--ca", str(ca), "--port", str(free_port()), "--store", lab.store,
         "--data-dir", str(lab.root / "cluster")],
    ).start()  # fmt: skip

    def registered() -> bool:
        try:
            with Client(f"https://127.0.0.1:{port}", TOKEN, ca=ca) as client:
                clusters = client.clusters().items
        except Unavailable:
            return False
        return any(c.id == "tls-cluster" and c.state == "online" for c in clusters)

    wait_until(registered, "the cluster to register over MQTTS", watch=[root, manager])
