"""What the deployment kit's tests share (tests/deploy): where deploy/ is, its tools, and
`edgeplane` run as a command."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from helm_python import Chart
from typer.testing import CliRunner, Result

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CHART = DEPLOY / "helm" / "edgeplane"
EDGEPLANE = [sys.executable, "-m", "edgeplane"]


def tool(name: str) -> str:
    """A system tool the kit's tests need: scripts/system-deps.sh installs it, and a missing
    one fails the test (it is never skipped)."""
    found = shutil.which(name) or next(
        (str(p) for d in ("/usr/bin", "/usr/sbin", "/bin") if (p := Path(d, name)).exists()), None
    )
    assert found, f"{name} is missing: run `bash scripts/system-deps.sh` (make deps)"
    return found


def env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments and blanks left)."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def accepts_flags(args: list[str]) -> Result:
    """`edgeplane ARGS --help`, in this process: exit 0 when every flag in ``args`` exists
    (an unknown one is exit 2 even with --help), without running the role."""
    from edgeplane.cli.main import app

    return CliRunner().invoke(app, [*args, "--help"])


def helm(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with Chart.load(CHART) as chart:
        rendered = chart.render(values, name="ep", namespace="edge")
    return [
        doc
        for path, text in rendered.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def notes(values: dict[str, Any] | None = None) -> str:
    """What `helm install` prints (templates/NOTES.txt)."""
    with Chart.load(CHART) as chart:
        rendered = chart.render(values, name="ep", namespace="edge")
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def containers(docs: list[dict[str, Any]], component: str) -> Iterator[dict[str, Any]]:
    for doc in docs:
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]
            if pod["metadata"]["labels"].get("app.kubernetes.io/component") == component:
                yield from pod["spec"]["containers"]


def written(out: str, path: str) -> str:
    """The content --dry-run shows for ``path``."""
    block = out.split(f"+ write {path} ", 1)[1].split("\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if not line.startswith("    ") and line.strip():
            break
        lines.append(line[4:])
    return "\n".join(lines)
