"""The spans of a task's path, exported over OTLP/HTTP (docs/metrics.md, "Traces").

Imported only when tracing is on (``edgeplane.tracing.tracer``): it needs the ``otel``
extra. Each role has a tracer of its own (its own provider, named ``edgeplane-manager``,
``edgeplane-root`` or ``edgeplane-worker``), never the process's global one: FastAPI
would trace every request once a global provider is set.

One trace per request that makes tasks:

- ``POST /api/v1/tasks`` (or ``/batch``): the API's receipt, a child of the client's
  ``traceparent`` header when it sends one;
- ``admission`` (validation, modules stored), then ``submit`` (the tasks' insert and their
  placement when nothing waits) with ``store commit`` (the insert's transaction) inside;
- per task and attempt ``dispatch``, a child of ``submit``: from the task's placement to
  its ``task.start`` being published; its context goes to the member in the assignment;
- ``task.run`` on the worker, a child of ``dispatch``: from the attempt's start to its end;
  its context comes back on the final event;
- ``result stored`` on the manager, a child of ``task.run`` (of ``dispatch`` when the
  worker sent none): from the final event's receipt to its commit.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgeplane import tracing

if TYPE_CHECKING:
    from edgeplane.model import Task
    from edgeplane.protocol import Assignment, TaskEvent

T = TypeVar("T")

#: tasks whose context a manager keeps (until their end is stored); beyond it the oldest
#: are forgotten: their later spans start traces of their own
MAX_TASKS = 100_000
#: the requests traced: those that make tasks
TRACED = frozenset({"/api/v1/tasks", "/api/v1/tasks/batch"})


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class Tracer:
    def __init__(self, url: str, service: str, exporter: SpanExporter | None = None) -> None:
        self.service = service
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service}), shutdown_on_exit=False
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(exporter if exporter is not None else OTLPSpanExporter(url))
        )
        self._tracer = self.provider.get_tracer("edgeplane")
        #: received traceparents that were not well-formed (ignored)
        self.invalid = 0
        #: per live task: the context of its ``submit`` and of its last ``dispatch``
        self._tasks: OrderedDict[str, tuple[otel_context.Context, otel_context.Context]] = (
            OrderedDict()
        )

    # ------------------------------------------------------------------ basics
    def remote(self, traceparent: str | None) -> otel_context.Context | None:
        """The context of a received ``traceparent`` (None: none given, or a bad one,
        counted)."""
        if traceparent is None:
            return None
        parent = tracing.parse(traceparent)
        if parent is None:
            self.invalid += 1
            return None
        span = NonRecordingSpan(
            SpanContext(
                trace_id=parent.trace_id,
                span_id=parent.span_id,
                is_remote=True,
                trace_flags=TraceFlags(parent.flags & 0x01),
            )
        )
        return trace.set_span_in_context(span)

    def start(
        self,
        name: str,
        parent: otel_context.Context | None = None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: dict[str, Any] | None = None,
        start: float | None = None,
    ) -> Span:
        """A span, not made current; ``parent`` None: the current one (or a new trace)."""
        return self._tracer.start_span(
            name,
            context=parent,
            kind=kind,
            attributes=attributes,
            start_time=None if start is None else _ns(start),
        )

    def span(
        self, name: str, attributes: dict[str, Any] | None = None
    ) -> AbstractContextManager[Span]:
        """A span made current while the block runs, a child of the current one."""
        return self._tracer.start_as_current_span(name, attributes=attributes)

    async def timed(self, name: str, work: Awaitable[T]) -> T:
        with self.span(name):
            return await work

    @staticmethod
    def traceparent(span: Span) -> str:
        found = span.get_span_context()
        return tracing.format_parent(found.trace_id, found.span_id, found.trace_flags)

    async def shutdown(self) -> None:
        """Export what is left and stop (in a thread: the export is a blocking request)."""
        await asyncio.to_thread(self.provider.shutdown)

    # ------------------------------------------------------------------ the manager
    def adopt(self, tasks: Iterable[Task]) -> None:
        """Tasks submitted under the current span: their dispatches are its children
        (those of a task :meth:`expect` named, children of the span it gave)."""
        current = otel_context.get_current()
        known = self._tasks
        for task in tasks:
            if task.id not in known:
                known[task.id] = (current, current)
        self._trim()

    def expect(self, task_id: str, traceparent: str) -> None:
        """A task about to be submitted continues a trace from afar (a root's dispatch
        to this cluster): its dispatches here are children of ``traceparent``'s span."""
        parent = self.remote(traceparent)
        if parent is not None:
            self._tasks[task_id] = (parent, parent)
            self._trim()

    def _trim(self) -> None:
        known = self._tasks
        while len(known) > MAX_TASKS:
            known.popitem(last=False)

    def dispatching(
        self, tasks: Sequence[Task], assignments: Sequence[Assignment], member_id: str
    ) -> list[Span]:
        """The ``dispatch`` spans of one ``task.start``, each from its task's placement;
        their contexts go into the assignments. End them once it is published."""
        spans = []
        for task, assignment in zip(tasks, assignments, strict=True):
            submitted = self._tasks.get(task.id)
            span = self.start(
                "dispatch",
                submitted[0] if submitted is not None else otel_context.Context(),
                kind=SpanKind.PRODUCER,
                attributes={
                    "edgeplane.task.id": task.id,
                    "edgeplane.task.attempt": task.attempt,
                    "edgeplane.member": member_id,
                },
                start=task.updated_at or None,
            )
            if submitted is not None:
                self._tasks[task.id] = (submitted[0], trace.set_span_in_context(span))
            assignment.traceparent = self.traceparent(span)
            spans.append(span)
        return spans

    def receiving(self, event: TaskEvent, member_id: str) -> Span:
        """The ``result stored`` span of a final event: a child of the run it names, else
        of the attempt's dispatch. End it once the event's version is committed."""
        parent = self.remote(event.traceparent)
        if parent is None:
            known = self._tasks.get(event.task_id)
            parent = known[1] if known is not None else otel_context.Context()
        return self.start(
            "result stored",
            parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "edgeplane.task.id": event.task_id,
                "edgeplane.task.attempt": event.attempt,
                "edgeplane.task.state": event.state,
                "edgeplane.member": member_id,
            },
        )

    def stored(self, spans: Sequence[Span], ended: Iterable[Task]) -> None:
        """The results are durable: end their spans, forget the tasks that ended."""
        for span in spans:
            span.end()
        for task in ended:
            if task.terminal:
                self._tasks.pop(task.id, None)

    # ------------------------------------------------------------------ the worker
    def ran(
        self,
        traceparent: str | None,
        *,
        task_id: str,
        attempt: int,
        runtime: str,
        worker_id: str,
        state: str,
        started: float | None,
        ended: float,
    ) -> str:
        """The ``task.run`` span of an ended attempt, a child of its dispatch; its
        traceparent, for the final event."""
        span = self.start(
            "task.run",
            self.remote(traceparent) or otel_context.Context(),
            kind=SpanKind.CONSUMER,
            attributes={
                "edgeplane.task.id": task_id,
                "edgeplane.task.attempt": attempt,
                "edgeplane.task.runtime": runtime,
                "edgeplane.task.state": state,
                "edgeplane.worker.id": worker_id,
            },
            start=started if started is not None else ended,
        )
        span.end(end_time=_ns(ended))
        return self.traceparent(span)


class TraceRequests:
    """ASGI: a server span around each request that makes tasks (the others pass by)."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or path not in TRACED:
            await self.app(scope, receive, send)
            return
        header = None
        for key, value in scope["headers"]:
            if key == b"traceparent":
                header = bytes(value).decode("latin-1")
        span = self.tracer.start(
            f"POST {path}",
            self.tracer.remote(header),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "url.path": path},
        )
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self.app(scope, receive, sending)
        finally:
            otel_context.detach(token)
            span.set_attribute("http.response.status_code", status)
            if status >= 500 or not status:
                span.set_status(trace.StatusCode.ERROR)
            span.end()
