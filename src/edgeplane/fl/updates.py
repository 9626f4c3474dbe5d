"""The wire format of a model (a global version) and of a client's update.

Two encodings, one meaning (docs/fl.md):

* raw, ``application/x-edgeplane-f32``: one line of JSON (the header), a newline, then the
  arrays' float32 values, little-endian, C order, one after the other in the header's
  order. Header: ``{"format": "f32" | "f32-delta", "arrays": [{"name", "shape"}],
  "num_samples": N, "metrics": {...}}`` (a model leaves out the last two);
* ``.npz`` (``application/x-npz``): numpy's own archive of the arrays, the same header
  (its ``arrays`` may be left out) as JSON text in a uint8 array named ``__header__``.
  Read with ``allow_pickle=False``: nothing in an update runs code.

``f32`` carries full weights, ``f32-delta`` the change from the round's global model.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from edgeplane.errors import Invalid

F32 = np.dtype("<f4")
RAW = "application/x-edgeplane-f32"
NPZ = "application/x-npz"
HEADER = "__header__"
#: how an ``.npz`` (a zip archive) begins
ZIP_MAGIC = b"PK\x03\x04"
#: The header is small: names and shapes. Past this it is not an update.
MAX_HEADER = 64 * 1024
MAX_ARRAYS = 256
MAX_METRICS = 32

Arrays = dict[str, npt.NDArray[np.float32]]
Format = Literal["f32", "f32-delta"]


class Rejected(Invalid):
    """An update the coordinator will not take; ``reason`` is the short code counted."""

    def __init__(self, reason: str, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail, field=field, reason=reason)


@dataclass
class Update:
    arrays: Arrays
    format: Format = "f32"
    num_samples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def encode_raw(arrays: Mapping[str, npt.NDArray[Any]], **meta: Any) -> bytes:
    header = {
        "format": meta.pop("format", "f32"),
        "arrays": [{"name": n, "shape": list(a.shape)} for n, a in arrays.items()],
        **meta,
    }
    body = b"".join(np.ascontiguousarray(a, dtype=F32).tobytes() for a in arrays.values())
    return orjson.dumps(header) + b"\n" + body


def encode_npz(arrays: Mapping[str, npt.NDArray[Any]], **meta: Any) -> bytes:
    header = {"format": meta.pop("format", "f32"), **meta}
    buf = io.BytesIO()
    named: dict[str, Any] = {n: np.asarray(a, dtype=F32) for n, a in arrays.items()}
    named[HEADER] = np.frombuffer(orjson.dumps(header), dtype=np.uint8)
    np.savez(buf, **named)
    return buf.getvalue()


def decode(body: bytes, content_type: str = RAW) -> Update:
    """An update (or model) from its bytes; Rejected("malformed") names what is wrong."""
    if content_type.split(";")[0].strip() == NPZ:
        header, arrays = _npz(body)
    else:
        header, arrays = _raw(body)
    fmt = header.get("format", "f32")
    if fmt not in ("f32", "f32-delta"):
        raise Rejected("malformed", f"format must be f32 or f32-delta, not {fmt!r}", field="format")
    n = header.get("num_samples", 0)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise Rejected("malformed", "num_samples must be a whole number ≥ 0", field="num_samples")
    metrics = header.get("metrics", {})
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
        raise Rejected(
            "malformed",
            f"metrics must be an object of at most {MAX_METRICS} numbers",
            field="metrics",
        )
    clean: dict[str, float] = {}
    for key, value in metrics.items():
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise Rejected(
                "malformed", f"metric {key!r} must be a finite number", field=f"metrics.{key}"
            )
        clean[str(key)[:64]] = float(value)
    return Update(arrays=arrays, format=fmt, num_samples=n, metrics=clean)


def model_of(body: bytes) -> Arrays:
    """A whole model from its bytes, raw ``f32`` or ``.npz`` (told apart by the zip
    magic): the user-given initial model. Rejected("malformed" or "nonfinite") says why
    not; a delta is not a model."""
    update = decode(body, NPZ if body[:4] == ZIP_MAGIC else RAW)
    if update.format != "f32":
        raise Rejected("malformed", "a model holds full weights: format f32", field="format")
    if not update.arrays:
        raise Rejected("malformed", "a model needs at least one array", field="arrays")
    for name, values in update.arrays.items():
        if not np.isfinite(values).all():
            raise Rejected("nonfinite", f"array {name!r} holds NaN or Inf", field=name)
    return update.arrays


def _raw(body: bytes) -> tuple[dict[str, Any], Arrays]:
    end = body.find(b"\n", 0, MAX_HEADER + 1)
    if end < 0:
        raise Rejected(
            "malformed", f"no JSON header line in the first {MAX_HEADER} bytes", field="header"
        )
    try:
        header = orjson.loads(body[:end])
    except orjson.JSONDecodeError:
        raise Rejected("malformed", "the header line is not JSON", field="header") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), list):
        raise Rejected(
            "malformed", "the header must be an object with an arrays list", field="arrays"
        )
    specs = header["arrays"]
    if len(specs) > MAX_ARRAYS:
        raise Rejected("malformed", f"at most {MAX_ARRAYS} arrays", field="arrays")
    data = memoryview(body)[end + 1 :]
    arrays: Arrays = {}
    at = 0
    for i, spec in enumerate(specs):
        name, shape = _spec(spec, i)
        if name in arrays:
            raise Rejected("malformed", f"array {name!r} appears twice", field=f"arrays[{i}].name")
        size = math.prod(shape) * 4
        if at + size > len(data):
            raise Rejected(
                "malformed", f"the body ends inside array {name!r}", field=f"arrays[{i}]"
            )
        arrays[name] = (
            np.frombuffer(data[at : at + size], dtype=F32).reshape(shape).astype(np.float32)
        )
        at += size
    if at != len(data):
        raise Rejected("malformed", f"{len(data) - at} bytes past the last array", field="arrays")
    return header, arrays


def _spec(spec: Any, i: int) -> tuple[str, tuple[int, ...]]:
    if not isinstance(spec, dict):
        raise Rejected("malformed", "each array needs a name and a shape", field=f"arrays[{i}]")
    name, shape = spec.get("name"), spec.get("shape")
    if not isinstance(name, str) or not 0 < len(name) <= 128:
        raise Rejected(
            "malformed", "an array name is 1 to 128 characters", field=f"arrays[{i}].name"
        )
    if (
        not isinstance(shape, list)
        or len(shape) > 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape)
    ):
        raise Rejected(
            "malformed", "a shape is a list of at most 8 sizes ≥ 0", field=f"arrays[{i}].shape"
        )
    return name, tuple(shape)


def _npz(body: bytes) -> tuple[dict[str, Any], Arrays]:
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as archive:
            files = list(archive.files)
            if len(files) > MAX_ARRAYS + 1:
                raise Rejected("malformed", f"at most {MAX_ARRAYS} arrays", field="arrays")
            loaded = {name: archive[name] for name in files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError):
        raise Rejected(
            "malformed", "the body is not a readable .npz archive", field="body"
        ) from None
    header: Any = {}
    raw_header = loaded.pop(HEADER, None)
    if raw_header is not None:
        try:
            header = orjson.loads(raw_header.astype(np.uint8).tobytes())
        except orjson.JSONDecodeError:
            raise Rejected("malformed", f"{HEADER} is not JSON", field="header") from None
    if not isinstance(header, dict):
        raise Rejected("malformed", "the header must be a JSON object", field="header")
    arrays: Arrays = {}
    for name, value in loaded.items():
        if value.dtype.kind != "f":
            raise Rejected(
                "malformed", f"array {name!r} is not floating point", field=f"arrays.{name}"
            )
        arrays[name] = value.astype(np.float32)
    return header, arrays


def check(update: Update, model: Mapping[str, npt.NDArray[np.float32]]) -> Arrays:
    """The update's full weights, once its names and shapes match ``model`` and every
    value is finite; else Rejected("shape" or "nonfinite")."""
    if set(update.arrays) != set(model):
        missing = sorted(set(model) - set(update.arrays))
        extra = sorted(set(update.arrays) - set(model))
        raise Rejected(
            "shape",
            f"arrays differ from the model's: missing {missing}, unknown {extra}",
            field="arrays",
        )
    full: Arrays = {}
    for name, base in model.items():
        got = update.arrays[name]
        if got.shape != base.shape:
            raise Rejected(
                "shape",
                f"array {name!r} has shape {list(got.shape)}, the model's is {list(base.shape)}",
                field=name,
            )
        if not np.isfinite(got).all():
            raise Rejected("nonfinite", f"array {name!r} holds NaN or Inf", field=name)
        full[name] = (base + got).astype(np.float32) if update.format == "f32-delta" else got
    return full
