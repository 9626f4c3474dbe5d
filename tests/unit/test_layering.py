"""Which parts of edgeplane may import which: the control plane never imports a runtime
(it only admits and places work; wasm module checks and image references live in
``edgeplane/modules.py`` and ``edgeplane/imageref.py``), and runtimes never import the
MQTT protocol (they are given a ``RunSpec``)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import edgeplane

SRC = Path(edgeplane.__file__).parent
#: the control plane: what ``edgeplane manager`` and ``edgeplane root`` run
CONTROL_PLANE = [
    *sorted((SRC / "manager").rglob("*.py")),
    *sorted((SRC / "api").rglob("*.py")),
    *sorted((SRC / "root").rglob("*.py")),
    SRC / "roles" / "control.py",
    SRC / "roles" / "root.py",
    SRC / "roles" / "manager.py",
]
RUNTIMES = sorted((SRC / "runtimes").rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module an ``import`` anywhere in the file names (also inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the file's package
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def under(names: set[str], package: str) -> list[str]:
    return sorted(n for n in names if n == package or n.startswith(package + "."))


@pytest.mark.parametrize("path", CONTROL_PLANE, ids=module_name)
def test_the_control_plane_imports_no_runtime(path: Path) -> None:
    assert under(imported(path), "edgeplane.runtimes") == []


@pytest.mark.parametrize("path", RUNTIMES, ids=module_name)
def test_runtimes_import_no_protocol(path: Path) -> None:
    assert under(imported(path), "edgeplane.protocol") == []


def loaded_after_importing(modules: list[str]) -> list[str]:
    """The edgeplane modules a fresh interpreter holds after importing ``modules``."""
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('edgeplane'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def test_nothing_the_control_plane_imports_loads_a_runtime() -> None:
    """Also through other modules: e.g. a role importing a name from ``roles/up.py``,
    which builds workers."""
    loaded = loaded_after_importing([module_name(path) for path in CONTROL_PLANE])
    assert "edgeplane.manager.service" in loaded  # it did import the control plane
    assert under(set(loaded), "edgeplane.runtimes") == []


def test_nothing_the_runtimes_import_loads_the_protocol() -> None:
    loaded = loaded_after_importing(["edgeplane.runtimes"])
    assert "edgeplane.runtimes.wasm" in loaded
    assert under(set(loaded), "edgeplane.protocol") == []
