"""``edgeplane store list|publish|show|delete``: the chute store (docs/chutes.md).

A manifest is checked here against the manifest's own rules before it is sent, so a
mistake is exit code 2 naming the field with no request made. ``show NAME`` lists a
chute's versions; ``show NAME@VERSION`` (or ``--version``) prints that version's
manifest as YAML, ready to be saved as a chute.yaml. Installing one on a worker is
``edgeplane chute install NAME@VERSION --worker ID``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeplane.cli.options import LimitOption, OffsetOption
from edgeplane.cli.output import (
    Format,
    OutputOption,
    echo,
    note,
    print_fields,
    print_json,
    print_table,
    session,
    when,
)
from edgeplane.errors import Invalid

app = typer.Typer(
    no_args_is_help=True,
    help="The chute store: chute manifests published by name and version (docs/chutes.md).",
)

RefArgument = Annotated[
    str, typer.Argument(metavar="NAME[@VERSION]", help="A chute in the store, and a version.")
]
ProjectOption = Annotated[
    str | None,
    typer.Option(
        help="The chute's project (default: its own if it has one, else default; docs/security.md)."
    ),
]
VersionOption = Annotated[
    str | None, typer.Option("--version", help="A version (as NAME@VERSION does).")
]


def read_manifest(file: Path) -> dict[str, Any]:
    """``file`` (chute.yaml, or JSON) as JSON data, checked against the manifest's rules:
    :class:`Invalid` naming the field (exit 2) otherwise."""
    from edgeplane import safeyaml
    from edgeplane.chutes import manifest
    from edgeplane.chutes.bodies import MAX_BODY

    try:
        if file.stat().st_size > MAX_BODY:
            raise Invalid(f"{file} is over {MAX_BODY // 1024} KiB: not a chute manifest")
        text = file.read_bytes()
    except OSError as exc:
        raise Invalid(f"cannot read {file}: {exc.strerror or exc}", field="file") from None
    data = safeyaml.load(text, str(file))
    try:
        manifest.parse(data)
    except Invalid as exc:
        raise Invalid(f"{file}: {exc.detail}", field=exc.field) from None
    assert isinstance(data, dict)  # parse() takes nothing else
    return data


def _ref(text: str, version: str | None) -> tuple[str, str | None]:
    from edgeplane.chutes.catalog import parse_ref

    ref = parse_ref(text, field="name")
    if version is not None and ref.version is not None and version != ref.version:
        raise Invalid("give the version once: NAME@VERSION or --version", field="version")
    return ref.name, ref.version or version


def _short(digest: str) -> str:
    return digest[: len("sha256:") + 12]


@app.command()
def publish(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="chute.yaml (or .json)")],
    project: ProjectOption = None,
    output: OutputOption = None,
) -> None:
    """Publish a chute manifest as NAME@VERSION (a published version never changes)."""
    data = read_manifest(file)
    s = session(ctx)
    found, new = s.client().publish_chute(data, project)
    if s.format(output) == Format.json:
        print_json(found)
        return
    echo(f"{found['name']}@{found['version']}")
    if new:
        note(f"published in project {found['project']} ({found['digest']})")
    else:
        note(f"already published with this content ({found['digest']})")


@app.command("list")
def listing(
    ctx: typer.Context,
    limit: LimitOption = 100,
    offset: OffsetOption = 0,
    output: OutputOption = None,
) -> None:
    """The chutes in the store (of your projects), by name."""
    s = session(ctx)
    page = s.client().store_chutes(limit=limit, offset=offset)
    if s.format(output) == Format.json:
        print_json(page)
        return
    print_table(
        ["name", "latest", "versions", "project", "updated", "description"],
        [[c["name"], c["latest"], c["versions"], c["project"], when(c["updated_at"]),
          c["description"]] for c in page["items"]],
    )  # fmt: skip
    if page["total"] > offset + len(page["items"]):
        note(f"{page['total']} chutes; more with --offset {offset + len(page['items'])}")


@app.command()
def show(
    ctx: typer.Context,
    ref: RefArgument,
    version: VersionOption = None,
    output: OutputOption = None,
) -> None:
    """A chute's versions; with a version, its manifest (YAML, ready to save)."""
    name, wanted = _ref(ref, version)
    s = session(ctx)
    client = s.client()
    fmt = s.format(output)
    if wanted is not None:
        found = client.store_chute_version(name, wanted)
        if fmt == Format.json:
            print_json(found)
            return
        import yaml

        note(
            f"{found['name']}@{found['version']} in project {found['project']}, published "
            f"{when(found['published_at'])} by {found['published_by']} ({found['digest']})"
        )
        echo(yaml.safe_dump(found["manifest"], sort_keys=False, allow_unicode=True))
        return
    chute = client.store_chute(name)
    if fmt == Format.json:
        print_json(chute)
        return
    print_fields([(k, chute.get(k)) for k in ("name", "project", "latest", "description")])
    print_table(
        ["version", "published", "by", "digest", "description"],
        [[v["version"], when(v["published_at"]), v["published_by"], _short(v["digest"]),
          v["description"]] for v in chute["versions"]],
    )  # fmt: skip


@app.command()
def delete(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="NAME@VERSION", help="The version to delete.")],
    version: VersionOption = None,
) -> None:
    """Delete a version: it can no longer be installed, and is never published again with
    other content."""
    name, wanted = _ref(ref, version)
    if wanted is None:
        raise Invalid("give the version to delete: NAME@VERSION or --version", field="version")
    session(ctx).client().delete_store_chute_version(name, wanted)
    note(f"deleted {name}@{wanted}")
