"""docs/api.md, cli.md, configuration.md and mqtt.md are generated from the code
(scripts/gen_docs.py): every route, command, option, setting and topic is in them, and
they cannot drift from it. On a failure: `PYTHONPATH=src python scripts/gen_docs.py`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts/gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_docs"] = module
    spec.loader.exec_module(module)
    return module


def test_the_reference_docs_are_what_the_code_says() -> None:
    gen = _generator()
    stale = [
        name for name, make in gen.PAGES.items() if (ROOT / "docs" / name).read_text() != make()
    ]
    assert not stale, f"out of date: {stale}; run PYTHONPATH=src python scripts/gen_docs.py"


def test_every_setting_and_command_is_documented() -> None:
    from edgeplane.config import ENV_PREFIX, Settings

    configuration = (ROOT / "docs/configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"`{name}`" in configuration and f"`{ENV_PREFIX}{name.upper()}`" in configuration
    gen = _generator()
    import typer

    from edgeplane.cli.main import app

    cli = (ROOT / "docs/cli.md").read_text()
    for path, _ in gen._walk(typer.main.get_command(app), ("edgeplane",)):
        assert f"## `{' '.join(path)}`" in cli
