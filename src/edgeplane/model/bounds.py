"""The pydantic types every input model is made of, with the bounds of
``edgeplane.limits`` (docs/limits.md): sizes, depths and number ranges.

The models use these types, so a request past a bound is a 422 naming the field at the API
and exit code 2 in the CLI (which validates with the same models) before anything costs
more than its parse. Stored documents are *not* held to them: a document an older version
stored must stay readable (see ``edgeplane.store.sql``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from edgeplane.limits import (
    MAX_ARG,
    MAX_ARGS,
    MAX_CPUS,
    MAX_CRON,
    MAX_DEPTH,
    MAX_INT,
    MAX_ITEMS,
    MAX_KEY,
    MAX_KEYS,
    MAX_LABELS,
    MAX_MEMORY_MB,
    MAX_NAME,
    MAX_NODES,
    MAX_PRIORITY,
    MAX_RETRIES,
    MAX_RUN_TASKS,
    MAX_STRING,
    MAX_TIMEZONE,
    MAX_URL,
    MIN_INT,
)


def _bounds_error(where: str, message: str) -> PydanticCustomError:
    if len(where) > 80:
        where = where[:77] + "..."
    text = f"{message} (at {where})" if where else message
    return PydanticCustomError("json_bounds", text)


#: Validation context of a stored document: free-form values are not held to the bounds
#: (``model.model_validate(doc, context=STORED)``): an older version let bigger ones in.
STORED = {"stored": True}


def _bounded(value: Any, info: ValidationInfo) -> Any:
    if info.context is not None and info.context.get("stored"):
        return value
    return check_json(value)


def check_json(value: Any) -> Any:
    """``value`` when it is JSON within the bounds above, else a validation error naming
    where inside it the first excess is. Iterative: a value nested 100,000 deep costs no
    more stack than a flat one."""
    nodes = 0
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, where = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise _bounds_error("", f"more than {MAX_NODES} values in all")
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise _bounds_error(where, f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, list):
                if len(item) > MAX_ITEMS:
                    raise _bounds_error(where, f"an array of more than {MAX_ITEMS} items")
                stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(item))
                continue
            if len(item) > MAX_KEYS:
                raise _bounds_error(where, f"an object of more than {MAX_KEYS} keys")
            for key, child in item.items():
                if not isinstance(key, str):
                    raise _bounds_error(where, f"key {key!r} is not a string")
                if len(key) > MAX_KEY:
                    raise _bounds_error(where, f"a key longer than {MAX_KEY} characters")
                stack.append((child, depth + 1, f"{where}.{key}" if where else key))
        elif isinstance(item, str):
            if len(item) > MAX_STRING:
                raise _bounds_error(where, f"a string longer than {MAX_STRING} characters")
        elif item is None or isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if not MIN_INT <= item <= MAX_INT:
                raise _bounds_error(where, "an integer outside the 64-bit range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise _bounds_error(where, "a number that is not finite")
        else:
            raise _bounds_error(where, f"a {type(item).__name__} is not a JSON value")
    return value


#: A free-form JSON object (``metadata``) or array (``inputs``) within the bounds above.
JsonObject = Annotated[dict[str, Any], AfterValidator(_bounded)]
JsonArray = Annotated[list[Any], Field(max_length=MAX_ITEMS), AfterValidator(_bounded)]

#: Text without NUL (PostgreSQL refuses NUL in text, exec refuses it in arguments).
_NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, Field(max_length=MAX_NAME, pattern=_NO_NUL)]
Arg = Annotated[str, Field(max_length=MAX_ARG, pattern=_NO_NUL)]
Args = Annotated[list[Arg], Field(max_length=MAX_ARGS)]
EnvName = Annotated[str, Field(min_length=1, max_length=MAX_NAME, pattern=r"^[^\x00=]*$")]
Env = Annotated[dict[EnvName, Arg], Field(max_length=MAX_ARGS)]
Label = Annotated[str, Field(max_length=MAX_NAME, pattern=_NO_NUL)]
Labels = Annotated[dict[Label, Label], Field(max_length=MAX_LABELS)]
Refs = Annotated[list[Name], Field(max_length=MAX_RUN_TASKS)]
#: The project a resource belongs to (docs/security.md).
Project = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
Cron = Annotated[str, Field(max_length=MAX_CRON, pattern=_NO_NUL)]
Timezone = Annotated[str, Field(max_length=MAX_TIMEZONE, pattern=_NO_NUL)]
Url = Annotated[str, Field(max_length=MAX_URL, pattern=_NO_NUL)]
Retries = Annotated[int, Field(ge=-1, le=MAX_RETRIES)]
Priority = Annotated[int, Field(ge=0, le=MAX_PRIORITY)]
Cpus = Annotated[float, Field(ge=0, le=MAX_CPUS, allow_inf_nan=False)]
MemoryMb = Annotated[int, Field(ge=0, le=MAX_MEMORY_MB)]
