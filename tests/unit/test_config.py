"""Settings precedence: flags > env > file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeplane.config import Settings, load
from edgeplane.errors import Invalid


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEPLANE_PORT", raising=False)
    settings = load({})
    assert settings.port == 7070 and settings.workers == 2 and settings.heartbeat_s == 5.0
    assert settings.store_url.startswith("sqlite:///")


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("port: 8000\nworkers: 5\nheartbeat-s: 2\n")
    monkeypatch.setenv("EDGEPLANE_WORKERS", "7")
    settings = load({"heartbeat_s": 1.0, "port": None}, config)
    assert settings.port == 8000  # file
    assert settings.workers == 7  # env beats file
    assert settings.heartbeat_s == 1.0  # flag beats file


def test_containers_on_by_default_and_env_turns_them_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEPLANE_CONTAINERS", raising=False)
    monkeypatch.delenv("EDGEPLANE_IMAGES_DIR", raising=False)
    assert (load({}).containers, load({}).images_dir) == (True, None)
    monkeypatch.setenv("EDGEPLANE_CONTAINERS", "false")
    monkeypatch.setenv("EDGEPLANE_IMAGES_DIR", str(tmp_path))
    settings = load({})
    assert (settings.containers, settings.images_dir) == (False, tmp_path)
    assert load({"containers": True}).containers is True  # a flag beats env


def test_bad_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("- a list\n")
    with pytest.raises(Invalid):
        load({}, config)
    with pytest.raises(Invalid):
        load({}, tmp_path / "missing.yaml")


def test_a_workers_network_settings_are_checked() -> None:
    """The host port range and the bridge's subnet and name (docs/services.md)."""
    from pydantic import ValidationError

    settings = Settings(service_ports="30000-30099", bridge="br-x", bridge_subnet="10.9.0.0/28")
    assert settings.service_port_range == (30000, 30099)
    assert (Settings().nft_table, settings.nft_table) == ("edgeplane", "edgeplane_br_x")
    for bad in (
        {"service_ports": "30099-30000"},
        {"service_ports": "0-10"},
        {"service_ports": "80"},
        {"service_ports": "1-70000"},
        {"bridge_subnet": "10.9.0.0/31"},
        {"bridge_subnet": "not a subnet"},
        {"bridge": "a-bridge-name-too-long"},
        {"advertise_address": "evil host"},
    ):
        with pytest.raises(ValidationError) as caught:
            Settings(**bad)
        assert caught.value.errors()[0]["loc"] == (next(iter(bad)),)


def test_the_chute_network_defaults_are_the_networks() -> None:
    from edgeplane.chutes import network

    defaults = Settings()
    assert defaults.bridge == network.DEFAULT_BRIDGE
    assert defaults.bridge_subnet == network.DEFAULT_SUBNET
    assert defaults.nft_table == network.DEFAULT_TABLE
