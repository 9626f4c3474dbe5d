"""Options several commands share, with the API's own bounds (``edgeplane.model.bounds``):
a value out of range is exit code 2 before any request."""

from __future__ import annotations

from typing import Annotated

import typer

from edgeplane.limits import MAX_LIMIT, MAX_OFFSET, MAX_PRIORITY, MAX_RETRIES

LimitOption = Annotated[int, typer.Option(min=1, max=MAX_LIMIT, help="Items in the page.")]
OffsetOption = Annotated[int, typer.Option(min=0, max=MAX_OFFSET, help="Items to skip.")]
RetriesOption = Annotated[
    int | None, typer.Option(min=-1, max=MAX_RETRIES, help="Extra attempts; -1 = forever.")
]
ProjectOption = Annotated[
    str | None, typer.Option(help="The project it belongs to (default: default; docs/security.md).")
]
PriorityOption = Annotated[
    int | None, typer.Option(min=0, max=MAX_PRIORITY, help="0-100, higher first.")
]
