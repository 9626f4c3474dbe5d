"""docs/brokers.md shows the NATS configuration the broker matrix runs, word for word."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_show_the_tested_nats_config() -> None:
    config = (ROOT / "deploy" / "brokers" / "nats" / "nats.conf").read_text()
    shown = config[config.index("server_name") :]  # all but the header comment
    assert f"```\n{shown}```\n" in (ROOT / "docs" / "brokers.md").read_text()
