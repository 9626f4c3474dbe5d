"""``edgeplane cluster list|get|delete``: the clusters the root knows, as their aggregates
show them.

A cluster reports only aggregates upward (free slots, free cpu and memory per runtime and
label set), never its workers, so that is all these commands can show.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from edgeplane.cli.options import LimitOption, OffsetOption
from edgeplane.cli.output import (
    Format,
    OutputOption,
    note,
    print_fields,
    print_model,
    print_table,
    session,
    when,
)

if TYPE_CHECKING:
    from edgeplane.model import Aggregate, Cluster, Location

app = typer.Typer(
    help="Clusters: a manager and its workers, seen by their aggregates.", no_args_is_help=True
)

IdArgument = Annotated[str, typer.Argument(metavar="ID", help="Cluster id.")]


def _location(where: Location | None) -> str:
    return "" if where is None else f"{where.lat:g}, {where.lon:g}"


def _cpu(cores: float) -> str:
    return f"{round(cores, 2):g}"


def _where(cluster: Cluster) -> Location | None:
    """Where the cluster said it is: at registration, else in its latest aggregate."""
    return cluster.location or (cluster.aggregate.location if cluster.aggregate else None)


@app.command("list")
def list_clusters(
    ctx: typer.Context,
    limit: LimitOption = 100,
    offset: OffsetOption = 0,
    output: OutputOption = None,
) -> None:
    """List clusters with their state and free capacity."""
    s = session(ctx)
    page = s.client().clusters(limit=limit, offset=offset)
    if s.format(output) is Format.json:
        print_model(page)
        return
    columns = [
        "id",
        "name",
        "state",
        "workers",
        "free slots",
        "max free cpu",
        "max free memory mb",
        "location",
        "active tasks",
        "last seen",
    ]
    rows = []
    for c in page.items:
        agg = c.aggregate
        rows.append(
            [
                c.id,
                c.name,
                c.state,
                agg and agg.workers,
                agg and agg.free_slots,
                agg and _cpu(agg.max_free_cpu),
                agg and agg.max_free_memory_mb,
                _location(_where(c)),
                c.active_tasks,
                when(c.last_seen),
            ]
        )
    print_table(columns, rows)
    if page.total > offset + len(page.items):
        note(f"{len(page.items)} of {page.total} clusters shown; more with --offset/--limit")


def _groups(agg: Aggregate) -> None:
    print_table(
        [
            "runtime",
            "labels",
            "workers",
            "free slots",
            "free cpu",
            "cpu mean±std",
            "max cpu",
            "free memory mb",
            "max memory mb",
            "tee",
            "accelerators",
            "bridge",
        ],
        (
            [
                g.runtime,
                g.labels,
                g.workers,
                g.free_slots,
                _cpu(g.cpu.sum),
                f"{_cpu(g.cpu.mean)}±{_cpu(g.cpu.std)}",
                _cpu(g.cpu.max),
                round(g.memory_mb.sum),
                round(g.memory_mb.max),
                g.tee,
                g.accelerators,
                g.bridge,
            ]
            for g in agg.groups
        ),
    )


@app.command()
def get(ctx: typer.Context, cluster_id: IdArgument, output: OutputOption = None) -> None:
    """Show a cluster and its capacity groups (one per runtime and label set)."""
    s = session(ctx)
    cluster = s.client().cluster(cluster_id)
    if s.format(output) is Format.json:
        print_model(cluster)
        return
    agg = cluster.aggregate
    print_fields(
        [
            ("id", cluster.id),
            ("name", cluster.name),
            ("state", cluster.state),
            ("location", _location(_where(cluster))),
            ("labels", cluster.labels),
            ("broker", cluster.broker_url),
            ("workers", agg and agg.workers),
            ("free slots", agg and agg.free_slots),
            ("max free cpu", agg and _cpu(agg.max_free_cpu)),
            ("max free memory mb", agg and agg.max_free_memory_mb),
            ("tee workers", agg and agg.tee),
            ("accelerator workers", agg and agg.accelerators),
            ("bridge workers", agg and agg.bridge),
            ("active tasks", cluster.active_tasks),
            ("registered", when(cluster.registered_at)),
            ("last seen", when(cluster.last_seen)),
            ("aggregate at", agg and when(agg.ts)),
        ]
    )
    if agg is not None and agg.groups:
        _groups(agg)


@app.command("delete")
def delete(ctx: typer.Context, cluster_id: IdArgument) -> None:
    """Forget a cluster (at a root). On a root's own broker its identity is revoked too: it
    is disconnected at once and needs a new join token; its tasks are placed again."""
    session(ctx).client().delete_cluster(cluster_id)
    note(f"deleted cluster {cluster_id}")
