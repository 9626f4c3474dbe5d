"""The capability handshake: probes against fake device trees and a fake PATH."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from edgeplane.model import Location
from edgeplane.worker import capabilities
from edgeplane.worker.capabilities import (
    detect,
    detect_accelerators,
    detect_devices,
    detect_engines,
    detect_tee,
    location_from,
    reachable,
)


def touch(root: Path, *paths: str) -> Path:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).touch()
    return root


def stubs(directory: Path, *names: str, executable: bool = True) -> str:
    """A PATH directory holding stub programs; returns it as a PATH string."""
    directory.mkdir(exist_ok=True)
    for name in names:
        stub = directory / name
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755 if executable else 0o644)
    return str(directory)


def test_devices_lists_sensor_paths_sorted_and_ignores_the_rest(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "dev/video0",
        "dev/ttyUSB1",
        "dev/ttyUSB0",
        "dev/ttyACM0",
        "dev/i2c-1",
        "dev/spidev0.0",
        "dev/gpiochip0",
        "sys/bus/w1/devices/28-0316a2797aff/w1_slave",
        # not sensors: consoles, UART, other 1-wire families, sound without a card
        "dev/tty0",
        "dev/ttyS0",
        "dev/null",
        "sys/bus/w1/devices/w1_bus_master1/name",
        "sys/bus/w1/devices/10-000802b6a2d5/w1_slave",
        "dev/snd/seq",
        "dev/snd/timer",
    )
    assert detect_devices(tmp_path) == [
        "/dev/gpiochip0",
        "/dev/i2c-1",
        "/dev/spidev0.0",
        "/dev/ttyACM0",
        "/dev/ttyUSB0",
        "/dev/ttyUSB1",
        "/dev/video0",
        "/sys/bus/w1/devices/28-0316a2797aff",
    ]


def test_sound_is_listed_once_as_its_directory_when_a_card_is_there(tmp_path: Path) -> None:
    touch(tmp_path, "dev/snd/controlC0", "dev/snd/controlC1", "dev/snd/pcmC0D0p", "dev/snd/seq")
    assert detect_devices(tmp_path) == ["/dev/snd"]


def test_an_empty_machine_has_no_devices_accelerators_or_tee(tmp_path: Path) -> None:
    empty = str(tmp_path / "bin")
    assert detect_devices(tmp_path) == []
    assert detect_accelerators(tmp_path, empty) == []
    assert detect_tee(tmp_path) == []
    assert detect_engines(empty) == []


@pytest.mark.parametrize(
    ("node", "kind"),
    [
        ("dev/nvidia0", "nvidia"),
        ("dev/dri/renderD128", "gpu"),
        ("dev/apex_0", "edgetpu"),
        ("dev/accel/accel0", "npu"),
        ("dev/accel0", "npu"),
    ],
)
def test_accelerator_nodes(tmp_path: Path, node: str, kind: str) -> None:
    touch(tmp_path, node)
    assert detect_accelerators(tmp_path, str(tmp_path / "bin")) == [kind]


def test_nvidia_control_nodes_alone_are_no_gpu(tmp_path: Path) -> None:
    touch(tmp_path, "dev/nvidiactl", "dev/nvidia-uvm", "dev/dri/card0")
    assert detect_accelerators(tmp_path, str(tmp_path / "bin")) == []


def test_nvidia_smi_on_path_means_nvidia(tmp_path: Path) -> None:
    path = stubs(tmp_path / "bin", "nvidia-smi")
    touch(tmp_path, "dev/nvidia0", "dev/dri/renderD128", "dev/apex_0")
    assert detect_accelerators(tmp_path, path) == ["edgetpu", "gpu", "nvidia"]
    assert detect_accelerators(tmp_path / "nothing", path) == ["nvidia"]


def test_engines_are_the_executables_found_across_path(tmp_path: Path) -> None:
    first = stubs(tmp_path / "a", "runc", "ops", "qemu-system-aarch64", "wasmtime")
    second = stubs(tmp_path / "b", "docker", "kraft")
    stubs(tmp_path / "b", "podman", executable=False)
    (tmp_path / "b" / "crun").mkdir()
    path = os.pathsep.join([first, second, str(tmp_path / "missing")])
    assert detect_engines(path) == ["docker", "kraft", "ops", "qemu-system-aarch64", "runc"]


@pytest.mark.parametrize(
    ("node", "kind"),
    [
        ("dev/sgx_enclave", "sgx"),
        ("dev/sgx/enclave", "sgx"),
        ("dev/sev", "sev"),
        ("dev/sev-guest", "sev"),
        ("dev/tdx_guest", "tdx"),
        ("dev/tdx-guest", "tdx"),
        ("dev/tee0", "trustzone"),
    ],
)
def test_tee_nodes(tmp_path: Path, node: str, kind: str) -> None:
    assert detect_tee(touch(tmp_path, node)) == [kind]


@pytest.mark.parametrize(("value", "found"), [("Y\n", ["sev"]), ("1\n", ["sev"]), ("N\n", [])])
def test_sev_from_the_kvm_amd_parameter(tmp_path: Path, value: str, found: list[str]) -> None:
    parameter = touch(tmp_path, "sys/module/kvm_amd/parameters/sev") / (
        "sys/module/kvm_amd/parameters/sev"
    )
    parameter.write_text(value)
    assert detect_tee(tmp_path) == found


def test_every_tee_at_once_is_listed_once_each(tmp_path: Path) -> None:
    touch(tmp_path, "dev/sgx_enclave", "dev/sgx/enclave", "dev/sev", "dev/tdx_guest", "dev/tee0")
    (tmp_path / "sys/module/kvm_amd/parameters").mkdir(parents=True)
    (tmp_path / "sys/module/kvm_amd/parameters/sev").write_text("Y\n")
    assert detect_tee(tmp_path) == ["sev", "sgx", "tdx", "trustzone"]


def test_location_from_lat_lon_labels() -> None:
    assert location_from({"lat": "52.52", "lon": "13.405", "site": "b"}) == Location(
        lat=52.52, lon=13.405
    )
    assert location_from({"site": "b"}) is None


@pytest.mark.parametrize(
    "labels",
    [
        {"lat": "52.5"},
        {"lat": "north", "lon": "13"},
        {"lat": "91", "lon": "0"},
        {"lat": "nan", "lon": "0"},
    ],
)
def test_a_bad_location_is_logged_and_left_out(
    labels: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=capabilities.__name__):
        assert location_from(labels) is None
    assert [r.getMessage() for r in caplog.records] == ["labels lat/lon are not a location"]


def test_reachable_addresses_drop_loopback_link_local_and_junk() -> None:
    found = reachable(
        [
            "fe80::1%eth0",
            "2001:db8::7",
            "127.0.0.1",
            "::1",
            "10.0.0.9",
            "169.254.3.4",
            "192.168.1.5",
            "10.0.0.9",
            "0.0.0.0",
            "not-an-ip",
        ]
    )
    assert found == ["10.0.0.9", "192.168.1.5", "2001:db8::7"]


def test_detect_fills_the_handshake_from_the_probes(tmp_path: Path) -> None:
    root = touch(tmp_path / "root", "dev/ttyUSB0", "dev/dri/renderD128", "dev/tee0")
    path = stubs(tmp_path / "bin", "crun", "firecracker")
    caps = detect(
        runtimes={"wasm": object(), "host": object()},
        labels={"site": "a", "lat": "48.1", "lon": "11.6"},
        slots=3,
        data_dir=tmp_path,
        root=root,
        path=path,
    )
    assert caps.devices == ["/dev/ttyUSB0"]
    assert caps.accelerators == ["gpu"]
    assert caps.tee == ["trustzone"]
    assert caps.engines == ["crun", "firecracker"]
    assert caps.runtimes == ["host", "wasm"]  # what it can run, not what is installed
    assert caps.location == Location(lat=48.1, lon=11.6)
    assert caps.labels == {"site": "a", "lat": "48.1", "lon": "11.6"}
    assert caps.slots == 3


def test_detect_probes_devices_again_but_tee_only_once(tmp_path: Path) -> None:
    root, path = tmp_path / "root", str(tmp_path / "bin")
    first = detect(runtimes=[], labels={}, slots=1, data_dir=tmp_path, root=root, path=path)
    touch(root, "dev/ttyACM0", "dev/sgx_enclave")
    again = detect(runtimes=[], labels={}, slots=1, data_dir=tmp_path, root=root, path=path)
    assert (first.devices, again.devices) == ([], ["/dev/ttyACM0"])  # hot-plugged sensor
    assert first.tee == again.tee == []  # TEE hardware is fixed for the process


def test_detect_on_this_machine_is_sane(tmp_path: Path) -> None:
    caps = detect(runtimes=["wasm", "host"], labels={}, slots=2, data_dir=tmp_path)
    assert caps.hostname
    assert caps.cpus >= 1
    assert caps.memory_mb > 0
    assert caps.disk_mb > 0
    assert caps.arch and caps.os
    assert caps.runtimes == ["host", "wasm"]
    assert caps.location is None
    assert all(p.startswith("/") for p in caps.devices)
    assert set(caps.engines) <= set(capabilities.ENGINES)


def test_the_advertised_address_is_one_the_machine_has() -> None:
    """What a worker's published ports are shown at by default: the address its default
    route leaves from, else a reachable one, else loopback."""
    import ipaddress

    from edgeplane.worker.capabilities import _addresses, address

    found = address()
    ip = ipaddress.ip_address(found)
    mine = _addresses()
    assert found in mine if mine else found == "127.0.0.1"
    assert not ip.is_link_local and not ip.is_unspecified


def test_a_bridge_is_unusable_when_its_name_is_another_interface_or_its_subnet_taken(
    tmp_path: Path,
) -> None:
    """Checked without touching the node: the name in /sys/class/net, the subnet against
    every other interface's addresses (loopback's 127.0.0.1 here)."""
    from edgeplane.chutes.network import NodeNetwork

    sys_net = tmp_path / "sys"
    (sys_net / "eptaken0").mkdir(parents=True)
    (sys_net / "eptbr0" / "bridge").mkdir(parents=True)
    net = NodeNetwork(tmp_path / "a", bridge="eptaken0", subnet="198.51.100.0/24")
    assert net.unusable(sys_net) == (
        "interface eptaken0 exists and is not a bridge (EDGEPLANE_BRIDGE)"
    )
    ours = NodeNetwork(tmp_path / "b", bridge="eptbr0", subnet="198.51.100.0/24")
    assert ours.unusable(sys_net) is None  # a bridge already: the worker's own
    absent = NodeNetwork(tmp_path / "c", bridge="eptnew0", subnet="198.51.100.0/24")
    assert absent.unusable(sys_net) is None  # made at the first attach
    clash = NodeNetwork(tmp_path / "d", bridge="eptnew0", subnet="127.0.0.0/24")
    why = clash.unusable(sys_net)
    assert why is not None and "holds" in why and "127.0.0.1" in why, why
