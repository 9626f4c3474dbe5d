"""Paging and filtering a long list of tasks (pure: no I/O).

``GET /tasks`` pages by a cursor: the position (``created_at``, ``id``) of the last task
of a page, which the store continues after with an index range instead of walking and
dropping ``offset`` rows. The cursor is opaque to clients (base64url of that pair), so
its form may change; a cursor that does not read is a 422 naming ``cursor``.

A name filter is a prefix: ``name=train`` matches ``train``, ``train-2`` and
``training``. The stores compare code points (SQLite's ``BINARY``, PostgreSQL's ``"C"``
collation on that column), so a prefix is the index range ``[prefix, prefix_end(prefix))``.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated

import orjson
from pydantic import BaseModel, Field

from edgeplane.errors import Invalid
from edgeplane.model.task import Task

#: A task's place in the list order: (``created_at``, ``id``).
Position = tuple[float, str]
_LAST = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


class TaskPage(BaseModel):
    """A page of tasks: ``total`` matching the filters, and ``next``, the cursor of the
    following page (None: this was the last)."""

    items: list[Task]
    total: int
    next: Annotated[str | None, Field(description="cursor of the next page")] = None


def encode_cursor(position: Position) -> str:
    created_at, task_id = position
    raw = orjson.dumps([created_at, task_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(text: str) -> Position:
    """The position a cursor names; :class:`Invalid` naming ``cursor`` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        found = orjson.loads(raw)
    except (binascii.Error, ValueError):
        found = None
    if (
        isinstance(found, list)
        and len(found) == 2
        and isinstance(found[0], int | float)
        and not isinstance(found[0], bool)
        and math.isfinite(found[0])
        and isinstance(found[1], str)
        and "\x00" not in found[1]
    ):
        return float(found[0]), found[1]
    raise Invalid("cursor is not one this server gave out: use `next` of a page", field="cursor")


def prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (code-point order),
    None when there is none (``prefix`` empty or made of U+10FFFF only).

    A string ``s`` starts with ``prefix`` exactly when ``prefix <= s < prefix_end(prefix)``.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < _LAST:
            following = last + 1
            if following in _SURROGATES:  # not text: the next code point is U+E000
                following = _SURROGATES.stop
            return "".join(chars) + chr(following)
    return None


def in_order(position: Position, after: Position, newest_first: bool) -> bool:
    """Whether ``position`` comes after the cursor ``after`` in the list's order."""
    return position < after if newest_first else position > after
