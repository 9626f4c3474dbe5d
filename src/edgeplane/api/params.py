"""Query parameters every list and long-poll shares, with their ranges (docs/limits.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from edgeplane.limits import MAX_LIMIT, MAX_OFFSET, MAX_WAIT_S

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items in the page")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]
Wait = Annotated[
    float, Query(ge=0, le=MAX_WAIT_S, description="seconds to hold the answer until it ended")
]
