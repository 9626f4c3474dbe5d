"""Chute networking and resources without touching the machine: the runc spec's netns,
mounts and cpuset, the nft table as written, the resource policy's fields."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgeplane.chutes.network import NodeNetwork, PortMap
from edgeplane.chutes.resources import Resources
from edgeplane.errors import Invalid, TaskFailure
from edgeplane.runtimes.bundle import runtime_config
from edgeplane.runtimes.images import Image

IMAGE = Image(ref="busybox", layout=Path("/x"), digest="sha256:" + "0" * 64, layers=())


def config(**extra: object) -> dict[str, object]:
    return runtime_config(
        cid="c",
        rootfs=Path("/r"),
        image=IMAGE,
        command=["true"],
        env={},
        limits=Resources(cpu_shares=512, memory_mb=64).limits(),
        **extra,  # type: ignore[arg-type]
    )


def test_runc_spec_joins_the_chutes_netns_with_its_names_disk_and_cpuset() -> None:
    found = config(
        netns="/var/run/netns/ep-a-web",
        hosts_file="/d/hosts/a",
        binds={"/data": "/d/disk/a"},
        cpus="0",
    )
    linux = found["linux"]
    assert isinstance(linux, dict)
    assert {"type": "network", "path": "/var/run/netns/ep-a-web"} in linux["namespaces"]
    assert linux["resources"]["cpu"] == {"shares": 512, "cpus": "0"}
    mounts = {m["destination"]: m for m in found["mounts"]}  # type: ignore[attr-defined]
    assert mounts["/etc/hosts"]["source"] == "/d/hosts/a"
    assert "ro" in mounts["/etc/hosts"]["options"]
    assert mounts["/data"]["source"] == "/d/disk/a" and "rw" in mounts["/data"]["options"]


def test_runc_spec_defaults_to_a_new_empty_netns_and_refuses_bad_input() -> None:
    linux = config()["linux"]
    assert isinstance(linux, dict)
    assert {"type": "network"} in linux["namespaces"]
    with pytest.raises(TaskFailure, match="cpuset"):
        config(cpus="0; rm")
    with pytest.raises(TaskFailure, match="absolute path"):
        config(binds={"../etc": "/x"})


def test_resources_defaults_and_unknown_keys() -> None:
    found = Resources()
    assert (found.cpu_shares, found.disk_mb, found.memory_mb) == (1024, 1024, None)
    assert found.limits().cpu_shares == 1024
    with pytest.raises(ValidationError, match="disk_gb"):
        Resources.model_validate({"disk_gb": 1})
    with pytest.raises(ValidationError, match="upstream"):
        Resources.model_validate({"bandwidth_kbit": {"upstream": 10}})


def test_nft_table_is_ours_alone(tmp_path: Path) -> None:
    net = NodeNetwork(tmp_path, bridge="ep-br0", subnet="10.77.0.0/24", table="edgeplane")
    assert net.gateway == "10.77.0.1"
    script = net.ruleset()
    # every statement names our table; nothing flushes the ruleset or another table
    assert "flush ruleset" not in script
    tables = [line for line in script.splitlines() if "table" in line]
    assert tables and all("table ip edgeplane" in line for line in tables)


def test_bad_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="bridge"):
        NodeNetwork(tmp_path, bridge="a-bridge-name-too-long")
    with pytest.raises(Invalid, match="subnet"):
        NodeNetwork(tmp_path, subnet="10.77.0.0/31")
    net = NodeNetwork(tmp_path)
    with pytest.raises(Invalid, match="chute"):
        net.attach("../etc", "web")
    with pytest.raises(ValidationError):
        PortMap(node_port=0, port=80)
