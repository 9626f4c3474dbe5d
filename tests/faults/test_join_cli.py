"""`edgeplane worker --join` as an operator runs it, against `edgeplane manager` with its
own locked-down Mosquitto (docs/broker-security.md): the token is used once, the identity
is kept across restarts, and deleting the worker keeps it out."""

from __future__ import annotations

import shutil

import pytest
from procs import Lab, wait_until

from edgeplane.transport import free_port

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed"),
]


def test_worker_joins_once_keeps_its_identity_and_is_cut_off_when_deleted(lab: Lab) -> None:
    port = free_port()
    manager = lab.role(
        "manager",
        ["manager", "--store", lab.store, "--port", str(port),
         "--data-dir", str(lab.root / "manager")],
    )  # fmt: skip
    manager.start()
    api = lab.api(port)
    api.wait_healthy(manager)
    broker = f"mqtt://127.0.0.1:{(lab.root / 'manager' / 'broker' / 'port').read_text().strip()}"
    created = api.http.post("/join-tokens", json={"labels": {"site": "far"}, "ttl_s": 600})
    assert created.status_code == 201, created.text
    argv = ["worker", "--manager", broker, "--worker-id", "edge-1", "--no-containers",
            "--data-dir", str(lab.root / "edge-1")]  # fmt: skip

    # Without a token: connected, but nothing it says passes the broker.
    stranger = lab.role(
        "stranger",
        ["worker", "--manager", broker, "--worker-id", "stranger", "--no-containers",
         "--data-dir", str(lab.root / "stranger")],
    )  # fmt: skip
    stranger.start()

    worker = lab.role("edge-1", argv, lab.env(EDGEPLANE_JOIN_TOKEN=created.json()["token"]))
    worker.start()
    api.wait_workers({"edge-1"}, watch=[worker, manager])
    listed = api.http.get("/workers/edge-1").json()
    assert listed["capabilities"]["labels"] == {"site": "far"}
    kept = lab.root / "edge-1" / "worker" / "credentials.json"
    assert kept.stat().st_mode & 0o777 == 0o600
    assert api.online_workers() == {"edge-1"}  # the stranger is not listed
    assert stranger.running and "joined" not in stranger.tail()

    # Restarted without the token: the kept identity is used.
    worker.stop()
    wait_until(lambda: "edge-1" not in api.online_workers(), "edge-1 to leave")
    again = lab.role("edge-1-again", argv)
    again.start()
    api.wait_workers({"edge-1"}, watch=[again, manager])

    # Deleted: disconnected by the broker and never back.
    assert api.http.delete("/workers/edge-1").status_code == 204
    wait_until(lambda: "not authorized" in again.tail().lower(), "edge-1 to be refused")
    assert "edge-1" not in api.online_workers()
    assert again.running  # it retries (logged), it is not let in


def test_cluster_joins_its_root_once_and_is_cut_off_when_deleted(lab: Lab) -> None:
    """`edgeplane manager --root … --join` against `edgeplane root` with its own
    locked-down Mosquitto: a bad token ends it with exit code 2, a good one registers it
    (and is kept), `DELETE /clusters/{id}` keeps it out."""
    port = free_port()
    root = lab.role(
        "root", ["root", "--store", "memory://", "--port", str(port),
                 "--data-dir", str(lab.root / "root")],
    )  # fmt: skip
    root.start()
    api = lab.api(port)
    api.wait_healthy(root)
    broker = f"mqtt://127.0.0.1:{(lab.root / 'root' / 'broker' / 'port').read_text().strip()}"
    argv = ["manager", "--cluster-id", "berlin", "--root", broker, "--port", "0",
            "--store", "memory://", "--data-dir", str(lab.root / "berlin")]  # fmt: skip

    refused = lab.role("refused", [*argv, "--join", "epj_nope_nope"])
    refused.start()
    assert refused.proc is not None and refused.proc.wait(timeout=60) == 2, refused.tail()
    assert "refused the join token" in refused.tail()

    created = api.http.post("/join-tokens", json={"cluster_id": "berlin"})
    assert created.status_code == 201, created.text
    cluster = lab.role("berlin", argv, lab.env(EDGEPLANE_JOIN_TOKEN=created.json()["token"]))
    cluster.start()

    def state() -> str | None:
        found = api.http.get("/clusters/berlin")
        return found.json()["state"] if found.status_code == 200 else None

    wait_until(lambda: state() == "online", "berlin to register", watch=[cluster, root])
    kept = lab.root / "berlin" / "uplink" / "credentials.json"
    assert kept.stat().st_mode & 0o777 == 0o600

    assert api.http.delete("/clusters/berlin").status_code == 204
    wait_until(lambda: "not authorized" in cluster.tail().lower(), "berlin to be refused")
    assert state() is None and cluster.running  # it retries (logged), it is not let in
