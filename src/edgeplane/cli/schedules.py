"""``edgeplane schedule list|get|pause|resume|delete``: the cron schedules that tasks and jobs
with ``schedule`` created, and how a new schedule is shown."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from edgeplane.cli.options import LimitOption, OffsetOption
from edgeplane.cli.output import (
    Format,
    OutputOption,
    echo,
    note,
    print_fields,
    print_model,
    print_table,
    session,
    when,
)

if TYPE_CHECKING:
    from edgeplane.model import Schedule

app = typer.Typer(
    help="Cron schedules: a task or job created once per slot (make one with --schedule).",
    no_args_is_help=True,
)

IdArgument = Annotated[str, typer.Argument(metavar="ID", help="Schedule id.")]


def next_run(schedule: Schedule) -> str:
    """The next run in the schedule's own timezone, the one its cron is read in."""
    if schedule.next_run is None:
        return ""
    import datetime
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        zone = ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return when(schedule.next_run)
    at = datetime.datetime.fromtimestamp(schedule.next_run, zone)
    return at.isoformat(sep=" ", timespec="seconds")


def state(schedule: Schedule) -> str:
    return "paused" if schedule.paused else "active"


def print_schedule(schedule: Schedule, fmt: Format) -> None:
    """A schedule just made: its id on stdout (for scripts), when it runs on stderr."""
    if fmt is Format.json:
        print_model(schedule)
        return
    echo(schedule.id)
    upcoming = next_run(schedule)
    note(
        f"schedule {schedule.id} ({schedule.cron}, {schedule.timezone}): "
        + (f"next run {upcoming}" if upcoming else "no run to come")
    )


@app.command("list")
def list_schedules(
    ctx: typer.Context,
    limit: LimitOption = 100,
    offset: OffsetOption = 0,
    output: OutputOption = None,
) -> None:
    """List schedules with their cron, timezone, state and next run."""
    s = session(ctx)
    page = s.client().schedules(limit=limit, offset=offset)
    if s.format(output) is Format.json:
        print_model(page)
        return
    print_table(
        ["id", "kind", "name", "cron", "timezone", "state", "next run", "runs"],
        (
            [x.id, x.kind, x.name, x.cron, x.timezone, state(x), next_run(x), x.runs]
            for x in page.items
        ),
    )
    if page.total > offset + len(page.items):
        note(f"{len(page.items)} of {page.total} schedules shown; more with --offset/--limit")


@app.command()
def get(ctx: typer.Context, schedule_id: IdArgument, output: OutputOption = None) -> None:
    """Show a schedule."""
    s = session(ctx)
    schedule = s.client().schedule(schedule_id)
    if s.format(output) is Format.json:
        print_model(schedule)
        return
    print_fields(
        [
            ("id", schedule.id),
            ("kind", schedule.kind),
            ("name", schedule.name),
            ("cron", schedule.cron),
            ("timezone", schedule.timezone),
            ("catch up", schedule.catch_up),
            ("state", state(schedule)),
            ("next run", next_run(schedule)),
            ("runs", schedule.runs),
        ]
    )


@app.command()
def pause(ctx: typer.Context, schedule_id: IdArgument, output: OutputOption = None) -> None:
    """Pause a schedule: it fires nothing until resumed (runs it made go on)."""
    s = session(ctx)
    schedule = s.client().pause_schedule(schedule_id)
    if s.format(output) is Format.json:
        print_model(schedule)
        return
    note(f"schedule {schedule.id} paused")


@app.command()
def resume(ctx: typer.Context, schedule_id: IdArgument, output: OutputOption = None) -> None:
    """Resume a paused schedule. Its catch-up policy says which slots missed while it was
    paused still run: none, the last one (the default) or all."""
    s = session(ctx)
    schedule = s.client().resume_schedule(schedule_id)
    if s.format(output) is Format.json:
        print_model(schedule)
        return
    note(f"schedule {schedule.id} resumed (catch-up: {schedule.catch_up})")


@app.command()
def delete(ctx: typer.Context, schedule_id: IdArgument) -> None:
    """Delete a schedule; runs it already made go on."""
    session(ctx).client().delete_schedule(schedule_id)
    note(f"deleted schedule {schedule_id}")
