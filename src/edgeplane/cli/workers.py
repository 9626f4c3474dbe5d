"""``edgeplane workers list|get|drain|undrain|owner|delete``: the workers a manager knows.

``edgeplane worker --manager …`` runs a worker (that part is in ``roles``); the old
spellings ``edgeplane worker list`` … still work, hidden from its help (:func:`runner`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
    from edgeplane.model import Worker

app = typer.Typer(help="Manage the workers a manager knows: list, get, drain, owner, delete.")

IdArgument = Annotated[str, typer.Argument(metavar="ID", help="Worker id.")]


#: An offline worker unseen for longer than this is left out of `worker list` (--all shows
#: it): ids of machines long gone would otherwise fill the list forever.
GONE_AFTER_S = 24 * 3600


@app.command("list")
def list_workers(
    ctx: typer.Context,
    limit: LimitOption = 100,
    offset: OffsetOption = 0,
    show_all: Annotated[
        bool,
        typer.Option(
            "--all", help="Also workers offline for more than a day (left out by default)."
        ),
    ] = False,
    output: OutputOption = None,
) -> None:
    """List workers with their state, labels, size and load."""
    s = session(ctx)
    page = s.client().workers(limit=limit, offset=offset)
    shown = page.items if show_all else [w for w in page.items if not _gone(w, time.time())]
    if s.format(output) is Format.json:
        print_model(page if show_all else page.model_copy(update={"items": shown}))
        return
    print_table(
        [
            *("id", "cluster", "state", "labels", "owner", "cpus", "memory mb", "runtimes"),
            *("tasks", "last seen"),
        ],
        (
            [
                w.id,
                w.cluster_id,
                w.state,
                ",".join(f"{k}={v}" for k, v in sorted(w.capabilities.labels.items())) or "-",
                w.owner or "-",
                w.capabilities.cpus,
                w.capabilities.memory_mb,
                w.capabilities.runtimes,
                w.active_tasks,
                when(w.last_seen),
            ]
            for w in shown
        ),
    )
    if hidden := len(page.items) - len(shown):
        note(f"{hidden} workers offline for more than a day not shown; see them with --all")
    if page.total > offset + len(page.items):
        note(f"{len(page.items)} of {page.total} workers shown; more with --offset/--limit")


def _gone(worker: Worker, now: float) -> bool:
    return worker.state == "offline" and now - worker.last_seen > GONE_AFTER_S


def _show(worker: Worker, fmt: Format) -> None:
    if fmt is Format.json:
        print_model(worker)
        return
    caps, usage = worker.capabilities, worker.usage
    print_fields(
        [
            ("id", worker.id),
            ("cluster", worker.cluster_id),
            ("state", worker.state),
            ("owner", worker.owner or "-"),
            ("hostname", caps.hostname),
            ("addresses", caps.addresses),
            ("arch", f"{caps.os} {caps.arch}".strip()),
            ("cpus", caps.cpus),
            ("memory mb", caps.memory_mb),
            ("disk mb", caps.disk_mb),
            ("runtimes", caps.runtimes),
            ("slots", caps.slots),
            ("labels", caps.labels),
            ("tee", caps.tee),
            ("accelerators", caps.accelerators),
            ("bridge network", "yes" if caps.bridge else "no"),
            ("cpu %", usage.cpu_percent),
            ("memory free mb", usage.memory_free_mb),
            ("active tasks", worker.active_tasks),
            ("registered", when(worker.registered_at)),
            ("last seen", when(worker.last_seen)),
        ]
    )


@app.command()
def get(ctx: typer.Context, worker_id: IdArgument, output: OutputOption = None) -> None:
    """Show a worker: capabilities and live usage."""
    s = session(ctx)
    _show(s.client().worker(worker_id), s.format(output))


@app.command()
def drain(ctx: typer.Context, worker_id: IdArgument, output: OutputOption = None) -> None:
    """Stop placing tasks on a worker; running tasks finish."""
    s = session(ctx)
    worker = s.client().drain_worker(worker_id)
    if s.format(output) is Format.json:
        print_model(worker)
    else:
        echo(f"{worker.id} {worker.state}")


@app.command()
def undrain(ctx: typer.Context, worker_id: IdArgument, output: OutputOption = None) -> None:
    """Place tasks on a drained worker again."""
    s = session(ctx)
    worker = s.client().undrain_worker(worker_id)
    if s.format(output) is Format.json:
        print_model(worker)
    else:
        echo(f"{worker.id} {worker.state}")


@app.command()
def owner(
    ctx: typer.Context,
    worker_id: IdArgument,
    user: Annotated[
        str | None, typer.Argument(metavar="USER", help="The new owner; omit with --none.")
    ] = None,
    nobody: Annotated[bool, typer.Option("--none", help="Take the worker from its owner.")] = False,
    output: OutputOption = None,
) -> None:
    """Give a worker to a user (admins only): the owner may drain, undrain and delete it,
    and manage what runs on it, whatever their role."""
    if (user is None) == (not nobody):
        raise typer.BadParameter("give USER or --none (one of them)", param_hint="USER")
    s = session(ctx)
    worker = s.client().set_worker_owner(worker_id, None if nobody else user)
    if s.format(output) is Format.json:
        print_model(worker)
    else:
        echo(f"{worker.id} owner {worker.owner or '-'}")


@app.command()
def delete(ctx: typer.Context, worker_id: IdArgument) -> None:
    """Forget a worker. On a broker edgeplane started, its identity is revoked too: it is
    disconnected and needs a new join token; elsewhere it registers again if it comes back."""
    session(ctx).client().delete_worker(worker_id)
    note(f"deleted worker {worker_id}")


def runner(run: Callable[..., None]) -> typer.Typer:
    """``edgeplane worker``: runs one worker (``run``); its subcommands are this module's,
    kept for the scripts and docs that spelled them ``worker list`` before ``workers``,
    and hidden from its help."""
    worker = typer.Typer(help="Run a worker: `edgeplane worker --manager mqtt://HOST:PORT`.")
    worker.callback(invoke_without_command=True)(run)
    for info in app.registered_commands:
        assert info.callback is not None
        name = info.name or info.callback.__name__
        worker.command(name, hidden=True)(info.callback)
    return worker
