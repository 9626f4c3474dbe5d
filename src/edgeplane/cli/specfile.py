"""Job and workflow spec files: YAML or JSON, with each task's ``file:`` read into base64.

A spec names its modules by path relative to the spec file itself, so a directory of a
spec and its modules works from anywhere; the API only ever gets base64. Every problem is
an :class:`~edgeplane.errors.Invalid` naming where it is (``tasks[1].file``), which the
CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from edgeplane.client import example_module
from edgeplane.errors import Invalid

SpecKind = Literal["job", "workflow"]


def load_spec(path: Path, kind: SpecKind) -> dict[str, Any]:
    """The ``POST /jobs`` or ``POST /workflows`` body the file at ``path`` describes."""
    doc = parse(path, _read_text(path))
    if not isinstance(doc, dict):
        raise Invalid(f"{path}: expected a mapping with `tasks`, got {_kind_of(doc)}")
    tasks = doc.get("tasks")
    if isinstance(tasks, list):
        doc["tasks"] = [with_module(t, i, path.parent) for i, t in enumerate(tasks)]
    check(doc, kind)
    return doc


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise Invalid(f"{path} is not a text file (UTF-8 YAML or JSON)") from None


def parse(path: Path, text: str) -> Any:
    """JSON for ``.json`` (or text that starts like JSON without a known suffix), else YAML."""
    suffix = path.suffix.lower()
    is_json = suffix == ".json" or (
        suffix not in (".yaml", ".yml") and text.lstrip().startswith(("{", "["))
    )
    return _parse_json(path, text) if is_json else _parse_yaml(path, text)


def _parse_json(path: Path, text: str) -> Any:
    import orjson  # not json: it takes NaN, and nesting past the stack is a RecursionError

    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise Invalid(
            f"{path}: bad JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None


def _parse_yaml(path: Path, text: str) -> Any:
    from edgeplane import safeyaml

    try:
        return safeyaml.load(text, str(path))
    except Invalid as exc:
        raise Invalid(exc.detail) from None  # about the file, not a field of the spec


def with_module(task: Any, index: int, base: Path, *, key: str = "tasks") -> Any:
    """The task (or service) with ``file`` as base64 when it names a module file;
    errors name ``{key}[index].file``."""
    if not isinstance(task, dict) or task.get("file") is None:
        return task
    where = f"{key}[{index}].file"
    file = task["file"]
    if not isinstance(file, str):
        raise Invalid(f"{where}: expected a path to a .wasm file or base64", field=where)
    module = _module_path(base, file)
    if module is None:
        if _is_base64(file):
            return task
        raise Invalid(f"{where}: no such file: {base / file}", field=where)
    try:
        data = module.read_bytes()
    except OSError as exc:
        raise Invalid(
            f"{where}: cannot read {module}: {exc.strerror or exc}", field=where
        ) from None
    return {**task, "file": base64.b64encode(data).decode("ascii")}


def _module_path(base: Path, file: str) -> Path | None:
    """``file`` as an existing file, relative to ``base``; None when it is not one."""
    try:
        candidate = base / Path(file).expanduser()
        if candidate.is_file():
            return candidate
        return example_module(file) if not Path(file).is_absolute() else None
    except (OSError, ValueError):  # too long for a name, or a NUL in it: not a path
        return None


def _is_base64(text: str) -> bool:
    compact = "".join(text.split())
    if not compact:
        return False
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def check(doc: dict[str, Any], kind: SpecKind) -> None:
    """Validate against the API's own model, so a mistake is caught before any upload."""
    from pydantic import ValidationError

    from edgeplane.model import JobSpec, WorkflowSpec

    model = JobSpec if kind == "job" else WorkflowSpec
    try:
        model.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = field_path(first["loc"]) or kind
        raise Invalid(f"{where}: {first['msg']}", field=where) from None


def field_path(loc: Sequence[int | str]) -> str:
    """``("tasks", 1, "file")`` as ``tasks[1].file``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _kind_of(value: Any) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"
