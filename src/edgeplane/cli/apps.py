"""``edgeplane app apply|list|get|delete``: applications from a descriptor file.

``apply`` is declarative: the file's ``name`` picks the application, so applying the same
file twice updates it (a rolling update on the server) instead of making a second one.
``--wait`` polls until every service runs ``replicas`` instances of its current revision
and nothing else of it is left live (old revisions stopped), redrawing a tree on a
terminal; the API has no long-poll for applications.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
    print_fields,
    print_model,
    print_table,
    session,
    waiting,
    when,
)
from edgeplane.errors import Invalid, NotFound

if TYPE_CHECKING:
    from rich.tree import Tree

    from edgeplane.client import ApplicationView, Client
    from edgeplane.model import ServiceStatus

app = typer.Typer(
    help="Applications: long-running services kept at their replica counts.",
    no_args_is_help=True,
)

#: Seconds between polls while waiting for an application to be ready.
POLL_S = 2.0
#: Most applications one ``GET /applications`` returns; a name lookup pages by this.
PAGE = 1000

_STATE_STYLES = {
    "pending": "dim",
    "scheduled": "cyan",
    "running": "green",
    "deploying": "yellow",
    "degraded": "bold red",
    "deleting": "magenta",
    "failed": "bold red",
    "completed": "dim",
    "cancelled": "magenta",
}

#: States of an instance whose task may still run (the root's reconciler calls them live).
_LIVE = frozenset({"pending", "scheduled", "running"})

RefArgument = Annotated[str, typer.Argument(metavar="ID|NAME", help="Application id or name.")]


# --- the descriptor file --------------------------------------------------------------------


def load_descriptor(path: Path) -> dict[str, Any]:
    """The ``POST /applications`` body the file at ``path`` describes (YAML or JSON).

    Services name their modules relative to the file, as workflow specs do; problems are
    :class:`Invalid` naming where they are (``services[1].replicas``).
    """
    from edgeplane.cli.specfile import _kind_of, _read_text, parse, with_module

    doc = parse(path, _read_text(path))
    if not isinstance(doc, dict):
        raise Invalid(f"{path}: expected a mapping with `name` and `services`, got {_kind_of(doc)}")
    services = doc.get("services")
    if isinstance(services, list):
        doc["services"] = [
            _with_chute(with_module(s, i, path.parent, key="services"), i, path.parent)
            for i, s in enumerate(services)
        ]
    _check(path, doc)
    return doc


def _with_chute(service: Any, index: int, base: Path) -> Any:
    """A service's ``chute_file`` (a chute.yaml, relative to the descriptor) read into
    ``chute``, which the API takes."""
    if not isinstance(service, dict) or "chute_file" not in service:
        return service
    from edgeplane.cli.specfile import _read_text, parse

    where = f"services[{index}].chute_file"
    if service.get("chute") is not None:
        raise Invalid("give chute or chute_file, not both", field=where)
    name = service.pop("chute_file")
    if not isinstance(name, str) or not name:
        raise Invalid("a path to a chute.yaml", field=where)
    file = base / name
    try:
        service["chute"] = parse(file, _read_text(file))
    except Invalid as exc:
        raise Invalid(f"{where}: {exc.detail}", field=where) from None
    return service


def _check(path: Path, doc: dict[str, Any]) -> None:
    """Validate against the API's own model, so a mistake is caught before any upload."""
    from pydantic import ValidationError

    from edgeplane.cli.specfile import field_path
    from edgeplane.model import ApplicationSpec

    try:
        ApplicationSpec.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = field_path(first["loc"])
        if not where:  # a rule over the whole descriptor (service names used twice)
            raise Invalid(f"{path}: {first['msg']}") from None
        raise Invalid(f"{where}: {first['msg']}", field=where) from None


# --- finding applications -------------------------------------------------------------------


def named(client: Client, name: str) -> list[ApplicationView]:
    """Every application called ``name`` (the API does not keep names unique)."""
    found: list[ApplicationView] = []
    offset = 0
    while True:
        page = client.applications(limit=PAGE, offset=offset)
        found += [a for a in page.items if a.name == name]
        offset += len(page.items)
        if not page.items or offset >= page.total:
            return found


def _only(name: str, found: list[ApplicationView]) -> ApplicationView | None:
    if len(found) > 1:
        ids = ", ".join(a.id for a in found)
        raise Invalid(f"{len(found)} applications are named {name!r} ({ids}): use an id")
    return found[0] if found else None


def resolve(client: Client, ref: str) -> ApplicationView:
    """The application with id ``ref``, else the only one named ``ref``."""
    try:
        return client.application(ref)
    except NotFound:
        found = _only(ref, named(client, ref))
    if found is None:
        raise NotFound(f"no application with id or name {ref!r}")
    return found


# --- readiness and views --------------------------------------------------------------------


def ready(service: ServiceStatus) -> int:
    """Instances of the service running its current revision."""
    return sum(
        1 for i in service.instances if i.state == "running" and i.revision == service.revision
    )


def _stale(service: ServiceStatus) -> int:
    """Live instances of an older revision: a rolling update is not over while any is left."""
    return sum(1 for i in service.instances if i.state in _LIVE and i.revision != service.revision)


def _settled(service: ServiceStatus) -> bool:
    live = sum(1 for i in service.instances if i.state in _LIVE)
    return ready(service) == service.replicas == live


def lagging(view: ApplicationView) -> list[str]:
    """How far each service still has to go, for the services not yet settled: exactly
    ``replicas`` live instances, all running the current revision."""
    behind = []
    for s in view.services:
        if not _settled(s):
            old = _stale(s)
            behind.append(
                f"{s.name} {ready(s)}/{s.replicas} ready" + (f", {old} old" if old else "")
            )
    return behind


def _ready_total(view: ApplicationView) -> str:
    return f"{sum(ready(s) for s in view.services)}/{sum(s.replicas for s in view.services)}"


def tree(view: ApplicationView) -> Tree:
    """The application, each service with its ready count, each instance with its state."""
    from rich.text import Text
    from rich.tree import Tree

    head = Text()
    head.append(f"application {view.name}", style="bold")
    head.append(f" ({view.id})  ", style="dim")
    head.append(view.state, style=_STATE_STYLES.get(view.state, ""))
    head.append(f"  generation {view.generation}  {_ready_total(view)} ready", style="dim")
    root = Tree(head, guide_style="dim")
    for service in view.services:
        line = Text()
        line.append(service.name, style="bold")
        line.append(f"  {ready(service)}/{service.replicas} ready")
        line.append(f"  revision {service.revision}", style="dim")
        branch = root.add(line)
        for instance in service.instances:
            row = Text()
            row.append(instance.id)
            row.append("  ")
            row.append(instance.state, style=_STATE_STYLES.get(instance.state, ""))
            if instance.worker_id:
                row.append(f"  on {instance.cluster_id or '?'}/{instance.worker_id}", style="dim")
            if instance.endpoints:
                row.append("  " + " ".join(str(e) for e in instance.endpoints), style="cyan")
            if instance.restarts:
                row.append(f"  restarts {instance.restarts}", style="yellow")
            if instance.revision != service.revision:
                row.append("  old revision", style="magenta")
            if instance.reason:
                row.append(f"  {instance.reason}", style="dim")
            branch.add(row)
    return root


def show(view: ApplicationView, fmt: Format) -> None:
    """The application's fields, then one row per instance."""
    if fmt is Format.json:
        print_model(view)
        return
    print_fields(
        [
            ("id", view.id),
            ("name", view.name),
            ("state", view.state),
            ("generation", view.generation),
            ("services", [f"{s.name} {ready(s)}/{s.replicas}" for s in view.services]),
            ("created", when(view.created_at)),
            ("updated", when(view.updated_at)),
        ]
    )
    print_table(
        [
            "service",
            "id",
            "cluster",
            "worker",
            "state",
            "endpoints",
            "restarts",
            "revision",
            "reason",
        ],
        (
            [
                s.name,
                i.id,
                i.cluster_id,
                i.worker_id,
                i.state,
                " ".join(str(e) for e in i.endpoints),
                i.restarts,
                "current" if i.revision == s.revision else "old",
                i.reason,
            ]
            for s in view.services
            for i in s.instances
        ),
    )


# --- waiting --------------------------------------------------------------------------------


def _until_ready(
    client: Client,
    view: ApplicationView,
    timeout: float,
    redraw: Callable[[ApplicationView], object] | None,
) -> ApplicationView:
    """The application once ready, or as last seen when ``timeout`` ran out."""
    deadline = time.monotonic() + timeout
    while lagging(view):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return view
        time.sleep(min(POLL_S, remaining))
        view = client.application(view.id)
        if redraw is not None:
            redraw(view)
    return view


def follow(client: Client, view: ApplicationView, timeout: float, fmt: Format) -> None:
    """Wait until ``view`` is ready and show it; exit 1 if it is not within ``timeout``."""
    console = _stdout()
    try:
        if fmt is Format.table and console.is_terminal:
            from rich.live import Live

            with Live(tree(view), console=console, auto_refresh=False) as live:

                def redraw(latest: ApplicationView) -> None:
                    live.update(tree(latest), refresh=True)

                final = _until_ready(client, view, timeout, redraw)
        else:
            with waiting(f"waiting for application {view.name}"):
                final = _until_ready(client, view, timeout, None)
            show(final, fmt)
    except KeyboardInterrupt:
        note(f"stopped waiting; application {view.name} goes on")
        raise typer.Exit(130) from None
    if behind := lagging(final):
        error(
            f"application {final.name} not ready after {timeout:g}s "
            f"({'; '.join(behind)}); it goes on"
        )
        raise typer.Exit(1)


# --- edgeplane app … ------------------------------------------------------------------------


@app.command()
def apply(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="YAML or JSON descriptor; files relative to it.")
    ],
    wait: Annotated[bool, typer.Option(help="Wait until every service runs its replicas.")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, help="Stop waiting after S seconds (exit 1).")
    ] = 300.0,
    output: OutputOption = None,
) -> None:
    """Create the application the file describes, or update the one with its name.

    An update rolls the services' instances over to the new descriptor. Prints the id;
    with --wait, shows the instances until every service is at its replica count.
    """
    s = session(ctx)
    fmt = s.format(output)
    spec = load_descriptor(file)
    client = s.client()
    existing = _only(spec["name"], named(client, spec["name"]))
    if existing is None:
        view = client.create_application(spec)
        note(f"created application {view.name} ({view.id})")
    else:
        view = client.update_application(existing.id, spec)
        note(f"updated application {view.name} ({view.id}) to generation {view.generation}")
    if wait:
        follow(client, view, timeout, fmt)
    elif fmt is Format.json:
        print_model(view)
    else:
        echo(view.id)


@app.command("list")
def list_apps(
    ctx: typer.Context,
    limit: LimitOption = 100,
    offset: OffsetOption = 0,
    output: OutputOption = None,
) -> None:
    """List applications with their state and ready instances."""
    s = session(ctx)
    page = s.client().applications(limit=limit, offset=offset)
    if s.format(output) is Format.json:
        print_model(page)
        return
    print_table(
        ["id", "name", "state", "generation", "services", "ready", "updated"],
        (
            [
                a.id,
                a.name,
                a.state,
                a.generation,
                [s.name for s in a.services],
                _ready_total(a),
                when(a.updated_at),
            ]
            for a in page.items
        ),
    )
    if page.total > offset + len(page.items):
        note(f"{len(page.items)} of {page.total} applications shown; more with --offset/--limit")


@app.command()
def get(ctx: typer.Context, ref: RefArgument, output: OutputOption = None) -> None:
    """Show an application: its services and every instance (cluster, worker, state,
    and the ADDRESS:HOST_PORT its published ports are reached at)."""
    s = session(ctx)
    show(resolve(s.client(), ref), s.format(output))


@app.command()
def delete(ctx: typer.Context, ref: RefArgument) -> None:
    """Delete an application and stop all its instances."""
    client = session(ctx).client()
    found = resolve(client, ref)
    client.delete_application(found.id)
    note(f"deleted application {found.name} ({found.id})")
