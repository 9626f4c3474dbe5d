"""The MQTT fallback of a client's update: the message a training task publishes on
``{d}/fl/{experiment}/rounds/{round}/updates/{worker}`` when it cannot reach the
coordinator over HTTP (docs/fl.md).

One line of JSON, ``{"token": FL_TOKEN, "content_type": …, "attempt": N, "resend": M}``
(``attempt``: a long-lived client's, the round attempt it trained for; ``resend``: how
many times the client sent it before, unanswered), a newline, then the update's
body exactly as it would be POSTed (raw ``f32`` or ``.npz``). Binary, like the artifact
proxy's chunks: base64 in a JSON envelope would add a third to a model's bytes. The token
is checked as over HTTP; the topic's worker must be the one it names.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from edgeplane.fl.updates import NPZ, RAW, Rejected

#: The frame's header line: a token and a content type.
MAX_HEADER = 4096
#: The largest update taken over MQTT, checked before anything else is read of it
#: (64 MiB: 16M float32 parameters; the benchmark's 1M-parameter model is 4 MiB).
MAX_UPDATE = 64 * 2**20
CONTENT_TYPES = (RAW, NPZ)
#: The most times a client may say it sent an update before (the example client sends
#: it at most ~10 times: fl/client.py, ``RESEND_*``)
MAX_RESENDS = 1000


class Frame(NamedTuple):
    token: str
    content_type: str
    body: bytes
    attempt: int | None = None
    resend: int = 0


def frame(
    token: str,
    body: bytes,
    content_type: str = RAW,
    attempt: int | None = None,
    resend: int = 0,
) -> bytes:
    header: dict[str, object] = {"token": token, "content_type": content_type}
    if attempt is not None:
        header["attempt"] = attempt
    if resend:
        header["resend"] = resend
    return orjson.dumps(header) + b"\n" + body


def unframe(payload: bytes) -> Frame:
    """The frame's parts; Rejected("malformed") for anything else."""
    end = payload.find(b"\n", 0, MAX_HEADER + 1)
    if end < 0:
        raise Rejected("malformed", f"no header line in the first {MAX_HEADER} bytes")
    try:
        header = orjson.loads(payload[:end])
    except orjson.JSONDecodeError:
        raise Rejected("malformed", "the header line is not JSON", field="header") from None
    if not isinstance(header, dict) or not isinstance(header.get("token"), str):
        raise Rejected("malformed", "the header names no token", field="token")
    content_type = header.get("content_type", RAW)
    if content_type not in CONTENT_TYPES:
        raise Rejected(
            "malformed", f"content_type is one of {list(CONTENT_TYPES)}", field="content_type"
        )
    attempt = header.get("attempt")
    if attempt is not None and (type(attempt) is not int or not 0 <= attempt <= 1_000):
        raise Rejected("malformed", "attempt is a round attempt, 0..1000", field="attempt")
    resend = header.get("resend", 0)
    if type(resend) is not int or not 0 <= resend <= MAX_RESENDS:
        raise Rejected("malformed", f"resend is a count, 0..{MAX_RESENDS}", field="resend")
    return Frame(header["token"], content_type, payload[end + 1 :], attempt, resend)
