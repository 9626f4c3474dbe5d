"""``edgeplane audit``: read the audit log (admin; docs/security.md, "Audit log")."""

from __future__ import annotations

import datetime
import re
import time
from typing import Annotated

import typer

from edgeplane.cli.output import (
    Format,
    OutputOption,
    note,
    print_json,
    print_table,
    session,
    when,
)
from edgeplane.errors import Invalid
from edgeplane.limits import MAX_LIMIT

_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value: str, field: str, now: float) -> float:
    """A unix time from ``value``: seconds since the epoch, an ISO 8601 time (local when it
    names no zone), or a span back from ``now`` (``30s``, ``15m``, ``2h``, ``7d``)."""
    text = value.strip()
    ago = _AGO.fullmatch(text)
    if ago is not None:
        return now - float(ago.group(1)) * _UNIT_S[ago.group(2)]
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if 0 <= seconds < float("inf"):
            return seconds
        raise Invalid(f"{value!r} is not a time", field=field)
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise Invalid(
            f"{value!r} is not a time: give unix seconds, an ISO time "
            "(2026-12-05T10:00) or a span back (15m, 2h, 7d)",
            field=field,
        ) from None


def audit(
    ctx: typer.Context,
    actor: Annotated[str | None, typer.Option(help="Only this user's calls (or system).")] = None,
    action: Annotated[
        str | None,
        typer.Option(help="POST, PUT, PATCH, DELETE, or a change (worker.joined...)."),
    ] = None,
    resource: Annotated[
        str | None, typer.Option(help="A kind (task) or a kind and id (task/ID).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="From this time: unix seconds, ISO, or 15m/2h/7d ago.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Before this time (same forms).")] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_LIMIT, help="Records to show, newest first.")
    ] = 50,
    cursor: Annotated[
        int | None, typer.Option(min=1, help="Go on from a page (the cursor printed after it).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (same as --output json).")
    ] = False,
    output: OutputOption = None,
) -> None:
    """Who changed what, when, and how it ended: mutating API calls and broker identity
    changes, newest first (admin)."""
    now = time.time()
    s = session(ctx)
    page = s.client().audit(
        actor=actor,
        action=action,
        resource=resource,
        since=None if since is None else parse_time(since, "since", now),
        until=None if until is None else parse_time(until, "until", now),
        limit=limit,
        cursor=cursor,
    )
    if as_json or s.format(output) is Format.json:
        print_json(page.model_dump(mode="json"))
        return
    print_table(
        ["time", "actor", "action", "what", "resource", "status", "client"],
        (
            [
                when(r.at),
                r.actor,
                r.action,
                r.route or r.path or r.detail or "",
                "/".join(p for p in (r.resource, r.resource_id) if p),
                "" if r.status is None else str(r.status),
                r.client or "",
            ]
            for r in page.items
        ),
    )
    if page.next is not None:
        note(f"more: --cursor {page.next}")
