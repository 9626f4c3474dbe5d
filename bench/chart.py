"""The suite's figures as one PNG: throughput and latency, edgeplane beside its peers.

matplotlib is installed by the benchmark when missing (never a dependency of the package)
and imported only here, so the rest of the suite does not need it.

    python -m bench.chart [--json bench/results/suite.json] [--out docs/bench-suite.png]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.peers import ensure_installed

DESCRIPTION = __doc__.split("\n\n")[0] if __doc__ else ""
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench" / "results" / "suite.json"
DEFAULT_OUT = ROOT / "docs" / "bench-suite.png"
PERCENTILES = ("p50 ms", "p95 ms", "p99 ms")
#: edgeplane in blues, the peers in warm greys: the comparison reads at a glance.
COLOURS = {
    "edgeplane": ("#1f4e9c", "#5b8bd9", "#3f7fbf", "#8fb4e3", "#2c6e9e", "#a9c8ec"),
    "peer": ("#b0563a", "#8c8c8c"),
}
SHADES = ("#9ecae1", "#4292c6", "#08519c")


def ensure_matplotlib() -> None:
    ensure_installed(("matplotlib",), ("matplotlib",), "matplotlib for the benchmark chart")


def _colours(systems: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for system in systems:
        palette = COLOURS[system["kind"]]
        n = seen[system["kind"]] = seen.get(system["kind"], -1) + 1
        out.append(palette[n % len(palette)])
    return out


def _label(system: Mapping[str, Any]) -> str:
    """Name over version; "edgeplane wasm" on two lines so neighbours' labels do not meet."""
    name = str(system["name"]).replace("edgeplane ", "edgeplane\n")
    return f"{name}\n{system['version']}"


def draw(suite: Mapping[str, Any], out: Path) -> Path:
    """Write the two-panel chart of ``suite`` (the JSON ``bench.suite`` writes) to ``out``."""
    ensure_matplotlib()
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")  # files only: no display on a benchmark box
    plt: Any = importlib.import_module("matplotlib.pyplot")
    systems = list(suite["systems"])
    labels = [_label(s) for s in systems]
    # a column per broker adds bars: widen rather than let the labels meet
    fig_width = max(13.0, 1.5 * len(systems))
    fig, (left, right) = plt.subplots(1, 2, figsize=(fig_width, 5.2), layout="constrained")

    got = [s["throughput"].get("tasks/s") for s in systems]
    medians = [g["median"] if g else 0.0 for g in got]
    lows = [g["median"] - g["min"] if g else 0.0 for g in got]
    highs = [g["max"] - g["median"] if g else 0.0 for g in got]
    xs = range(len(systems))
    bars = left.bar(xs, medians, color=_colours(systems), yerr=[lows, highs], capsize=6)
    left.bar_label(bars, labels=[f"{m:,.0f}" if m else "n/a" for m in medians], padding=3)
    left.set_xticks(list(xs), labels)
    left.set_ylabel("tasks/s (median; whiskers min-max)")
    plan = suite["plan"]
    left.set_title(f"Throughput: {plan['repetitions']} x {plan['tasks']:,} no-op tasks")
    left.margins(y=0.15)

    width = 0.8 / len(PERCENTILES)
    for i, name in enumerate(PERCENTILES):
        values = [s["latency"].get(name, 0.0) for s in systems]
        offsets = [x + (i - (len(PERCENTILES) - 1) / 2) * width for x in xs]
        group = right.bar(offsets, values, width, label=name.removesuffix(" ms"), color=SHADES[i])
        shown = [f"{v:.1f}" if v else "n/a" for v in values]
        right.bar_label(group, labels=shown, fontsize=7, padding=2)
    right.set_xticks(list(xs), labels)
    right.set_ylabel("ms, submit → result")
    right.set_title(f"Latency, one task at a time ({plan['latency']:,} samples)")
    right.legend()
    right.margins(y=0.15)

    m = suite["machine"]
    fig.suptitle(
        f"edgeplane {m['edgeplane']} vs Celery and Dramatiq on Redis, same run,"
        f" {suite['worker_processes']} worker processes each; {m['nproc']} cpus,"
        f" load average {m['loadavg_1m_at_start']} → {m.get('loadavg_1m_at_end', '?')}",
        fontsize=10,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chart", description=DESCRIPTION)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="FILE")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="FILE")
    args = parser.parse_args(argv)
    print(f"wrote {draw(json.loads(args.json.read_text()), args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
