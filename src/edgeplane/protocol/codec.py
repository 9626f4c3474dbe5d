"""The one codec: JSON via orjson, wrapped in the versioned envelope of DESIGN §4."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic_core import to_json

from edgeplane.errors import Invalid

VERSION = 1


@dataclass(frozen=True)
class Envelope:
    type: str
    body: dict[str, Any]
    id: str
    ts: float
    v: int = VERSION
    #: the sender's leadership term (``manager/leadership.py``); 0: not a leader's
    term: int = 0


def encode(
    type_: str, body: BaseModel | dict[str, Any], *, msg_id: str | None = None, term: int = 0
) -> bytes:
    """One message. Fields left at their defaults are not sent (receivers fill them in
    from the same models): a task assignment shrinks from ~470 to ~190 bytes. ``term``:
    a leader's commands carry its term, so members refuse a deposed leader's."""
    fields: dict[str, Any] = {
        "v": VERSION,
        "type": type_,
        "id": msg_id or uuid.uuid4().hex,
        "ts": time.time(),
    }
    if term:
        fields["term"] = term
    head = orjson.dumps(fields)
    if isinstance(body, BaseModel):
        # pydantic serialises straight to JSON bytes; no intermediate dict.
        payload = body.__pydantic_serializer__.to_json(body, exclude_defaults=True)
    else:
        try:
            payload = orjson.dumps(body)
        except TypeError:  # e.g. an int past 64 bits (a stored task's out-of-range limit)
            payload = to_json(body)
    return head[:-1] + b',"body":' + payload + b"}"


def decode(data: bytes | bytearray | str) -> Envelope:
    """Parse an envelope; raises :class:`Invalid` on anything malformed."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"not JSON: {exc}", field="payload") from None
    if not isinstance(raw, dict):
        raise Invalid("envelope is not an object", field="payload")
    if raw.get("v") != VERSION:
        raise Invalid(f"unsupported envelope version {raw.get('v')!r}", field="v")
    type_, body = raw.get("type"), raw.get("body")
    if not isinstance(type_, str) or not type_:
        raise Invalid("envelope has no type", field="type")
    if not isinstance(body, dict):
        raise Invalid("envelope body is not an object", field="body")
    msg_id = raw.get("id")
    ts = raw.get("ts")
    term = raw.get("term", 0)
    if not isinstance(term, int) or isinstance(term, bool) or not 0 <= term < 2**63:
        raise Invalid("envelope term is not a whole number >= 0", field="term")
    return Envelope(
        type=type_,
        body=body,
        id=msg_id if isinstance(msg_id, str) else "",
        ts=float(ts) if isinstance(ts, int | float) else 0.0,
        term=term,
    )
