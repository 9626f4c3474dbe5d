"""Every input's bounds in one place: sizes, depths and number ranges (docs/limits.md).

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

# --- free-form JSON (metadata, inputs) ---------------------------------------------------
#: Nesting of one free-form value: objects and arrays inside each other.
MAX_DEPTH = 32
#: Values (objects, arrays and scalars together) in one free-form value.
MAX_NODES = 10_000
#: Items of one array, keys of one object, characters of one key or string.
MAX_ITEMS = 1_000
MAX_KEYS = 1_000
MAX_KEY = 256
MAX_STRING = 1_048_576
#: Integers a free-form value may hold: what a 64-bit column or reader (orjson) carries.
MIN_INT = -(2**63)
MAX_INT = 2**63 - 1

# --- named strings ------------------------------------------------------------------------
#: Names and references: task, job, workflow, service and cluster names, ids, exports.
MAX_NAME = 256
#: One command-line argument or environment value (Linux takes 128 KiB per argument).
MAX_ARG = 65_536
#: Arguments of one command (or ``cli_args``) and variables of one ``env``.
MAX_ARGS = 1_024
#: Labels of one constraint set, and the length of a label's key or value.
MAX_LABELS = 64
#: A cron expression, an IANA timezone name, an image reference.
MAX_CRON = 256
MAX_TIMEZONE = 64
MAX_URL = 2_048

# --- numbers -----------------------------------------------------------------------------
#: Extra attempts of a task (-1: forever).
MAX_RETRIES = 1_000
MAX_PRIORITY = 100
#: Tasks in one batch request.
MAX_BATCH = 1_000
#: Tasks of one job or workflow (``Settings.max_workflow_tasks`` may lower it), services of
#: one application.
MAX_RUN_TASKS = 10_000
MAX_SERVICES = 1_000
MAX_REPLICAS = 10_000
#: Resources a task or a service may ask for.
MAX_CPUS = 4_096.0
MAX_MEMORY_MB = 2**31 - 1
#: Pages of every list: ``limit`` items from ``offset`` (an offset past 2^63 broke SQL).
MAX_LIMIT = 1_000
MAX_OFFSET = 1_000_000_000
#: Longest a request may hold its answer (``?wait=``), in seconds.
MAX_WAIT_S = 60.0
#: Half the earth's circumference: a geo radius past it covers everything anyway.
MAX_RADIUS_KM = 20_038.0

# --- YAML (spec files, application descriptors) ------------------------------------------
#: Bytes of one YAML document (parsing YAML costs about 1 s a MB in pure Python).
MAX_YAML_BYTES = 1_048_576
#: Aliases (``*name``) one YAML document may use: expanding a few nested aliases is how a
#: few hundred bytes become gigabytes ("billion laughs").
MAX_YAML_ALIASES = 64


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
Cron = Annotated[str, Field(max_length=MAX_CRON, pattern=_NO_NUL)]
Timezone = Annotated[str, Field(max_length=MAX_TIMEZONE, pattern=_NO_NUL)]
Url = Annotated[str, Field(max_length=MAX_URL, pattern=_NO_NUL)]
Retries = Annotated[int, Field(ge=-1, le=MAX_RETRIES)]
Priority = Annotated[int, Field(ge=0, le=MAX_PRIORITY)]
Cpus = Annotated[float, Field(ge=0, le=MAX_CPUS, allow_inf_nan=False)]
MemoryMb = Annotated[int, Field(ge=0, le=MAX_MEMORY_MB)]
