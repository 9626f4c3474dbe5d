"""The Mosquitto bridge config a cluster prints (manager/bridge.py): the repo's template,
filled in, carrying exactly what the root's ACL lets the cluster read and write."""

from __future__ import annotations

from pathlib import Path

from edgeplane.manager.bridge import SYSTEM_CA_PATH, TEMPLATE, render
from edgeplane.security.broker_auth import CLUSTER_LEAVES
from edgeplane.security.joining import Identity

DEPLOYED = Path(__file__).resolve().parents[2] / "deploy/brokers/mosquitto-bridge/bridge.conf"
BERLIN = Identity("berlin", "berlin", "s3cret", b"k" * 32)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_deployed_template_is_the_one_printed() -> None:
    assert DEPLOYED.read_text() == TEMPLATE


def test_a_plain_root() -> None:
    config = render(BERLIN, "mqtt://root.example:1883", "acme", None)
    assert "$" not in config
    got = lines(config)
    assert got[:2] == ["connection edgeplane-acme-berlin", "address root.example:1883"]
    assert "remote_username berlin" in got and "remote_password s3cret" in got
    assert not any(line.startswith("bridge_ca") for line in got)
    topics = {tuple(line.split()[1:]) for line in got if line.startswith("topic ")}
    # what the root's ACL lets a cluster read, and write: nothing more, nothing less
    assert topics == {
        ("acme/clusters/berlin/cmd", "in", "1"),
        ("acme/clusters/berlin/welcome", "in", "1"),
        *((f"acme/clusters/berlin/{leaf}", "out", "1") for leaf in CLUSTER_LEAVES),
    }


def test_a_root_over_tls() -> None:
    own_ca = lines(render(BERLIN, "mqtts://root.example", "acme", Path("/etc/ca.pem")))
    assert "address root.example:8883" in own_ca and "bridge_cafile /etc/ca.pem" in own_ca
    system = lines(render(BERLIN, "mqtts://root.example:9883", "acme", None))
    assert f"bridge_capath {SYSTEM_CA_PATH}" in system
