"""Traces of a task's path as a user gets them: `edgeplane up --otel-endpoint` exporting to
a real OTLP/HTTP receiver (a small server here, decoding the protobuf with
opentelemetry-proto), one task's spans in one trace from the API to its stored result."""

from __future__ import annotations

import base64
import gzip
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_up import EDGEPLANE, free_port, stop, wait_healthy, wait_until

trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2", reason="the otel extra"
)

pytestmark = pytest.mark.timeout(120)

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@dataclass(frozen=True)
class Received:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, Any]


class Collector(ThreadingHTTPServer):
    spans: list[Received]


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        request = trace_service.ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            named = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.server.spans.append(
                        Received(
                            service=named.get("service.name", ""),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        answer = trace_service.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector(("127.0.0.1", 0), _Handler)
    server.spans = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _up(tmp_path: Path, collector: Collector, *args: str) -> Iterator[tuple[str, str]]:
    port = free_port()
    env = {
        **os.environ,
        "EDGEPLANE_DATA_DIR": str(tmp_path),
        # the SDK's batch processor exports every 50 ms instead of 5 s
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    env.pop("EDGEPLANE_URL", None)
    env.pop("EDGEPLANE_TOKEN", None)
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    proc = subprocess.Popen(
        [*EDGEPLANE, "up", *args, "--port", str(port), "--otel-endpoint", endpoint],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url, (tmp_path / "admin-token").read_text().strip()
    finally:
        stop(proc)


@pytest.fixture
def traced_up(tmp_path: Path, collector: Collector) -> Iterator[tuple[str, str]]:
    yield from _up(tmp_path, collector, "--workers", "1")


@pytest.fixture
def traced_clusters(tmp_path: Path, collector: Collector) -> Iterator[tuple[str, str]]:
    yield from _up(tmp_path, collector, "--clusters", "1", "--workers", "1")


def _task_spans(
    collector: Collector,
    task_id: str,
    services: tuple[str, ...] = ("edgeplane-manager", "edgeplane-worker"),
) -> dict[str, Received] | None:
    """The dispatch, run and stored spans of the task's first attempt that ``services``
    sent, once all came (a root and its cluster name a first attempt alike)."""
    found = {
        s.name: s
        for s in list(collector.spans)
        if s.attributes.get("edgeplane.task.id") == task_id and s.service in services
    }
    wanted = {"dispatch", "result stored"}
    if "edgeplane-worker" in services:
        wanted.add("task.run")
    return found if wanted <= found.keys() else None


def _add(tmp_path: Path) -> dict[str, Any]:
    add = tmp_path / "examples" / "add.wasm"
    wait_until(add.exists, "the examples")
    return {
        "name": "add",
        "start": True,
        "inputs": [20, 22],
        "file": base64.b64encode(add.read_bytes()).decode(),
    }


def test_one_trace_from_the_api_to_the_stored_result(
    traced_up: tuple[str, str], collector: Collector, tmp_path: Path
) -> None:
    url, token = traced_up
    body = _add(tmp_path)
    headers = {
        "Authorization": f"Bearer {token}",
        "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
    }
    answer = httpx.post(f"{url}/api/v1/tasks?wait=30", json=body, headers=headers, timeout=40)
    assert answer.status_code == 201, answer.text
    task = answer.json()
    assert task["state"] == "completed" and task["results"] == [42]

    spans = wait_until(lambda: _task_spans(collector, task["id"]), "the task's spans")
    dispatch, run, stored = spans["dispatch"], spans["task.run"], spans["result stored"]
    by_id = {s.span_id: s for s in list(collector.spans)}
    submit = by_id[dispatch.parent]
    request = by_id[submit.parent]
    assert (submit.name, request.name) == ("submit", "POST /api/v1/tasks")
    # the client's trace, continued: the request's span is the child of its header's
    assert request.parent == CLIENT_SPAN
    chain = [request, submit, dispatch, run, stored]
    assert {s.trace_id for s in chain} == {CLIENT_TRACE}
    assert run.parent == dispatch.span_id and stored.parent == run.span_id
    assert run.service == "edgeplane-worker" and run.attributes["edgeplane.task.state"] == (
        "completed"
    )
    assert {s.service for s in (request, submit, dispatch, stored)} == {"edgeplane-manager"}
    inside = {s.name: s for s in list(collector.spans) if s.parent == request.span_id}
    assert inside["admission"].trace_id == CLIENT_TRACE
    commits = [s for s in collector.spans if s.name == "store commit"]
    assert any(s.parent == submit.span_id for s in commits)

    # An ill-formed traceparent is ignored (a trace of its own) and counted, never refused.
    bad = {"Authorization": f"Bearer {token}", "traceparent": "00-not-a-trace-01"}
    answer = httpx.post(f"{url}/api/v1/tasks?wait=30", json=body, headers=bad, timeout=40)
    assert answer.status_code == 201 and answer.json()["state"] == "completed", answer.text
    metrics = httpx.get(f"{url}/metrics").text
    assert "edgeplane_trace_contexts_invalid_total 1.0" in metrics
    ignored = wait_until(lambda: _task_spans(collector, answer.json()["id"]), "its spans")
    assert ignored["dispatch"].trace_id != CLIENT_TRACE

    # A batch without a traceparent: a trace of its own, each task's path in it.
    batch = {"tasks": [{**body, "inputs": [n, 1]} for n in range(2)]}
    made = httpx.post(
        f"{url}/api/v1/tasks/batch",
        json=batch,
        headers={"Authorization": f"Bearer {token}"},
        timeout=40,
    )
    assert made.status_code == 201, made.text
    ids = [t["id"] for t in made.json()["items"]]
    found = [wait_until(lambda i=i: _task_spans(collector, i), f"spans of {i}") for i in ids]
    traces = {s["result stored"].trace_id for s in found}
    assert len(traces) == 1 and traces != {CLIENT_TRACE}
    (root,) = [s for s in collector.spans if s.name == "POST /api/v1/tasks/batch"]
    assert root.trace_id in traces and root.parent == ""


def test_the_root_trace_goes_on_in_the_cluster(
    traced_clusters: tuple[str, str], collector: Collector, tmp_path: Path
) -> None:
    url, token = traced_clusters
    headers = {"Authorization": f"Bearer {token}"}

    def online() -> bool:
        items = httpx.get(f"{url}/api/v1/clusters", headers=headers).json()["items"]
        return any(c["state"] == "online" and c["aggregate"]["workers"] == 1 for c in items)

    wait_until(online, "the cluster to register", timeout=30)
    answer = httpx.post(f"{url}/api/v1/tasks?wait=30", json=_add(tmp_path), headers=headers)
    assert answer.status_code == 201, answer.text
    task = answer.json()
    assert task["state"] == "completed"

    root = wait_until(
        lambda: _task_spans(collector, task["id"], ("edgeplane-root",)), "the root's spans"
    )
    trace = root["dispatch"].trace_id

    def in_cluster() -> Received | None:
        # the cluster's dispatch of the task to its worker: a child of the root's
        return next(
            (
                s
                for s in list(collector.spans)
                if s.name == "dispatch" and s.parent == root["dispatch"].span_id
            ),
            None,
        )

    dispatch = wait_until(in_cluster, "the cluster's dispatch")
    assert dispatch.service == "edgeplane-manager" and dispatch.trace_id == trace
    local = dispatch.attributes["edgeplane.task.id"]
    spans = wait_until(lambda: _task_spans(collector, local), "the cluster's spans")
    assert spans["task.run"].parent == dispatch.span_id
    assert spans["result stored"].parent == spans["task.run"].span_id
    assert {s.trace_id for s in spans.values()} == {trace}
    # the root's stored result: its own dispatch's child (the cluster sends no context back)
    assert root["result stored"].parent == root["dispatch"].span_id
