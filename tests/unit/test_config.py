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


def test_the_chute_network_defaults_are_the_networks() -> None:
    from edgeplane.chutes import network

    defaults = Settings()
    assert defaults.chute_bridge == network.DEFAULT_BRIDGE
    assert defaults.chute_subnet == network.DEFAULT_SUBNET
    assert defaults.chute_table == network.DEFAULT_TABLE
