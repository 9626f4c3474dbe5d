"""The Mosquitto bridge config a cluster prints (manager/bridge.py): the repo's template,
filled in, carrying exactly what the root's ACL lets the cluster read and write."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeplane.config import Settings
from edgeplane.errors import Invalid
from edgeplane.manager.bridge import SYSTEM_CA_PATH, TEMPLATE, render
from edgeplane.manager.uplink import root_identity
from edgeplane.security import joining
from edgeplane.security.broker_auth import CLUSTER_LEAVES
from edgeplane.security.joining import Identity
from edgeplane.transport import without_credentials

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
        *(
            (f"acme/clusters/berlin/{leaf}", "out", "0" if leaf == "metrics" else "1")
            for leaf in CLUSTER_LEAVES
        ),
    }


def test_a_root_over_tls() -> None:
    own_ca = lines(render(BERLIN, "mqtts://root.example", "acme", Path("/etc/ca.pem")))
    assert "address root.example:8883" in own_ca and "bridge_cafile /etc/ca.pem" in own_ca
    system = lines(render(BERLIN, "mqtts://root.example:9883", "acme", None))
    assert f"bridge_capath {SYSTEM_CA_PATH}" in system


async def test_a_shared_identity_file_is_read_instead_of_the_data_dir(tmp_path: Path) -> None:
    """``--root-credentials``: several managers of one cluster read one identity, made by
    one join elsewhere; a missing file or another cluster's is an error, never a join."""
    shared = tmp_path / "shared" / "berlin.json"
    joining.save(shared.parent, BERLIN)
    (shared.parent / joining.CREDENTIALS_FILE).rename(shared)
    settings = Settings(cluster_id="berlin", data_dir=tmp_path / "data", root_credentials=shared)
    found = await root_identity(settings, "mqtt://root:1883")
    assert found is not None and found.password == "s3cret"
    assert not (tmp_path / "data" / "uplink").exists()
    with pytest.raises(Invalid, match="does not exist"):
        await root_identity(
            settings.model_copy(update={"root_credentials": tmp_path / "nope.json",
                                        "join_token": "epj_x_y"}),
            "mqtt://root:1883",
        )  # fmt: skip
    with pytest.raises(Invalid, match="berlin's identity"):
        await root_identity(settings.model_copy(update={"cluster_id": "paris"}), "")


def test_a_broker_url_is_shown_without_its_password() -> None:
    """A shared broker's URL carries a password (the chart's managers[].replicas): the
    root's cluster document and the startup line show it without."""
    assert without_credentials("mqtts://edgeplane:s3cret@broker:8883") == "mqtts://broker:8883"
    assert without_credentials("mqtt://user@b") == "mqtt://b"
    assert without_credentials("mqtt://b:1883") == "mqtt://b:1883"
