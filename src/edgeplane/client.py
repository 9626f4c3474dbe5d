"""Python client for the edgeplane REST API: :class:`Client` and its twin :class:`AsyncClient`.

Both clients build every request with the same ``_Call`` builders and read every response
with the same parsers, so they cannot drift apart; only the line that sends differs.
Failures come back as :mod:`edgeplane.errors` classes, mapped from problem+json by status.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from edgeplane import __version__
from edgeplane.clock import Clock, SystemClock
from edgeplane.errors import (
    Conflict,
    EdgeplaneError,
    Forbidden,
    Invalid,
    NotFound,
    TaskFailure,
    Unauthorized,
    Unavailable,
)
from edgeplane.model import Page, Task, TaskLogs, TaskResults, Worker

__all__ = [
    "BATCH_LIMIT",
    "DEFAULT_URL",
    "AsyncClient",
    "Client",
    "TaskLogs",
    "TaskResults",
    "WaitTimeout",
    "resolve_endpoint",
]

DEFAULT_URL = "http://127.0.0.1:7070"
API_PREFIX = "/api/v1"
#: Most tasks ``POST /tasks/batch`` accepts in one call.
BATCH_LIMIT = 1000
#: Longest single long-poll; ``wait`` loops over several of these.
LONG_POLL_S = 30.0

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
FileArg = bytes | str | Path | None


class WaitTimeout(Unavailable, TimeoutError):
    """``wait``/``result`` ran out of time; the task itself goes on (``task`` is its last state)."""

    title = "Wait timed out"

    def __init__(self, detail: str, *, task: Task) -> None:
        super().__init__(detail)
        self.task = task


class _Batch(BaseModel):
    """``POST /tasks/batch``: the created tasks, in request order."""

    items: list[Task]


# --- where the server is ------------------------------------------------------------------


def _data_dir() -> Path:
    configured = os.environ.get("EDGEPLANE_DATA_DIR")
    return Path(configured) if configured else Path.home() / ".edgeplane"


def _read_line(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


def _normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url.removesuffix(API_PREFIX)


def resolve_endpoint(url: str | None = None, token: str | None = None) -> tuple[str, str | None]:
    """The API URL and token to use: explicit > env > files left by ``edgeplane up`` > default.

    Env: ``EDGEPLANE_URL``, ``EDGEPLANE_TOKEN`` (then ``EDGEPLANE_ADMIN_TOKEN``, which
    ``edgeplane up`` uses instead of writing a token file). Files: ``endpoint`` and
    ``admin-token`` in ``$EDGEPLANE_DATA_DIR`` (default ``~/.edgeplane``).
    """
    data_dir = _data_dir()
    chosen_url = (
        url or os.environ.get("EDGEPLANE_URL") or _read_line(data_dir / "endpoint") or DEFAULT_URL
    )
    chosen_token = (
        token
        or os.environ.get("EDGEPLANE_TOKEN")
        or os.environ.get("EDGEPLANE_ADMIN_TOKEN")
        or _read_line(data_dir / "admin-token")
    )
    return _normalise_url(chosen_url), chosen_token


# --- responses -> values or errors --------------------------------------------------------

_ERROR_BY_STATUS: dict[int, type[EdgeplaneError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: Invalid,
    422: Invalid,
    429: Unavailable,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def _problem(resp: httpx.Response) -> EdgeplaneError:
    """Turn an error response (problem+json or not) back into the error the server raised."""
    detail = resp.reason_phrase or f"HTTP {resp.status_code}"
    field_name: str | None = None
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        body = None
        if resp.text.strip():
            detail = resp.text.strip()[:300]
    if isinstance(body, dict):
        detail = str(body.get("detail") or body.get("title") or detail)
        given = body.get("field")
        field_name = given if isinstance(given, str) else None
    cls = _ERROR_BY_STATUS.get(resp.status_code)
    if cls is None:
        return EdgeplaneError(f"HTTP {resp.status_code}: {detail}", field=field_name)
    return cls(detail, field=field_name)


def _json(resp: httpx.Response) -> Any:
    if not resp.is_success:
        raise _problem(resp)
    try:
        return orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        raise EdgeplaneError(f"{resp.request.url} answered with something not JSON") from None


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    def parse(resp: httpx.Response) -> M:
        try:
            return model.model_validate(_json(resp))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise EdgeplaneError(
                f"unexpected answer from {resp.request.url}: {where}: {first['msg']}"
            ) from None

    return parse


_task = _model(Task)
_task_page = _model(Page[Task])
_worker = _model(Worker)
_worker_page = _model(Page[Worker])
_results = _model(TaskResults)
_logs = _model(TaskLogs)
_batch = _model(_Batch)


def _tasks(resp: httpx.Response) -> list[Task]:
    return _batch(resp).items


def _document(resp: httpx.Response) -> dict[str, Any]:
    body = _json(resp)
    if not isinstance(body, dict):
        raise EdgeplaneError(f"unexpected answer from {resp.request.url}: not an object")
    return body


def _nothing(resp: httpx.Response) -> None:
    if not resp.is_success:
        raise _problem(resp)


def _unreachable(url: str, exc: httpx.TransportError) -> Unavailable:
    reason = str(exc) or type(exc).__name__
    return Unavailable(f"cannot reach edgeplane at {url}: {reason}")


def _outcome(task: Task) -> Any:
    """A terminal task's results, or :class:`TaskFailure` carrying the task's error."""
    if task.state == "completed":
        return task.results
    reason = task.error or task.reason or task.state
    raise TaskFailure(f"task {task.id} {task.state}: {reason}")


# --- requests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One HTTP exchange, described once and sent by either client."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, str | int | float] | None = None
    body: Any = None
    #: Seconds the server may hold the request (long-poll), added to the read timeout.
    hold_s: float = 0.0
    #: Relative to the site root instead of ``/api/v1``.
    root: bool = False


def _read_module(file: str | Path) -> bytes:
    try:
        return Path(file).read_bytes()
    except OSError as exc:
        raise Invalid(f"cannot read {file}: {exc.strerror or exc}", field="file") from None


def _spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A task body with ``file`` as base64: bytes and paths are encoded, a str is already base64."""
    body = dict(spec)
    file = body.get("file")
    if isinstance(file, Path):
        file = _read_module(file)
    if isinstance(file, bytes):
        body["file"] = base64.b64encode(file).decode("ascii")
    return body


def _submit_body(
    module: bytes | None, name: str, inputs: Sequence[Any] | None, fields: Mapping[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {"start": True, **fields, "name": name}
    if inputs is not None:
        body["inputs"] = list(inputs)
    if module is not None:
        body["file"] = module
    return _spec(body)


def _chunks(specs: Sequence[Mapping[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(specs), BATCH_LIMIT):
        yield [{"start": True, **_spec(s)} for s in specs[start : start + BATCH_LIMIT]]


def _seg(some_id: str) -> str:
    """An id as one path segment, whatever a user typed."""
    return quote(some_id, safe="")


def _filters(**given: str | int | None) -> dict[str, str | int]:
    return {k: v for k, v in given.items() if v is not None}


class _Calls:
    """Builders of every call the clients make."""

    @staticmethod
    def create(body: dict[str, Any]) -> _Call[Task]:
        return _Call("POST", "/tasks", _task, body=body)

    @staticmethod
    def batch(bodies: list[dict[str, Any]]) -> _Call[list[Task]]:
        return _Call("POST", "/tasks/batch", _tasks, body={"tasks": bodies})

    @staticmethod
    def get(task_id: str, hold_s: float = 0.0) -> _Call[Task]:
        params = {"wait": round(hold_s, 3)} if hold_s > 0 else None
        return _Call("GET", f"/tasks/{_seg(task_id)}", _task, params=params, hold_s=hold_s)

    @staticmethod
    def update(task_id: str, changes: dict[str, Any]) -> _Call[Task]:
        return _Call("PATCH", f"/tasks/{_seg(task_id)}", _task, body=changes)

    @staticmethod
    def action(task_id: str, verb: str) -> _Call[Task]:
        return _Call("POST", f"/tasks/{_seg(task_id)}/{verb}", _task)

    @staticmethod
    def delete(task_id: str) -> _Call[None]:
        return _Call("DELETE", f"/tasks/{_seg(task_id)}", _nothing)

    @staticmethod
    def list_tasks(params: dict[str, str | int]) -> _Call[Page[Task]]:
        return _Call("GET", "/tasks", _task_page, params=params)

    @staticmethod
    def results(task_id: str) -> _Call[TaskResults]:
        return _Call("GET", f"/tasks/{_seg(task_id)}/results", _results)

    @staticmethod
    def logs(task_id: str) -> _Call[TaskLogs]:
        return _Call("GET", f"/tasks/{_seg(task_id)}/logs", _logs)

    @staticmethod
    def workers(params: dict[str, str | int]) -> _Call[Page[Worker]]:
        return _Call("GET", "/workers", _worker_page, params=params)

    @staticmethod
    def worker(worker_id: str) -> _Call[Worker]:
        return _Call("GET", f"/workers/{_seg(worker_id)}", _worker)

    @staticmethod
    def drain_worker(worker_id: str) -> _Call[Worker]:
        return _Call("POST", f"/workers/{_seg(worker_id)}/drain", _worker)

    @staticmethod
    def delete_worker(worker_id: str) -> _Call[None]:
        return _Call("DELETE", f"/workers/{_seg(worker_id)}", _nothing)

    @staticmethod
    def health() -> _Call[dict[str, Any]]:
        return _Call("GET", "/healthz", _document, root=True)


class _Wait:
    """The long-poll loop of ``wait``, shared by both clients: ask, check, ask again."""

    def __init__(self, task_id: str, timeout: float | None, clock: Clock) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.clock = clock
        self.deadline = None if timeout is None else clock.monotonic() + max(timeout, 0.0)

    def next_call(self, last: Task | None) -> _Call[Task] | None:
        """The next long-poll, or None when ``last`` is final; raises when time is up."""
        if last is not None and last.terminal:
            return None
        if self.deadline is None:
            return _Calls.get(self.task_id, LONG_POLL_S)
        remaining = self.deadline - self.clock.monotonic()
        if remaining <= 0 and last is not None:
            raise WaitTimeout(
                f"task {self.task_id} still {last.state} after {self.timeout:g}s", task=last
            )
        return _Calls.get(self.task_id, min(max(remaining, 0.0), LONG_POLL_S))


class _Base:
    """What both clients hold: where the server is, how long to wait, which clock to read."""

    def __init__(
        self, url: str | None, token: str | None, timeout: float, clock: Clock | None
    ) -> None:
        self.url, self.token = resolve_endpoint(url, token)
        self.timeout = timeout
        self._clock = clock or SystemClock()

    def _options(self) -> dict[str, Any]:
        headers = {"User-Agent": f"edgeplane/{__version__}", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return {"base_url": self.url, "headers": headers, "timeout": self.timeout}

    def _request(self, call: _Call[Any]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "method": call.method,
            "url": call.path if call.root else API_PREFIX + call.path,
            "params": call.params,
        }
        if call.body is not None:
            request["content"] = orjson.dumps(call.body)
            request["headers"] = {"Content-Type": "application/json"}
        if call.hold_s:
            request["timeout"] = self.timeout + call.hold_s
        return request

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r})"


class Client(_Base):
    """Blocking client. ``with Client() as c: c.result(c.submit("add.wasm", "add", [2, 3]).id)``."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30,
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(url, token, timeout, clock)
        self._http = httpx.Client(transport=transport, **self._options())

    def _send(self, call: _Call[T]) -> T:
        try:
            resp = self._http.request(**self._request(call))
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from None
        return call.parse(resp)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def submit(
        self,
        file: FileArg = None,
        name: str = "",
        inputs: Sequence[Any] | None = None,
        **fields: Any,
    ) -> Task:
        """Create a task, started unless ``start=False``; ``file`` is a .wasm path or its bytes."""
        module = _read_module(file) if isinstance(file, str | Path) else file
        return self._send(_Calls.create(_submit_body(module, name, inputs, fields)))

    def submit_many(self, specs: Sequence[Mapping[str, Any]]) -> list[Task]:
        """Create and start many tasks, in order, in batches of :data:`BATCH_LIMIT`."""
        created: list[Task] = []
        for chunk in _chunks(specs):
            batch = self._send(_Calls.batch(chunk))
            created += batch
        return created

    def create_task(self, spec: Mapping[str, Any]) -> Task:
        """``POST /tasks`` with ``spec`` as given (not started unless it says ``start``)."""
        return self._send(_Calls.create(_spec(spec)))

    def update(self, task_id: str, **changes: Any) -> Task:
        return self._send(_Calls.update(task_id, changes))

    def start(self, task_id: str) -> Task:
        return self._send(_Calls.action(task_id, "start"))

    def stop(self, task_id: str) -> Task:
        return self._send(_Calls.action(task_id, "stop"))

    def get(self, task_id: str) -> Task:
        return self._send(_Calls.get(task_id))

    def wait(self, task_id: str, timeout: float | None = None) -> Task:
        """The task once terminal (long-polling, no busy loop); :class:`WaitTimeout` if not."""
        plan = _Wait(task_id, timeout, self._clock)
        task: Task | None = None
        while (call := plan.next_call(task)) is not None:
            task = self._send(call)
        assert task is not None
        return task

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait, then the task's results; :class:`TaskFailure` if it did not complete."""
        return _outcome(self.wait(task_id, timeout))

    def list_tasks(
        self,
        *,
        state: str | None = None,
        job_id: str | None = None,
        workflow_id: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Page[Task]:
        params = _filters(
            state=state, job_id=job_id, workflow_id=workflow_id, limit=limit, offset=offset
        )
        return self._send(_Calls.list_tasks(params))

    def results(self, task_id: str) -> TaskResults:
        return self._send(_Calls.results(task_id))

    def logs(self, task_id: str) -> TaskLogs:
        return self._send(_Calls.logs(task_id))

    def delete(self, task_id: str) -> None:
        self._send(_Calls.delete(task_id))

    def workers(self, *, limit: int | None = None, offset: int | None = None) -> Page[Worker]:
        return self._send(_Calls.workers(_filters(limit=limit, offset=offset)))

    def worker(self, worker_id: str) -> Worker:
        return self._send(_Calls.worker(worker_id))

    def drain_worker(self, worker_id: str) -> Worker:
        return self._send(_Calls.drain_worker(worker_id))

    def delete_worker(self, worker_id: str) -> None:
        self._send(_Calls.delete_worker(worker_id))

    def health(self) -> dict[str, Any]:
        return self._send(_Calls.health())


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: same methods, awaited."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(url, token, timeout, clock)
        self._http = httpx.AsyncClient(transport=transport, **self._options())

    async def _send(self, call: _Call[T]) -> T:
        try:
            resp = await self._http.request(**self._request(call))
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from None
        return call.parse(resp)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def submit(
        self,
        file: FileArg = None,
        name: str = "",
        inputs: Sequence[Any] | None = None,
        **fields: Any,
    ) -> Task:
        """Create a task, started unless ``start=False``; ``file`` is a .wasm path or its bytes."""
        module: bytes | None
        if isinstance(file, str | Path):
            module = await asyncio.to_thread(_read_module, file)
        else:
            module = file
        return await self._send(_Calls.create(_submit_body(module, name, inputs, fields)))

    async def submit_many(self, specs: Sequence[Mapping[str, Any]]) -> list[Task]:
        """Create and start many tasks, in order, in batches of :data:`BATCH_LIMIT`."""
        created: list[Task] = []
        for chunk in _chunks(specs):
            batch = await self._send(_Calls.batch(chunk))
            created += batch
        return created

    async def create_task(self, spec: Mapping[str, Any]) -> Task:
        """``POST /tasks`` with ``spec`` as given (not started unless it says ``start``)."""
        return await self._send(_Calls.create(_spec(spec)))

    async def update(self, task_id: str, **changes: Any) -> Task:
        return await self._send(_Calls.update(task_id, changes))

    async def start(self, task_id: str) -> Task:
        return await self._send(_Calls.action(task_id, "start"))

    async def stop(self, task_id: str) -> Task:
        return await self._send(_Calls.action(task_id, "stop"))

    async def get(self, task_id: str) -> Task:
        return await self._send(_Calls.get(task_id))

    # The timeout is a server-side long-poll deadline, not an asyncio one: hence noqa.
    async def wait(self, task_id: str, timeout: float | None = None) -> Task:  # noqa: ASYNC109
        """The task once terminal (long-polling, no busy loop); :class:`WaitTimeout` if not."""
        plan = _Wait(task_id, timeout, self._clock)
        task: Task | None = None
        while (call := plan.next_call(task)) is not None:
            task = await self._send(call)
        assert task is not None
        return task

    async def result(self, task_id: str, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Wait, then the task's results; :class:`TaskFailure` if it did not complete."""
        return _outcome(await self.wait(task_id, timeout))

    async def list_tasks(
        self,
        *,
        state: str | None = None,
        job_id: str | None = None,
        workflow_id: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Page[Task]:
        params = _filters(
            state=state, job_id=job_id, workflow_id=workflow_id, limit=limit, offset=offset
        )
        return await self._send(_Calls.list_tasks(params))

    async def results(self, task_id: str) -> TaskResults:
        return await self._send(_Calls.results(task_id))

    async def logs(self, task_id: str) -> TaskLogs:
        return await self._send(_Calls.logs(task_id))

    async def delete(self, task_id: str) -> None:
        await self._send(_Calls.delete(task_id))

    async def workers(self, *, limit: int | None = None, offset: int | None = None) -> Page[Worker]:
        return await self._send(_Calls.workers(_filters(limit=limit, offset=offset)))

    async def worker(self, worker_id: str) -> Worker:
        return await self._send(_Calls.worker(worker_id))

    async def drain_worker(self, worker_id: str) -> Worker:
        return await self._send(_Calls.drain_worker(worker_id))

    async def delete_worker(self, worker_id: str) -> None:
        await self._send(_Calls.delete_worker(worker_id))

    async def health(self) -> dict[str, Any]:
        return await self._send(_Calls.health())
