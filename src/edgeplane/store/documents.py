"""Stored documents read back whatever wrote them: nothing in a store may stop a manager.

Documents are JSON text. The fast read is pydantic's own JSON reader, which stops at 200
levels of nesting; older versions let deeper free-form values in (``metadata`` 250 deep:
the task could not be read, listed or deleted, and ``edgeplane up`` exited at start).
Today's input bounds (``edgeplane.model.bounds``) keep new ones out, and this reader takes
the old ones back:

1. pydantic's JSON reader (every document this version writes);
2. orjson (1,024 levels, deeper than pydantic could ever write) and the model;
3. the fields that still fail (a ``null`` an older PATCH let in) left at their defaults,
   the row's own columns filling what the document lacks;
4. else None, logged: the caller leaves the row out of lists and answers "not found".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def read(model: type[M], doc: str | bytes, columns: Mapping[str, Any]) -> M | None:
    """``doc`` as a ``model``; ``columns`` are the row's own values (at least ``id``)."""
    try:
        return model.model_validate_json(doc)
    except ValidationError:
        pass
    try:
        data = orjson.loads(doc)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            bad = {error["loc"][0] for error in exc.errors() if error["loc"]}
            data = {key: value for key, value in data.items() if key not in bad}
    else:
        data = {}
    where = {"model": model.__name__, "id": columns.get("id")}
    try:
        found = model.model_validate({**columns, **data})
    except ValidationError as exc:
        log.error("a stored document cannot be read", extra={**where, "error": str(exc)})
        return None
    log.warning("a stored document was read with fields left at their defaults", extra=where)
    return found
