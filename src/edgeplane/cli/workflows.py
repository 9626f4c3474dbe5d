"""``edgeplane workflow …``, and the run view it shares with ``edgeplane job …``.

A run (a job or a workflow) is shown as a tree: the run, then each task with its state,
worker and results or error. ``--wait``/``--watch`` redraw the tree live on a terminal,
from long-polls of at most :data:`WATCH_POLL_S`; off a terminal only the final tree is
printed, so logs and pipes get one clean copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgeplane.cli.options import LimitOption, OffsetOption
from edgeplane.cli.output import (
    Format,
    OutputOption,
    _stdout,
    echo,
    error,
    note,
    print_model,
    print_table,
    session,
    waiting,
    when,
)

if TYPE_CHECKING:
    from rich.tree import Tree

    from edgeplane.cli.specfile import SpecKind
    from edgeplane.client import Client, Progress
    from edgeplane.model import Page, Schedule, Task, Workflow

app = typer.Typer(
    help="Workflows: tasks linked by depends_on and run_if, described in a YAML file.",
    no_args_is_help=True,
)

#: Longest long-poll while a live view is on screen, so it is redrawn at least this often.
WATCH_POLL_S = 2.0
#: Results longer than this are cut in the tree (``--output json`` has them whole).
RESULT_CHARS = 60

_STATE_STYLES = {
    "pending": "dim",
    "scheduled": "cyan",
    "running": "yellow",
    "completed": "green",
    "failed": "bold red",
    "skipped": "magenta",
    "cancelled": "magenta",
}


@dataclass(frozen=True)
class Runs:
    """One kind of run, job or workflow: its name and its client calls."""

    noun: SpecKind
    create: Callable[[Client, dict[str, Any]], Workflow | Schedule]
    get: Callable[[Client, str], Workflow]
    page: Callable[[Client, int, int], Page[Workflow]]
    stop: Callable[[Client, str], Workflow]
    wait: Callable[[Client, str, float | None, Progress | None, float], Workflow]


WORKFLOWS = Runs(
    "workflow",
    create=lambda c, spec: c.create_workflow(spec),
    get=lambda c, run_id: c.workflow(run_id),
    page=lambda c, limit, offset: c.workflows(limit=limit, offset=offset),
    stop=lambda c, run_id: c.stop_workflow(run_id),
    wait=lambda c, run_id, timeout, progress, poll_s: c.wait_workflow(
        run_id, timeout, progress=progress, poll_s=poll_s
    ),
)

FileArgument = Annotated[
    Path, typer.Argument(metavar="FILE", help="YAML or JSON spec; task files relative to it.")
]
TimeoutOption = Annotated[
    float | None,
    typer.Option("--timeout", min=0, help="Stop waiting after S seconds (exit 1); it goes on."),
]


# --- the tree -------------------------------------------------------------------------------


def tree(run: Workflow) -> Tree:
    """The run and each of its tasks, one line each, states coloured."""
    from rich.text import Text
    from rich.tree import Tree

    done = sum(task.terminal for task in run.tasks)
    head = Text()
    head.append(f"{run.kind} {run.id}", style="bold")
    if run.name:
        head.append(f" {run.name}")
    if run.kind == "job":
        head.append(f" ({run.mode})", style="dim")
    head.append("  ")
    head.append(run.state, style=_STATE_STYLES.get(run.state, ""))
    if run.tasks:
        head.append(f"  {done}/{len(run.tasks)} done", style="dim")
    if run.reason:
        head.append(f"  {run.reason}", style="red" if run.state == "failed" else "")
    view = Tree(head, guide_style="dim")
    names = {task_id: name for name, task_id in run.names.items()}
    width = max((len(_label(task)) for task in run.tasks), default=0)
    states = max((len(task.state) for task in run.tasks), default=0)
    for task in run.tasks:
        line = Text()
        line.append(_label(task).ljust(width), style="bold")
        line.append("  ")
        line.append(task.state.ljust(states), style=_STATE_STYLES.get(task.state, ""))
        if task.worker_id:
            line.append(f"  on {task.worker_id}", style="dim")
        if task.depends_on:
            after = ", ".join(names.get(dep, dep) for dep in task.depends_on)
            line.append(f"  after {after}", style="dim")
        if task.error:
            line.append(f"  {task.error}", style="red")
        elif task.results is not None:
            line.append(f"  → {_short(task.results)}")
        view.add(line)
    return view


def _label(task: Task) -> str:
    return task.name or task.id


def _short(value: Any) -> str:
    import orjson

    text = orjson.dumps(value).decode()
    return text if len(text) <= RESULT_CHARS else text[: RESULT_CHARS - 1] + "…"


def show(run: Workflow, fmt: Format) -> None:
    if fmt is Format.json:
        print_model(run)
    else:
        _stdout().print(tree(run))


# --- what job and workflow commands share ---------------------------------------------------


def create(
    ctx: typer.Context,
    runs: Runs,
    file: Path,
    *,
    wait: bool,
    timeout: float | None,
    output: Format | None,
) -> None:
    """Create a run from a spec file: print its id, or wait and print the final tree."""
    from edgeplane.cli.specfile import load_spec
    from edgeplane.model import Schedule

    s = session(ctx)
    fmt = s.format(output)
    spec = load_spec(file, runs.noun)
    client = s.client()
    made = runs.create(client, spec)
    if isinstance(made, Schedule):
        from edgeplane.cli.schedules import print_schedule

        print_schedule(made, fmt)
        if wait:
            note(f"nothing to wait for: the {runs.noun} runs at its scheduled times")
        return
    if wait:
        follow(client, runs, made, timeout, fmt)
    elif fmt is Format.json:
        print_model(made)
    else:
        echo(made.id)


def get(ctx: typer.Context, runs: Runs, run_id: str, *, watch: bool, output: Format | None) -> None:
    s = session(ctx)
    fmt = s.format(output)
    client = s.client()
    run = runs.get(client, run_id)
    if watch:
        follow(client, runs, run, None, fmt)
    else:
        show(run, fmt)


def follow(client: Client, runs: Runs, run: Workflow, timeout: float | None, fmt: Format) -> None:
    """Wait for ``run`` to end and show it; exit 1 unless it completed."""
    from edgeplane.client import WaitTimeout

    try:
        final = _follow(client, runs, run, timeout, fmt)
    except WaitTimeout as exc:
        error(f"{exc.detail}; it goes on (stop it with: edgeplane {runs.noun} stop {run.id})")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        note(f"stopped waiting; {runs.noun} {run.id} goes on")
        raise typer.Exit(130) from None
    if final.state != "completed":
        why = _why(final)
        error(f"{runs.noun} {final.id} {final.state}" + (f": {why}" if why else ""))
        raise typer.Exit(1)


def _follow(
    client: Client, runs: Runs, run: Workflow, timeout: float | None, fmt: Format
) -> Workflow:
    """The run once terminal: redrawn live on a terminal, printed once at the end if not."""
    from edgeplane.client import LONG_POLL_S

    console = _stdout()
    if fmt is Format.table and console.is_terminal:
        from rich.live import Live

        with Live(tree(run), console=console, auto_refresh=False) as live:

            def redraw(latest: Workflow) -> None:
                live.update(tree(latest), refresh=True)

            if run.terminal:
                return run
            return runs.wait(client, run.id, timeout, redraw, WATCH_POLL_S)
    if not run.terminal:
        with waiting(f"waiting for {runs.noun} {run.id}"):
            run = runs.wait(client, run.id, timeout, None, LONG_POLL_S)
    show(run, fmt)
    return run


def _why(run: Workflow) -> str:
    """The run's reason, else the first failed task's error."""
    if run.reason:
        return run.reason
    for task in run.tasks:
        if task.state == "failed":
            return f"{_label(task)}: {task.error or task.reason or 'failed'}"
    return ""


def list_runs(
    ctx: typer.Context, runs: Runs, *, limit: int, offset: int, output: Format | None
) -> None:
    s = session(ctx)
    page = runs.page(s.client(), limit, offset)
    if s.format(output) is Format.json:
        print_model(page)
        return
    jobs = runs.noun == "job"
    columns = ["id", "name", *(["mode"] if jobs else []), "state", "tasks", "created", "finished"]
    print_table(
        columns,
        (
            [
                r.id,
                r.name,
                *([r.mode] if jobs else []),
                r.state,
                len(r.task_ids),
                when(r.created_at),
                when(r.finished_at),
            ]
            for r in page.items
        ),
    )
    if page.total > offset + len(page.items):
        note(f"{len(page.items)} of {page.total} {runs.noun}s shown; more with --offset/--limit")


def stop(ctx: typer.Context, runs: Runs, run_id: str, *, output: Format | None) -> None:
    s = session(ctx)
    run = runs.stop(s.client(), run_id)
    if s.format(output) is Format.json:
        print_model(run)
    else:
        echo(f"{run.id} {run.state}")


# --- edgeplane workflow … -------------------------------------------------------------------

IdArgument = Annotated[str, typer.Argument(metavar="ID", help="Workflow id.")]


@app.command()
def apply(
    ctx: typer.Context,
    file: FileArgument,
    wait: Annotated[bool, typer.Option(help="Wait for the end and show every task.")] = False,
    timeout: TimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Create a workflow from a YAML/JSON file (started unless `start: false`), print its id.

    With --wait, show its tasks live until it ends; exit 1 if it did not complete.
    With `schedule:` in the file it makes a schedule instead and prints the schedule's id.
    """
    create(ctx, WORKFLOWS, file, wait=wait, timeout=timeout, output=output)


@app.command("get")
def get_workflow(
    ctx: typer.Context,
    workflow_id: IdArgument,
    watch: Annotated[bool, typer.Option(help="Follow it live until it ends.")] = False,
    output: OutputOption = None,
) -> None:
    """Show a workflow and every task's state."""
    get(ctx, WORKFLOWS, workflow_id, watch=watch, output=output)


@app.command("list")
def list_workflows(
    ctx: typer.Context,
    limit: LimitOption = 100,
    offset: OffsetOption = 0,
    output: OutputOption = None,
) -> None:
    """List workflows with their state."""
    list_runs(ctx, WORKFLOWS, limit=limit, offset=offset, output=output)


@app.command("stop")
def stop_workflow(ctx: typer.Context, workflow_id: IdArgument, output: OutputOption = None) -> None:
    """Stop a workflow: every task not yet finished is cancelled."""
    stop(ctx, WORKFLOWS, workflow_id, output=output)
