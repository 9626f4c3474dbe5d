"""Traces (docs/metrics.md, "Traces"): the traceparent's parsing and bounds, a bad one
ignored and counted (never a message's failure), and tracing that is off importing
nothing of OpenTelemetry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeplane import tracing
from edgeplane.config import Settings
from edgeplane.errors import Invalid
from edgeplane.protocol import Assignment, StartTasks, TaskEvent
from edgeplane.tracing import MAX_TRACEPARENT, bounded, format_parent, parse, traces_url

otel = pytest.importorskip("edgeplane.otel", reason="the otel extra")
memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ids = st.integers(min_value=1, max_value=2**128 - 1)
span_ids = st.integers(min_value=1, max_value=2**64 - 1)


@given(ids, span_ids, st.integers(min_value=0, max_value=255))
def test_a_formatted_traceparent_parses_back(trace_id: int, span_id: int, flags: int) -> None:
    text = format_parent(trace_id, span_id, flags)
    assert len(text) == 55
    assert parse(text) == tracing.Parent(trace_id=trace_id, span_id=span_id, flags=flags)


@given(st.text(max_size=200))
def test_any_text_parses_or_is_none_never_raises(text: str) -> None:
    found = parse(text)
    if found is not None:
        assert 55 <= len(text) <= MAX_TRACEPARENT
        assert found.trace_id and found.span_id


@pytest.mark.parametrize(
    "bad",
    [
        "",
        GOOD[:-1],
        GOOD + "-extra",  # version 00 has no more fields
        GOOD.upper(),
        "ff" + GOOD[2:],  # the invalid version
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # the all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
        "01" + GOOD[2:] + "x",  # a later version: more fields after a '-' only
        "01" + GOOD[2:] + "-" + "a" * MAX_TRACEPARENT,  # over the bound
        None,
        42,
    ],
)
def test_ill_formed_traceparents_are_none(bad: object) -> None:
    assert parse(bad) is None


def test_a_later_version_may_append_fields() -> None:
    assert parse("cc" + GOOD[2:] + "-what-comes-later") is not None


def test_messages_bound_the_field_and_never_fail_on_it() -> None:
    base = {"task_id": "t1", "attempt": 1, "runtime": "wasm"}
    assert Assignment.model_validate(base).traceparent is None
    assert Assignment.model_validate({**base, "traceparent": GOOD}).traceparent == GOOD
    # over-long or not text: kept as "" (never valid), not held, not the message's failure
    huge = Assignment.model_validate({**base, "traceparent": "0" * 100_000})
    assert huge.traceparent == ""
    start = StartTasks.model_validate({"tasks": [{**base, "traceparent": {"x": 1}}]})
    assert [a.task_id for a in start.tasks] == ["t1"] and not start.unrunnable
    event = TaskEvent.model_validate(
        {"task_id": "t1", "attempt": 1, "state": "completed", "traceparent": "bad"}
    )
    assert event.traceparent == "bad"
    assert bounded("x" * (MAX_TRACEPARENT + 1)) == "" and bounded(GOOD) == GOOD
    # nothing on the wire when tracing is off: the field is left out at its default
    assert (
        b"traceparent"
        not in Assignment.model_validate(base).model_dump_json(exclude_defaults=True).encode()
    )


def test_the_endpoint_is_an_http_url() -> None:
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("https://c/otlp/v1/traces") == "https://c/otlp/v1/traces"
    with pytest.raises(ValueError):
        traces_url("grpc://c:4317")
    with pytest.raises(ValueError):
        Settings(otel_endpoint="c:4318")
    assert tracing.tracer("", "edgeplane-manager") is None


def _tracer() -> tuple[otel.Tracer, memory.InMemorySpanExporter]:
    exporter = memory.InMemorySpanExporter()
    return otel.Tracer("http://127.0.0.1:9/v1/traces", "test", exporter), exporter


def test_a_bad_traceparent_is_counted_and_the_span_starts_a_trace() -> None:
    tracer, exporter = _tracer()
    sent = tracer.ran(
        "00-zz",
        task_id="t1",
        attempt=1,
        runtime="wasm",
        worker_id="w1",
        state="completed",
        started=10.0,
        ended=11.5,
    )
    assert tracer.invalid == 1
    good = tracer.ran(
        GOOD,
        task_id="t2",
        attempt=1,
        runtime="wasm",
        worker_id="w1",
        state="failed",
        started=None,
        ended=12.0,
    )
    assert tracer.invalid == 1
    tracer.provider.force_flush()
    first, second = exporter.get_finished_spans()
    assert first.parent is None and parse(sent) is not None
    assert second.parent is not None and second.parent.span_id == 0x00F067AA0BA902B7
    assert f"{second.context.trace_id:032x}" == GOOD[3:35]
    assert parse(good) == tracing.Parent(
        trace_id=second.context.trace_id, span_id=second.context.span_id, flags=1
    )
    assert (first.start_time, first.end_time) == (10_000_000_000, 11_500_000_000)
    tracer.provider.shutdown()


def test_a_stored_result_falls_back_on_the_attempts_dispatch() -> None:
    tracer, exporter = _tracer()
    event = TaskEvent(task_id="t1", attempt=1, state="completed", traceparent="")
    span = tracer.receiving(event, "w1")  # nothing known of t1: a trace of its own
    tracer.stored([span], [])
    assert tracer.invalid == 1
    tracer.provider.force_flush()
    (stored,) = exporter.get_finished_spans()
    assert stored.parent is None and stored.name == "result stored"
    tracer.provider.shutdown()


def test_an_unsampled_trace_records_nothing_and_says_so_downstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    tracer, exporter = _tracer()
    unsampled = GOOD[:-2] + "00"  # the client did not sample it: nor does the worker
    sent = tracer.ran(
        unsampled,
        task_id="t1",
        attempt=1,
        runtime="wasm",
        worker_id="w1",
        state="completed",
        started=1.0,
        ended=2.0,
    )
    found = parse(sent)
    assert found is not None and found.flags == 0 and f"{found.trace_id:032x}" == GOOD[3:35]
    tracer.provider.force_flush()
    assert exporter.get_finished_spans() == ()
    tracer.provider.shutdown()


_OFF = """
import sys
from pathlib import Path
from edgeplane.config import Settings
from edgeplane.roles.worker import build_worker

settings = Settings(data_dir=Path(sys.argv[1]), otel_endpoint=sys.argv[2])
agent = build_worker(
    settings, broker_url="mqtt://127.0.0.1:1", worker_id="w1", data_dir=Path(sys.argv[1]) / "w"
)
worker_only = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
from edgeplane.manager import Manager
from edgeplane.store.memory import MemoryStore

manager = Manager(settings, MemoryStore(), "mqtt://127.0.0.1:1")
print(agent.tracer is None, manager.tracer is None, "edgeplane.otel" in sys.modules,
      "opentelemetry.sdk" in sys.modules, bool(worker_only))
"""


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        # off: nothing of OpenTelemetry in a worker; in a manager only the API that
        # FastAPI itself imports (fastapi>=0.165), never the SDK nor edgeplane.otel
        ("", "True True False False False"),
        ("http://127.0.0.1:9", "False False True True True"),  # the control: on
    ],
)
def test_tracing_off_imports_nothing(tmp_path: Path, endpoint: str, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_OFF), str(tmp_path), endpoint],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == expected


def test_without_the_extra_the_endpoint_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "edgeplane.otel", None)  # as if not installed
    with pytest.raises(Invalid) as raised:
        tracing.tracer("http://127.0.0.1:9", "edgeplane-worker")
    assert raised.value.field == "otel_endpoint" and "otel extra" in raised.value.detail


def test_a_bad_endpoint_is_exit_2_naming_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edgeplane", "worker", "--otel-endpoint", "grpc://c:4317"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "EDGEPLANE_DATA_DIR": str(tmp_path)},
    )
    assert done.returncode == 2, done.stderr
    assert "otel_endpoint" in done.stderr
