"""Stored documents read back whatever wrote them: nothing in a store may stop a manager.

Documents are JSON text. The fast read is pydantic's own JSON reader, which stops at 200
levels of nesting; older versions let deeper free-form values in (``metadata`` 250 deep:
the task could not be read, listed or deleted, and ``edgeplane up`` exited at start).
Today's input bounds (``edgeplane.model.bounds``) keep new ones out, and this reader takes
the old ones back:

1. pydantic's JSON reader (every document this version writes), free-form values not
   held to today's bounds (``STORED``);
2. orjson (1,024 levels, deeper than pydantic could ever write), the row's own columns
   filling what the document lacks, and the model; what still fails (a ``null`` an older
   PATCH let in, a number past today's range) is left out, field by field, down to the
   item that fails, so that its default takes its place;
3. else None, logged: the caller leaves the row out of lists and answers "not found".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from edgeplane.model.bounds import STORED

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


#: Fields one document may have left at their defaults before it counts as unreadable.
MAX_REPAIRS = 100


def read(model: type[M], doc: str | bytes, columns: Mapping[str, Any]) -> M | None:
    """``doc`` as a ``model``; ``columns`` are the row's own values (at least ``id``)."""
    try:
        return model.model_validate_json(doc, context=STORED)
    except ValidationError:
        pass
    try:
        data = orjson.loads(doc)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        data = {}
    where = {"model": model.__name__, "id": columns.get("id")}
    for repairs in range(MAX_REPAIRS):
        for key, value in columns.items():
            data.setdefault(key, value)
        try:
            found = model.model_validate(data, context=STORED)
        except ValidationError as exc:
            # last items first, so that removing one does not move the next
            for error in sorted(exc.errors(), key=lambda e: _order(e["loc"]), reverse=True):
                _drop(data, error["loc"])
            continue
        if repairs:
            log.warning("a stored document was read with fields left at defaults", extra=where)
        return found
    log.error("a stored document cannot be read", extra=where)
    return None


def _order(loc: tuple[int | str, ...]) -> list[tuple[int, int, str]]:
    return [(0, part, "") if isinstance(part, int) else (1, 0, part) for part in loc]


def _drop(data: dict[str, Any], loc: tuple[int | str, ...]) -> None:
    """Remove what ``loc`` points at (a field, an item), or its top-level field when the
    path does not lead there."""
    parent: Any = data
    try:
        for part in loc[:-1]:
            parent = parent[part]
        del parent[loc[-1]]
    except (KeyError, IndexError, TypeError):
        if loc:
            data.pop(str(loc[0]), None)
