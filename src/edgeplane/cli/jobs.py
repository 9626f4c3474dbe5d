"""``edgeplane job …``: named sets of tasks run in parallel, in sequence or as a DAG.

Jobs are runs like workflows, so every command here is the workflow one with job calls.
"""

from __future__ import annotations

from typing import Annotated

import typer

from edgeplane.cli import workflows
from edgeplane.cli.options import LimitOption, OffsetOption
from edgeplane.cli.output import OutputOption
from edgeplane.cli.workflows import FileArgument, Runs, TimeoutOption

app = typer.Typer(
    help="Jobs: tasks from a YAML file run parallel, sequential or as a dag (`mode:`).",
    no_args_is_help=True,
)

JOBS = Runs(
    "job",
    create=lambda c, spec: c.create_job(spec),
    get=lambda c, run_id: c.job(run_id),
    page=lambda c, limit, offset: c.jobs(limit=limit, offset=offset),
    stop=lambda c, run_id: c.stop_job(run_id),
    wait=lambda c, run_id, timeout, progress, poll_s: c.wait_job(
        run_id, timeout, progress=progress, poll_s=poll_s
    ),
)

IdArgument = Annotated[str, typer.Argument(metavar="ID", help="Job id.")]


@app.command()
def create(
    ctx: typer.Context,
    file: FileArgument,
    wait: Annotated[bool, typer.Option(help="Wait for the end and show every task.")] = False,
    timeout: TimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Create a job from a YAML/JSON file (started unless `start: false`), print its id.

    With --wait, show its tasks live until it ends; exit 1 if it did not complete.
    With `schedule:` in the file it makes a schedule instead and prints the schedule's id.
    """
    workflows.create(ctx, JOBS, file, wait=wait, timeout=timeout, output=output)


@app.command()
def get(
    ctx: typer.Context,
    job_id: IdArgument,
    watch: Annotated[bool, typer.Option(help="Follow it live until it ends.")] = False,
    output: OutputOption = None,
) -> None:
    """Show a job and every task's state."""
    workflows.get(ctx, JOBS, job_id, watch=watch, output=output)


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    limit: LimitOption = 100,
    offset: OffsetOption = 0,
    output: OutputOption = None,
) -> None:
    """List jobs with their mode and state."""
    workflows.list_runs(ctx, JOBS, limit=limit, offset=offset, output=output)


@app.command()
def stop(ctx: typer.Context, job_id: IdArgument, output: OutputOption = None) -> None:
    """Stop a job: every task not yet finished is cancelled."""
    workflows.stop(ctx, JOBS, job_id, output=output)
