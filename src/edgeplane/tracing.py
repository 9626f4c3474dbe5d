"""Optional OpenTelemetry traces of a task's path (docs/metrics.md, "Traces").

Off by default. This module never imports OpenTelemetry: :func:`tracer` returns None
unless ``--otel-endpoint`` is set, and only then is :mod:`edgeplane.otel` (which does)
imported. Callers keep the None and check it once per request or per message, so tracing
that is off costs nothing else.

The trace context travels in the MQTT messages as a W3C ``traceparent``
(``00-<trace id>-<span id>-<flags>``): on a ``task.start`` assignment (manager → worker,
root → cluster) and on a task's end event (back). The parsing here is pure: a value that
is not a well-formed traceparent is ignored (and counted by the receiver), never an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from edgeplane.errors import Invalid

if TYPE_CHECKING:
    from edgeplane.otel import Tracer

#: The longest traceparent accepted: version 00's is 55 characters; a later version may
#: append fields (W3C Trace Context §3.2.4), which are ignored, up to this bound.
MAX_TRACEPARENT = 128
#: The longest OTLP endpoint URL accepted.
MAX_ENDPOINT = 2048

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass(frozen=True)
class Parent:
    """A remote span a new span is the child of."""

    trace_id: int
    span_id: int
    flags: int


def parse(value: object) -> Parent | None:
    """The span a ``traceparent`` names, or None when it is not a well-formed one."""
    if not isinstance(value, str) or not 55 <= len(value) <= MAX_TRACEPARENT:
        return None
    found = _TRACEPARENT.fullmatch(value[:55])
    if found is None:
        return None
    version, trace_hex, span_hex, flags_hex = found.groups()
    if version == "ff" or (version == "00" and len(value) != 55):
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return Parent(trace_id=trace_id, span_id=span_id, flags=int(flags_hex, 16))


def format_parent(trace_id: int, span_id: int, flags: int) -> str:
    """The version-00 ``traceparent`` of a span."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags & 0xFF:02x}"


def bounded(value: object) -> str | None:
    """A received ``traceparent`` field as a message keeps it: an over-long or non-text one
    becomes ``""`` (never valid, so counted where it is read) instead of being held."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TRACEPARENT:
        return ""
    return value


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of ``--otel-endpoint``: a collector's base URL
    (``http://collector:4318``) gets ``/v1/traces``; a URL ending in it is kept."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{endpoint!r} is not an http:// or https:// URL")
    if parts.path.rstrip("/").endswith("/v1/traces"):
        return endpoint
    return endpoint.rstrip("/") + "/v1/traces"


def tracer(endpoint: str, service: str) -> Tracer | None:
    """A tracer exporting to ``endpoint`` as ``service``; None (and no OpenTelemetry
    import) when ``endpoint`` is empty."""
    if not endpoint:
        return None
    try:
        from edgeplane.otel import Tracer
    except ImportError as exc:
        raise Invalid(
            f"--otel-endpoint needs the otel extra (pip install 'edgeplane[otel]'): {exc}",
            field="otel_endpoint",
        ) from None
    return Tracer(traces_url(endpoint), service)
