"""``edgeplane fl run|list|get|stop|model``: federated learning experiments (docs/fl.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgeplane.cli.options import LimitOption, OffsetOption
from edgeplane.cli.output import Format, OutputOption, echo, note, print_json, print_table, session
from edgeplane.cli.specfile import parse
from edgeplane.errors import Invalid

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(help="Federated learning: experiments of training rounds.", no_args_is_help=True)

IdArgument = Annotated[str, typer.Argument(metavar="ID", help="Experiment id.")]
#: How often ``run --wait`` asks how the experiment is doing.
POLL_S = 1.0
#: A spec file is small: names, numbers and a task body.
MAX_SPEC_BYTES = 1024 * 1024


@app.command("run")
def run(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="The experiment, YAML or JSON; a path given as its initial_model is "
            "read relative to it.",
        ),
    ],
    wait: Annotated[
        bool, typer.Option("--wait", help="Show the rounds live; exit 0 once it completed.")
    ] = False,
    output: OutputOption = None,
) -> None:
    """Start an experiment (prints its id); with --wait, follow it to its end."""
    s = session(ctx)
    try:
        if file.stat().st_size > MAX_SPEC_BYTES:
            raise Invalid(f"{file} is over {MAX_SPEC_BYTES // 1024} KiB: not an experiment")
    except OSError as exc:
        raise Invalid(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise Invalid(f"{file} is not a text file (UTF-8 YAML or JSON)") from None
    doc = parse(file, text)
    if not isinstance(doc, dict):
        raise Invalid(f"{file}: expected a mapping (name, workload, rounds, …)")
    if isinstance(doc.get("initial_model"), str):
        # a file of the user's, beside the experiment file unless the path is absolute
        doc["initial_model"] = file.parent / doc["initial_model"]
    client = s.client()
    exp = client.fl_create(doc)
    fmt = s.format(output)
    if not wait:
        print_json(exp) if fmt is Format.json else echo(exp["id"])
        return
    note(f"experiment {exp['id']} ({exp['name']}) started")
    exp = _follow(lambda: client.fl_experiment(exp["id"]), fmt)
    if fmt is Format.json:
        print_json(exp)
    else:
        last = _last_metrics(exp)
        echo(
            f"{exp['state']}: model version {exp['model_version']}"
            + "".join(f", {k} {v:.4f}" for k, v in last.items())
        )
    if exp["state"] != "completed":
        if exp.get("reason"):
            note(exp["reason"])
        raise typer.Exit(1)


def _follow(get: Any, fmt: Format) -> dict[str, Any]:
    import sys

    from rich.console import Console
    from rich.live import Live

    exp: dict[str, Any] = get()
    live = sys.stderr.isatty() and fmt is not Format.json
    if not live:
        while exp["state"] == "running":
            time.sleep(POLL_S)
            exp = get()
        return exp
    with Live(_table(exp), console=Console(stderr=True), refresh_per_second=4) as view:
        while exp["state"] == "running":
            time.sleep(POLL_S)
            exp = get()
            view.update(_table(exp))
    return exp


def _table(exp: dict[str, Any]) -> Table:
    from rich.table import Table

    table = Table(title=f"{exp['name']} ({exp['state']}, round {exp['round']})")
    for column in (
        "round",
        "attempt",
        "state",
        "clients",
        "updates",
        "rejected",
        "accuracy",
        "loss",
    ):
        table.add_column(column)
    for r in exp["rounds"]:
        m = r.get("metrics") or {}
        table.add_row(
            str(r["round"]),
            str(r.get("attempt", 0)),
            r.get("state", ""),
            str(len(r["clients"])),
            str(r["updates"]),
            str(sum((r.get("rejected") or {}).values())),
            f"{m['accuracy']:.4f}" if "accuracy" in m else "",
            f"{m['loss']:.4f}" if "loss" in m else "",
        )
    return table


def _last_metrics(exp: dict[str, Any]) -> dict[str, float]:
    for r in reversed(exp["rounds"]):
        if r.get("metrics"):
            return dict(r["metrics"])
    return {}


@app.command("example")
def example() -> None:
    """Print the digits example (examples/fl/digits.yaml of a checkout), for an install:
    ``edgeplane fl example > digits.yaml``."""
    from importlib.resources import files

    typer.echo((files("edgeplane.examples") / "fl" / "digits.yaml").read_text(), nl=False)


@app.command("list")
def list_(
    ctx: typer.Context,
    limit: LimitOption = 100,
    offset: OffsetOption = 0,
    output: OutputOption = None,
) -> None:
    """List experiments."""
    s = session(ctx)
    page = s.client().fl_experiments(limit=limit, offset=offset)
    if s.format(output) is Format.json:
        print_json(page)
        return
    print_table(
        ["id", "name", "state", "round", "model version", "accuracy"],
        (
            [
                e["id"],
                e["name"],
                e["state"],
                e["round"],
                e["model_version"],
                _last_metrics(e).get("accuracy"),
            ]
            for e in page["items"]
        ),
    )


@app.command("get")
def get(ctx: typer.Context, experiment_id: IdArgument, output: OutputOption = None) -> None:
    """An experiment, its rounds and their metrics."""
    s = session(ctx)
    exp = s.client().fl_experiment(experiment_id)
    if s.format(output) is Format.json:
        print_json(exp)
        return
    from rich.console import Console

    Console(highlight=False).print(_table(exp))


@app.command("stop")
def stop(ctx: typer.Context, experiment_id: IdArgument) -> None:
    """Stop an experiment (its round's training tasks are cancelled)."""
    exp = session(ctx).client().fl_stop(experiment_id)
    echo(f"{exp['id']} {exp['state']}")


@app.command("delete")
def delete(ctx: typer.Context, experiment_id: IdArgument) -> None:
    """Delete an ended experiment, its model versions and its stored updates (a running
    one: stop it first)."""
    session(ctx).client().fl_delete(experiment_id)
    echo(f"{experiment_id} deleted")


@app.command("model")
def model(
    ctx: typer.Context,
    experiment_id: IdArgument,
    out: Annotated[Path, typer.Option("-o", "--output-file", help="Where to write it.")],
    version: Annotated[
        int | None, typer.Option("--version", min=0, help="Model version (default: the newest).")
    ] = None,
) -> None:
    """Save a global model version (raw f32 with a JSON header line; docs/fl.md)."""
    body = session(ctx).client().fl_model(experiment_id, version)
    try:
        out.write_bytes(body)
    except OSError as exc:
        raise Invalid(f"cannot write {out}: {exc.strerror or exc}") from None
    note(f"{len(body)} bytes written to {out}")
