"""Python client for the edgeplane REST API: :class:`Client` and its twin :class:`AsyncClient`.

Both clients build every request with the same ``_Call`` builders and read every response
with the same parsers, so they cannot drift apart; only the line that sends differs.
Failures come back as :mod:`edgeplane.errors` classes, mapped from problem+json by status.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from edgeplane import __version__
from edgeplane.clock import Clock, SystemClock
from edgeplane.errors import (
    Busy,
    Conflict,
    EdgeplaneError,
    Forbidden,
    Invalid,
    NotFound,
    TaskFailure,
    Unauthorized,
    Unavailable,
)
from edgeplane.model import (
    ApplicationSpec,
    ApplicationView,
    Cluster,
    JobSpec,
    Page,
    Schedule,
    Task,
    TaskLogs,
    TaskResults,
    Worker,
    Workflow,
    WorkflowSpec,
)
from edgeplane.model.audit import AuditPage
from edgeplane.model.listing import TaskPage
from edgeplane.model.secrets import REVEAL
from edgeplane.tls import client_context, trusted_ca
from edgeplane.wire import Reply, Request, Unreachable, open_wire

__all__ = [
    "BATCH_LIMIT",
    "DEFAULT_URL",
    "ApplicationView",
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
#: What a wait polls: a task, or a job or workflow run.
D = TypeVar("D", Task, Workflow)
FileArg = bytes | str | Path | None
#: A job or workflow as the client takes it: the pydantic spec or a plain mapping, whose
#: tasks' ``file`` may be bytes or a :class:`~pathlib.Path` (sent as base64).
RunSpec = JobSpec | WorkflowSpec | Mapping[str, Any]
#: An application descriptor: the pydantic spec or a plain mapping (services' ``file`` as
#: in :data:`RunSpec`).
AppSpec = ApplicationSpec | Mapping[str, Any]
Progress = Callable[[Workflow], object]
_Runs = Literal["jobs", "workflows"]


class WaitTimeout(Unavailable, TimeoutError):
    """A wait ran out of time; what it waited for goes on. Its last state is in ``task``
    (``wait``/``result``) or in ``workflow`` (``wait_job``/``wait_workflow``)."""

    title = "Wait timed out"

    def __init__(
        self, detail: str, *, task: Task | None = None, workflow: Workflow | None = None
    ) -> None:
        super().__init__(detail)
        self.task = task
        self.workflow = workflow


class _Batch(BaseModel):
    """``POST /tasks/batch``: the created tasks, in request order."""

    items: list[Task]


# --- where the server is ------------------------------------------------------------------


#: Where ``edgeplane login`` keeps the access token it got (mode 0600).
LOGIN_TOKEN_FILE = "token"


def _data_dir() -> Path:
    configured = os.environ.get("EDGEPLANE_DATA_DIR")
    return Path(configured) if configured else Path.home() / ".edgeplane"


def login_token_path() -> Path:
    """Where ``edgeplane login`` keeps its access token."""
    return _data_dir() / LOGIN_TOKEN_FILE


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
    """The API URL(s) and token to use: explicit > env > files left by ``edgeplane up`` >
    default. Several processes of one cluster: a comma-separated list of URLs.

    Env: ``EDGEPLANE_URL``, ``EDGEPLANE_TOKEN`` (then ``EDGEPLANE_ADMIN_TOKEN``, which
    ``edgeplane up`` uses instead of writing a token file). Files: ``endpoint``, then
    ``token`` (left by ``edgeplane login``) before ``admin-token``, in
    ``$EDGEPLANE_DATA_DIR`` (default ``~/.edgeplane``).
    """
    data_dir = _data_dir()
    chosen_url = (
        url or os.environ.get("EDGEPLANE_URL") or _read_line(data_dir / "endpoint") or DEFAULT_URL
    )
    chosen_token = (
        token
        or os.environ.get("EDGEPLANE_TOKEN")
        or os.environ.get("EDGEPLANE_ADMIN_TOKEN")
        or _read_line(data_dir / LOGIN_TOKEN_FILE)
        or _read_line(data_dir / "admin-token")
    )
    return ",".join(split_urls(chosen_url)), chosen_token


def split_urls(urls: str) -> list[str]:
    """``"a, b"`` → the normalised URLs, in order (at least one: the default)."""
    found = [_normalise_url(u) for u in urls.split(",") if u.strip()]
    return found or [DEFAULT_URL]


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


def problem(resp: Reply) -> EdgeplaneError:
    """Turn an error response (problem+json or not) back into the error the server raised."""
    detail = resp.reason or f"HTTP {resp.status}"
    field_name: str | None = None
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        body = None
        text = resp.content.decode(errors="replace").strip()
        if text:
            detail = text[:300]
    if isinstance(body, dict):
        detail = str(body.get("detail") or body.get("title") or detail)
        given = body.get("field")
        field_name = given if isinstance(given, str) else None
    busy = isinstance(body, dict) and body.get("title") == Busy.title
    if resp.status == 503 and busy and resp.retry_after is not None:
        return Busy(detail, retry_after=resp.retry_after)  # a long poll: ask again then
    cls = _ERROR_BY_STATUS.get(resp.status)
    if cls is None:
        return EdgeplaneError(f"HTTP {resp.status}: {detail}", field=field_name)
    return cls(detail, field=field_name)


def _json(resp: Reply) -> Any:
    if not resp.ok:
        raise problem(resp)
    try:
        return orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        raise EdgeplaneError(f"{resp.url} answered with something not JSON") from None


def _validated(model: type[M], body: Any, resp: Reply) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise EdgeplaneError(
            f"unexpected answer from {resp.url}: {where}: {first['msg']}"
        ) from None


def _model(model: type[M]) -> Callable[[Reply], M]:
    def parse(resp: Reply) -> M:
        return _validated(model, _json(resp), resp)

    return parse


_task = _model(Task)
_task_page = _model(TaskPage)
_worker = _model(Worker)
_worker_page = _model(Page[Worker])
_results = _model(TaskResults)
_logs = _model(TaskLogs)
_batch = _model(_Batch)
_workflow = _model(Workflow)
_workflow_page = _model(Page[Workflow])
_schedule = _model(Schedule)
_schedule_page = _model(Page[Schedule])
_cluster = _model(Cluster)
_cluster_page = _model(Page[Cluster])
_application = _model(ApplicationView)
_application_page = _model(Page[ApplicationView])
_audit_page = _model(AuditPage)


def _tasks(resp: Reply) -> list[Task]:
    return _batch(resp).items


def _run_or_schedule(resp: Reply) -> Workflow | Schedule:
    """``POST /jobs|/workflows``: the run, or the schedule when the body had ``schedule``."""
    body = _json(resp)
    if isinstance(body, dict) and "cron" in body:
        return _validated(Schedule, body, resp)
    return _validated(Workflow, body, resp)


def _document(resp: Reply) -> dict[str, Any]:
    body = _json(resp)
    if not isinstance(body, dict):
        raise EdgeplaneError(f"unexpected answer from {resp.url}: not an object")
    return body


def _published(resp: Reply) -> tuple[dict[str, Any], bool]:
    """A published chute version, and whether this call published it (201, not 200)."""
    return _document(resp), resp.status == 201


def _nothing(resp: Reply) -> None:
    if not resp.ok:
        raise problem(resp)


def _bytes(resp: Reply) -> bytes:
    if not resp.ok:
        raise problem(resp)
    return bytes(resp.content)


def _text(resp: Reply) -> str:
    if not resp.ok:
        raise problem(resp)
    return resp.content.decode()


def _unreachable(url: str, exc: httpx.TransportError | Unreachable) -> Unavailable:
    reason = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        reason += " (is --ca / EDGEPLANE_CA the CA that signed the server's certificate?)"
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
    parse: Callable[[Reply], T]
    params: Mapping[str, str | int | float] | None = None
    body: Any = None
    #: Seconds the server may hold the request (long-poll), added to the read timeout.
    hold_s: float = 0.0
    #: Relative to the site root instead of ``/api/v1``.
    root: bool = False


def example_module(file: str | Path) -> Path | None:
    """A bare name (``add.wasm``) not in the current directory is one of the examples
    `edgeplane up` wrote into its data dir, so the README's first commands work from any
    directory; None when ``file`` is not such a name or no such example exists."""
    path = Path(file)
    if len(path.parts) != 1 or path.exists():
        return None
    candidate = _data_dir() / "examples" / path.name
    return candidate if candidate.is_file() else None


def _read_module(file: str | Path) -> bytes:
    try:
        return (example_module(file) or Path(file)).read_bytes()
    except OSError as exc:
        raise Invalid(f"cannot read {file}: {exc.strerror or exc}", field="file") from None


async def _module(file: FileArg) -> bytes | None:
    """The module a submit names, read off the event loop when it is a path."""
    if isinstance(file, str | Path):
        return await asyncio.to_thread(_read_module, file)
    return file


#: The largest initial model file a client sends (its base64 is the spec's limit, 64 MiB).
MAX_INITIAL_MODEL_BYTES = 48 * 2**20


def _experiment(body: Mapping[str, Any]) -> dict[str, Any]:
    """An experiment whose ``initial_model`` is given as bytes or a path (raw ``f32`` or
    ``.npz``), with it as the API takes it: ``{"data": base64}``."""
    out = dict(body)
    given = out.get("initial_model")
    if isinstance(given, Path):
        path = given
        try:
            if path.stat().st_size > MAX_INITIAL_MODEL_BYTES:
                raise Invalid(
                    f"{path} is over {MAX_INITIAL_MODEL_BYTES // 2**20} MiB: too large a model",
                    field="initial_model",
                )
            given = path.read_bytes()
        except OSError as exc:
            raise Invalid(
                f"cannot read the initial model {path}: {exc.strerror or exc}",
                field="initial_model",
            ) from None
    if isinstance(given, bytes | bytearray | memoryview):
        out["initial_model"] = {"data": base64.b64encode(given).decode("ascii")}
    return out


def _spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A task body with ``file`` as base64: bytes and paths are encoded, a str is already base64."""
    body = dict(spec)
    file = body.get("file")
    if isinstance(file, Path):
        file = _read_module(file)
    if isinstance(file, bytes | bytearray | memoryview):
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


def _run_body(
    spec: RunSpec | AppSpec, items: Literal["tasks", "services"] = "tasks"
) -> dict[str, Any]:
    """A job, workflow or application body with every task's (service's) ``file`` as base64."""
    # (REVEAL: a model's secret env is dumped as ``***`` otherwise; it is sent to the API)
    if isinstance(spec, BaseModel):
        return spec.model_dump(mode="json", exclude_unset=True, context=REVEAL)
    body = dict(spec)
    listed = body.get(items)
    if isinstance(listed, list | tuple):
        body[items] = [
            t.model_dump(mode="json", exclude_unset=True, context=REVEAL)
            if isinstance(t, BaseModel)
            else _spec(t)
            for t in listed
        ]
    return body


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
    def create(body: dict[str, Any], hold_s: float = 0.0) -> _Call[Task]:
        """``POST /tasks``; with ``hold_s`` the server answers once the task ended, or
        after that long (``?wait=``)."""
        if body.get("schedule") is not None:
            raise Invalid(
                "a task with a schedule creates a schedule, not a task: use schedule_task()",
                field="schedule",
            )
        params = {"wait": round(hold_s, 3)} if hold_s > 0 else None
        return _Call("POST", "/tasks", _task, params=params, body=body, hold_s=hold_s)

    @staticmethod
    def schedule_task(body: dict[str, Any]) -> _Call[Schedule]:
        if body.get("schedule") is None:
            raise Invalid("give a cron expression to schedule a task", field="schedule")
        return _Call("POST", "/tasks", _schedule, body=body)

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
    def list_tasks(params: dict[str, str | int]) -> _Call[TaskPage]:
        return _Call("GET", "/tasks", _task_page, params=params)

    @staticmethod
    def count_tasks() -> _Call[dict[str, int]]:
        return _Call("GET", "/tasks/counts", _document)

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
    def undrain_worker(worker_id: str) -> _Call[Worker]:
        return _Call("POST", f"/workers/{_seg(worker_id)}/undrain", _worker)

    @staticmethod
    def set_worker_owner(worker_id: str, owner: str | None) -> _Call[Worker]:
        return _Call("PUT", f"/workers/{_seg(worker_id)}/owner", _worker, body={"owner": owner})

    @staticmethod
    def delete_worker(worker_id: str) -> _Call[None]:
        return _Call("DELETE", f"/workers/{_seg(worker_id)}", _nothing)

    @staticmethod
    def health() -> _Call[dict[str, Any]]:
        return _Call("GET", "/healthz", _document, root=True)

    @staticmethod
    def metrics() -> _Call[str]:
        return _Call("GET", "/metrics", _text, root=True)

    @staticmethod
    def login(name: str, password: str) -> _Call[dict[str, Any]]:
        return _Call("POST", "/auth/login", _document, body={"name": name, "password": password})

    @staticmethod
    def refresh(refresh_token: str) -> _Call[dict[str, Any]]:
        return _Call("POST", "/auth/refresh", _document, body={"refresh_token": refresh_token})

    @staticmethod
    def create_user(body: dict[str, Any]) -> _Call[dict[str, Any]]:
        return _Call("POST", "/users", _document, body=body)

    @staticmethod
    def users() -> _Call[dict[str, Any]]:
        return _Call("GET", "/users", _document)

    @staticmethod
    def delete_user(name: str) -> _Call[None]:
        return _Call("DELETE", f"/users/{_seg(name)}", _nothing)

    @staticmethod
    def create_token(body: dict[str, Any]) -> _Call[dict[str, Any]]:
        return _Call("POST", "/tokens", _document, body=body)

    @staticmethod
    def tokens(user: str | None) -> _Call[dict[str, Any]]:
        return _Call("GET", "/tokens", _document, params=None if user is None else {"user": user})

    @staticmethod
    def revoke_token(token_id: str) -> _Call[None]:
        return _Call("DELETE", f"/tokens/{_seg(token_id)}", _nothing)

    @staticmethod
    def audit(params: dict[str, str | int | float]) -> _Call[AuditPage]:
        return _Call("GET", "/audit", _audit_page, params=params)

    @staticmethod
    def create_run(runs: _Runs, body: dict[str, Any]) -> _Call[Workflow | Schedule]:
        return _Call("POST", f"/{runs}", _run_or_schedule, body=body)

    @staticmethod
    def run(runs: _Runs, run_id: str, hold_s: float = 0.0) -> _Call[Workflow]:
        params = {"wait": round(hold_s, 3)} if hold_s > 0 else None
        return _Call("GET", f"/{runs}/{_seg(run_id)}", _workflow, params=params, hold_s=hold_s)

    @staticmethod
    def runs(runs: _Runs, params: dict[str, str | int]) -> _Call[Page[Workflow]]:
        return _Call("GET", f"/{runs}", _workflow_page, params=params)

    @staticmethod
    def stop_run(runs: _Runs, run_id: str) -> _Call[Workflow]:
        return _Call("POST", f"/{runs}/{_seg(run_id)}/stop", _workflow)

    @staticmethod
    def schedules(params: dict[str, str | int]) -> _Call[Page[Schedule]]:
        return _Call("GET", "/schedules", _schedule_page, params=params)

    @staticmethod
    def schedule(schedule_id: str) -> _Call[Schedule]:
        return _Call("GET", f"/schedules/{_seg(schedule_id)}", _schedule)

    @staticmethod
    def schedule_action(schedule_id: str, verb: str) -> _Call[Schedule]:
        return _Call("POST", f"/schedules/{_seg(schedule_id)}/{verb}", _schedule)

    @staticmethod
    def delete_schedule(schedule_id: str) -> _Call[None]:
        return _Call("DELETE", f"/schedules/{_seg(schedule_id)}", _nothing)

    # federated learning (docs/fl.md): experiments are plain JSON objects
    @staticmethod
    def fl_create(body: dict[str, Any]) -> _Call[dict[str, Any]]:
        """``body["initial_model"]`` as it is sent (see :func:`_experiment`)."""
        return _Call("POST", "/fl/experiments", _json, body=body)

    @staticmethod
    def fl_experiments(params: dict[str, str | int]) -> _Call[dict[str, Any]]:
        return _Call("GET", "/fl/experiments", _json, params=params)

    @staticmethod
    def fl_experiment(experiment_id: str) -> _Call[dict[str, Any]]:
        return _Call("GET", f"/fl/experiments/{_seg(experiment_id)}", _json)

    @staticmethod
    def fl_stop(experiment_id: str) -> _Call[dict[str, Any]]:
        return _Call("POST", f"/fl/experiments/{_seg(experiment_id)}/stop", _json)

    @staticmethod
    def fl_delete(experiment_id: str) -> _Call[None]:
        return _Call("DELETE", f"/fl/experiments/{_seg(experiment_id)}", _nothing)

    @staticmethod
    def fl_model(experiment_id: str, version: int | None) -> _Call[bytes]:
        params = None if version is None else {"version": version}
        return _Call("GET", f"/fl/experiments/{_seg(experiment_id)}/model", _bytes, params=params)

    # the chute store (docs/chutes.md): plain JSON objects
    @staticmethod
    def publish_chute(manifest: Any, project: str | None) -> _Call[tuple[dict[str, Any], bool]]:
        params = None if project is None else {"project": project}
        return _Call("POST", "/store/chutes", _published, params=params, body=manifest)

    @staticmethod
    def store_chutes(params: dict[str, str | int]) -> _Call[dict[str, Any]]:
        return _Call("GET", "/store/chutes", _json, params=params)

    @staticmethod
    def store_chute(name: str) -> _Call[dict[str, Any]]:
        return _Call("GET", f"/store/chutes/{_seg(name)}", _json)

    @staticmethod
    def store_chute_version(name: str, version: str) -> _Call[dict[str, Any]]:
        return _Call("GET", f"/store/chutes/{_seg(name)}/versions/{_seg(version)}", _json)

    @staticmethod
    def delete_store_chute_version(name: str, version: str) -> _Call[None]:
        path = f"/store/chutes/{_seg(name)}/versions/{_seg(version)}"
        return _Call("DELETE", path, _nothing)

    @staticmethod
    def clusters(params: dict[str, str | int]) -> _Call[Page[Cluster]]:
        return _Call("GET", "/clusters", _cluster_page, params=params)

    @staticmethod
    def cluster(cluster_id: str) -> _Call[Cluster]:
        return _Call("GET", f"/clusters/{_seg(cluster_id)}", _cluster)

    @staticmethod
    def delete_cluster(cluster_id: str) -> _Call[None]:
        return _Call("DELETE", f"/clusters/{_seg(cluster_id)}", _nothing)

    @staticmethod
    def create_application(body: dict[str, Any]) -> _Call[ApplicationView]:
        return _Call("POST", "/applications", _application, body=body)

    @staticmethod
    def applications(params: dict[str, str | int]) -> _Call[Page[ApplicationView]]:
        return _Call("GET", "/applications", _application_page, params=params)

    @staticmethod
    def application(app_id: str) -> _Call[ApplicationView]:
        return _Call("GET", f"/applications/{_seg(app_id)}", _application)

    @staticmethod
    def update_application(app_id: str, body: dict[str, Any]) -> _Call[ApplicationView]:
        return _Call("PUT", f"/applications/{_seg(app_id)}", _application, body=body)

    @staticmethod
    def delete_application(app_id: str) -> _Call[None]:
        return _Call("DELETE", f"/applications/{_seg(app_id)}", _nothing)


def _user_body(
    name: str, password: str, role: str, projects: Sequence[str] | None
) -> dict[str, Any]:
    return {
        "name": name,
        "password": password,
        "role": role,
        "projects": list(projects) if projects is not None else ["default"],
    }


def _token_body(
    name: str, scopes: Sequence[str] | None, expires_in: float | None, user: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "scopes": list(scopes or ())}
    if expires_in is not None:
        body["expires_in"] = expires_in
    if user is not None:
        body["user"] = user
    return body


def _audit_params(
    actor: str | None,
    action: str | None,
    resource: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    cursor: int | None,
) -> dict[str, str | int | float]:
    given = {
        "actor": actor,
        "action": action,
        "resource": resource,
        "since": since,
        "until": until,
        "limit": limit,
        "cursor": cursor,
    }
    return {k: v for k, v in given.items() if v is not None}


def _timed_out(detail: str, last: Task | Workflow) -> WaitTimeout:
    if isinstance(last, Task):
        return WaitTimeout(detail, task=last)
    return WaitTimeout(detail, workflow=last)


#: Seconds the first poll of a wait that shows progress is held.
FIRST_POLL_S = 2.0


def _eager(plan: _Wait[D], progress: object) -> _Wait[D]:
    plan.eager = progress is not None
    return plan


class _Wait(Generic[D]):
    """The long-poll loop of every wait, shared by both clients: ask, check, ask again.

    ``poll_s`` caps one long-poll: the CLI asks every few seconds to redraw a live view.
    """

    def __init__(
        self,
        what: str,
        get: Callable[[float, D | None], _Call[D]],
        timeout: float | None,
        clock: Clock,
        poll_s: float = LONG_POLL_S,
    ) -> None:
        self.what = what
        #: the next call, from how long it may be held and the last answer (None at first)
        self.get: Callable[[float, D | None], _Call[D]] = get
        self.timeout = timeout
        self.clock = clock
        self.poll_s = poll_s
        self.deadline = None if timeout is None else clock.monotonic() + max(timeout, 0.0)
        #: set when progress is shown: the first call is held only :data:`FIRST_POLL_S`
        self.eager = False

    def next_call(self, last: D | None) -> _Call[D] | None:
        """The next long-poll, or None when ``last`` is final; raises when time is up."""
        if last is not None and last.terminal:
            return None
        if self.deadline is None:
            return self.get(self._hold(last), last)
        remaining = self.deadline - self.clock.monotonic()
        if remaining <= 0 and last is not None:
            what = self.what or f"task {getattr(last, 'id', '')}"
            reason = getattr(last, "reason", None)
            detail = f"{what} still {last.state} after {self.timeout:g}s"
            raise _timed_out(detail + (f": {reason}" if reason else ""), last)
        return self.get(min(max(remaining, 0.0), self._hold(last)), last)

    def pause_for(self, busy: Busy) -> float:
        """Seconds to wait before asking again after the server held too many answers
        open (``busy``); raises it when the wait's time is up."""
        if self.deadline is None:
            return busy.retry_after
        remaining = self.deadline - self.clock.monotonic()
        if remaining <= 0:
            raise busy
        return min(busy.retry_after, remaining)

    def _hold(self, last: D | None) -> float:
        """How long the next call may be held: short at first when someone shows progress,
        so a task that cannot be placed says why within seconds, not after a long poll."""
        return min(self.poll_s, FIRST_POLL_S) if last is None and self.eager else self.poll_s

    @staticmethod
    def task(task_id: str, timeout: float | None, clock: Clock) -> _Wait[Task]:
        def get(hold_s: float, _: Task | None) -> _Call[Task]:
            return _Calls.get(task_id, hold_s)

        return _Wait(f"task {task_id}", get, timeout, clock)

    @staticmethod
    def new_task(body: dict[str, Any], timeout: float | None, clock: Clock) -> _Wait[Task]:
        """Create the task and wait for it in the same request; long-poll it after that."""

        def get(hold_s: float, last: Task | None) -> _Call[Task]:
            return _Calls.create(body, hold_s) if last is None else _Calls.get(last.id, hold_s)

        return _Wait("", get, timeout, clock)

    @staticmethod
    def run(
        runs: _Runs, run_id: str, timeout: float | None, clock: Clock, poll_s: float
    ) -> _Wait[Workflow]:
        def get(hold_s: float, _: Workflow | None) -> _Call[Workflow]:
            return _Calls.run(runs, run_id, hold_s)

        return _Wait(f"{runs.removesuffix('s')} {run_id}", get, timeout, clock, poll_s)


class _Base:
    """What both clients hold: where the server is, how long to wait, which clock to read."""

    def __init__(
        self,
        url: str | None,
        token: str | None,
        timeout: float,
        clock: Clock | None,
        ca: str | Path | None,
    ) -> None:
        urls, self.token = resolve_endpoint(url, token)
        #: where the processes of the cluster answer; requests go to :attr:`url`, moved
        #: along this list (or to the leader a standby names) when it stands by or is down
        self.urls = split_urls(urls)
        self.url = self.urls[0]
        self.timeout = timeout
        self._clock = clock or SystemClock()
        #: verifies an https server: ``ca`` > ``$EDGEPLANE_CA`` > the data dir's CA > system
        self._tls = (
            client_context(trusted_ca(None if ca is None else Path(ca), _data_dir()))
            if any(u.startswith("https://") for u in self.urls)
            else None
        )

    def _move(self, tried: set[str], leader: str | None) -> bool:
        """Point :attr:`url` at the next process to ask: the leader a standby named, else
        the next URL not tried by this call. False when there is none left."""
        target = _normalise_url(leader) if leader else None
        if target is None:
            target = next((u for u in self.urls if u not in tried), None)
        elif target not in self.urls:
            self.urls.append(target)
        if target is None or target in tried:
            return False
        self.url = target
        self._retarget()
        return True

    def _retarget(self) -> None:
        """Send to :attr:`url` from now on."""
        raise NotImplementedError

    def _options(self) -> dict[str, Any]:
        headers = {"User-Agent": f"edgeplane/{__version__}", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return {"base_url": self.url, "headers": headers, "timeout": self.timeout}

    def _request(self, call: _Call[Any]) -> Request:
        try:
            body = None if call.body is None else orjson.dumps(call.body)
        except orjson.JSONEncodeError as exc:  # e.g. an integer past 64 bits
            raise Invalid(f"the request is not JSON: {exc}", field="body") from None
        return Request(
            call.method,
            call.path if call.root else API_PREFIX + call.path,
            params=call.params,
            content=body,
            headers=None if body is None else {"Content-Type": "application/json"},
            timeout=self.timeout + call.hold_s if call.hold_s else None,
        )

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
        ca: str | Path | None = None,
    ) -> None:
        super().__init__(url, token, timeout, clock, ca)
        self._transport = transport
        options = self._options()
        self._http = open_wire(
            options["base_url"], options["headers"], timeout, transport, self._tls
        )

    def _send(self, call: _Call[T]) -> T:
        request = self._request(call)
        tried: set[str] = set()
        while True:
            tried.add(self.url)
            try:
                resp = self._http.send(request)
            except Unreachable as exc:
                # only a request that surely did nothing is sent again, elsewhere
                if exc.sent or not self._move(tried, None):
                    raise _unreachable(self.url, exc) from None
                continue
            if resp.leader is not None and self._move(tried, resp.leader):
                continue
            return call.parse(resp)

    def _retarget(self) -> None:
        self._http.close()
        options = self._options()
        self._http = open_wire(
            options["base_url"], options["headers"], self.timeout, self._transport, self._tls
        )

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

    def run(
        self,
        file: FileArg = None,
        name: str = "",
        inputs: Sequence[Any] | None = None,
        *,
        timeout: float | None = None,
        progress: Callable[[Task], object] | None = None,
        **fields: Any,
    ) -> Task:
        """Create a task and wait for it to end: one request when it ends within
        :data:`LONG_POLL_S` (``POST /tasks?wait=``); :class:`WaitTimeout` after ``timeout``.
        ``progress`` sees the task after every poll while it has not ended (its ``reason``
        says why a pending task waits)."""
        module = _read_module(file) if isinstance(file, str | Path) else file
        body = _submit_body(module, name, inputs, fields)
        return self._poll(_eager(_Wait.new_task(body, timeout, self._clock), progress), progress)

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

    def retry(self, task_id: str) -> Task:
        """A new task running what the ended task ``task_id`` ran (its ``retry_of``)."""
        return self._send(_Calls.action(task_id, "retry"))

    def get(self, task_id: str) -> Task:
        return self._send(_Calls.get(task_id))

    def _poll(self, plan: _Wait[D], progress: Callable[[D], object] | None = None) -> D:
        last: D | None = None
        while (call := plan.next_call(last)) is not None:
            try:
                last = self._send(call)
            except Busy as busy:  # too many answers held open there: ask again soon
                time.sleep(plan.pause_for(busy))
                continue
            if progress is not None:
                progress(last)
        assert last is not None
        return last

    def wait(
        self,
        task_id: str,
        timeout: float | None = None,
        progress: Callable[[Task], object] | None = None,
    ) -> Task:
        """The task once terminal (long-polling, no busy loop); :class:`WaitTimeout` if not.
        ``progress`` sees it after every poll."""
        return self._poll(_eager(_Wait.task(task_id, timeout, self._clock), progress), progress)

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait, then the task's results; :class:`TaskFailure` if it did not complete."""
        return _outcome(self.wait(task_id, timeout))

    def list_tasks(
        self,
        *,
        state: str | None = None,
        name: str | None = None,
        worker_id: str | None = None,
        job_id: str | None = None,
        workflow_id: str | None = None,
        order: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        cursor: str | None = None,
    ) -> TaskPage:
        """A page of tasks matching every filter given (``name``: a prefix); the page's
        ``next`` is the ``cursor`` of the following one (``order``: oldest or newest first)."""
        params = _filters(
            state=state,
            name=name,
            worker_id=worker_id,
            job_id=job_id,
            workflow_id=workflow_id,
            order=order,
            limit=limit,
            offset=offset,
            cursor=cursor,
        )
        return self._send(_Calls.list_tasks(params))

    def count_tasks(self) -> dict[str, int]:
        """How many tasks are in each state (every state, 0 included), in one call."""
        return self._send(_Calls.count_tasks())

    def results(self, task_id: str) -> TaskResults:
        return self._send(_Calls.results(task_id))

    def logs(self, task_id: str) -> TaskLogs:
        return self._send(_Calls.logs(task_id))

    def follow_logs(self, task_id: str) -> Iterator[tuple[str, str]]:
        """``(event, text)`` as the task prints: ``stdout``/``stderr`` text, a ``gap``
        when output was lost, and last ``end`` (JSON: state, exit_code) once it ended
        (docs/metrics.md, "Logs")."""
        options = self._options()
        headers = {**options["headers"], "Accept": "text/event-stream"}
        with (
            httpx.Client(
                base_url=self.url,
                headers=headers,
                timeout=httpx.Timeout(self.timeout, read=None),
                verify=self._tls if self._tls is not None else True,
            ) as http,
            http.stream("GET", f"{API_PREFIX}/tasks/{_seg(task_id)}/logs?follow=true") as resp,
        ):
            if resp.status_code != 200:
                reply = Reply(resp.status_code, resp.reason_phrase, resp.read(), str(resp.url))
                raise problem(reply)
            name, data = "message", list[str]()
            for line in resp.iter_lines():
                if line == "":
                    if data:
                        yield name, "\n".join(data)
                        if name == "end":
                            return
                    name, data = "message", list[str]()
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[6:] if line.startswith("data: ") else line[5:])

    def delete(self, task_id: str) -> None:
        self._send(_Calls.delete(task_id))

    def workers(self, *, limit: int | None = None, offset: int | None = None) -> Page[Worker]:
        return self._send(_Calls.workers(_filters(limit=limit, offset=offset)))

    def worker(self, worker_id: str) -> Worker:
        return self._send(_Calls.worker(worker_id))

    def drain_worker(self, worker_id: str) -> Worker:
        return self._send(_Calls.drain_worker(worker_id))

    def undrain_worker(self, worker_id: str) -> Worker:
        return self._send(_Calls.undrain_worker(worker_id))

    def set_worker_owner(self, worker_id: str, owner: str | None) -> Worker:
        """Give a worker to a user (None: to nobody); an admin's call."""
        return self._send(_Calls.set_worker_owner(worker_id, owner))

    def delete_worker(self, worker_id: str) -> None:
        self._send(_Calls.delete_worker(worker_id))

    def health(self) -> dict[str, Any]:
        return self._send(_Calls.health())

    def metrics(self) -> str:
        """``GET /metrics``: the Prometheus text exposition."""
        return self._send(_Calls.metrics())

    def schedule_task(self, spec: Mapping[str, Any]) -> Schedule:
        """``POST /tasks`` with ``schedule`` (cron) set: the schedule that will create the task."""
        return self._send(_Calls.schedule_task(_spec(spec)))

    # --- jobs and workflows ---------------------------------------------------------------

    def create_job(self, spec: RunSpec) -> Workflow | Schedule:
        """``POST /jobs``: the job (started unless ``start`` is false), or its
        :class:`Schedule` when ``spec`` has ``schedule``."""
        return self._send(_Calls.create_run("jobs", _run_body(spec)))

    def job(self, job_id: str) -> Workflow:
        return self._send(_Calls.run("jobs", job_id))

    def jobs(self, *, limit: int | None = None, offset: int | None = None) -> Page[Workflow]:
        return self._send(_Calls.runs("jobs", _filters(limit=limit, offset=offset)))

    def stop_job(self, job_id: str) -> Workflow:
        return self._send(_Calls.stop_run("jobs", job_id))

    def wait_job(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        progress: Progress | None = None,
        poll_s: float = LONG_POLL_S,
    ) -> Workflow:
        """The job once terminal; ``progress`` sees every state polled (at most ``poll_s``
        apart). :class:`WaitTimeout` if it is not done within ``timeout``."""
        plan = _Wait.run("jobs", job_id, timeout, self._clock, poll_s)
        return self._poll(plan, progress)

    def create_workflow(self, spec: RunSpec) -> Workflow | Schedule:
        """``POST /workflows``: the workflow (started unless ``start`` is false), or its
        :class:`Schedule` when ``spec`` has ``schedule``."""
        return self._send(_Calls.create_run("workflows", _run_body(spec)))

    def workflow(self, workflow_id: str) -> Workflow:
        return self._send(_Calls.run("workflows", workflow_id))

    def workflows(self, *, limit: int | None = None, offset: int | None = None) -> Page[Workflow]:
        return self._send(_Calls.runs("workflows", _filters(limit=limit, offset=offset)))

    def stop_workflow(self, workflow_id: str) -> Workflow:
        return self._send(_Calls.stop_run("workflows", workflow_id))

    def wait_workflow(
        self,
        workflow_id: str,
        timeout: float | None = None,
        *,
        progress: Progress | None = None,
        poll_s: float = LONG_POLL_S,
    ) -> Workflow:
        """The workflow once terminal; ``progress`` sees every state polled (at most ``poll_s``
        apart). :class:`WaitTimeout` if it is not done within ``timeout``."""
        plan = _Wait.run("workflows", workflow_id, timeout, self._clock, poll_s)
        return self._poll(plan, progress)

    def schedules(self, *, limit: int | None = None, offset: int | None = None) -> Page[Schedule]:
        return self._send(_Calls.schedules(_filters(limit=limit, offset=offset)))

    def schedule(self, schedule_id: str) -> Schedule:
        return self._send(_Calls.schedule(schedule_id))

    def pause_schedule(self, schedule_id: str) -> Schedule:
        """Fire nothing until resumed."""
        return self._send(_Calls.schedule_action(schedule_id, "pause"))

    def resume_schedule(self, schedule_id: str) -> Schedule:
        """Fire again; the schedule's ``catch_up`` says which slots missed meanwhile run."""
        return self._send(_Calls.schedule_action(schedule_id, "resume"))

    def delete_schedule(self, schedule_id: str) -> None:
        self._send(_Calls.delete_schedule(schedule_id))

    # --- federated learning ----------------------------------------------------------------

    def fl_create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Start an experiment (docs/fl.md); its ``initial_model`` may be bytes or a path."""
        return self._send(_Calls.fl_create(_experiment(body)))

    def fl_experiments(
        self, *, limit: int | None = None, offset: int | None = None
    ) -> dict[str, Any]:
        return self._send(_Calls.fl_experiments(_filters(limit=limit, offset=offset)))

    def fl_experiment(self, experiment_id: str) -> dict[str, Any]:
        return self._send(_Calls.fl_experiment(experiment_id))

    def fl_stop(self, experiment_id: str) -> dict[str, Any]:
        return self._send(_Calls.fl_stop(experiment_id))

    def fl_delete(self, experiment_id: str) -> None:
        """Delete an ended experiment and its blobs (docs/fl.md)."""
        self._send(_Calls.fl_delete(experiment_id))

    def fl_model(self, experiment_id: str, version: int | None = None) -> bytes:
        """A global model version, raw ``f32`` (docs/fl.md)."""
        return self._send(_Calls.fl_model(experiment_id, version))

    # --- the chute store (docs/chutes.md) --------------------------------------------------

    def publish_chute(
        self, manifest: Mapping[str, Any], project: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """``POST /store/chutes``: the published version, and False when that version
        was published already with this very content."""
        return self._send(_Calls.publish_chute(dict(manifest), project))

    def store_chutes(
        self, *, limit: int | None = None, offset: int | None = None
    ) -> dict[str, Any]:
        return self._send(_Calls.store_chutes(_filters(limit=limit, offset=offset)))

    def store_chute(self, name: str) -> dict[str, Any]:
        """A chute in the store: its latest version and every version, newest first."""
        return self._send(_Calls.store_chute(name))

    def store_chute_version(self, name: str, version: str) -> dict[str, Any]:
        """A published version with its ``manifest``."""
        return self._send(_Calls.store_chute_version(name, version))

    def delete_store_chute_version(self, name: str, version: str) -> None:
        self._send(_Calls.delete_store_chute_version(name, version))

    # --- clusters and applications --------------------------------------------------------

    def clusters(self, *, limit: int | None = None, offset: int | None = None) -> Page[Cluster]:
        return self._send(_Calls.clusters(_filters(limit=limit, offset=offset)))

    def cluster(self, cluster_id: str) -> Cluster:
        return self._send(_Calls.cluster(cluster_id))

    def delete_cluster(self, cluster_id: str) -> None:
        """``DELETE /clusters/{id}`` (a root's): revoke and forget the cluster."""
        self._send(_Calls.delete_cluster(cluster_id))

    def create_application(self, spec: AppSpec) -> ApplicationView:
        """``POST /applications``: the application, its instances placed in the background."""
        return self._send(_Calls.create_application(_run_body(spec, "services")))

    def applications(
        self, *, limit: int | None = None, offset: int | None = None
    ) -> Page[ApplicationView]:
        return self._send(_Calls.applications(_filters(limit=limit, offset=offset)))

    def application(self, app_id: str) -> ApplicationView:
        return self._send(_Calls.application(app_id))

    def update_application(self, app_id: str, spec: AppSpec) -> ApplicationView:
        """``PUT /applications/{id}``: the new descriptor, rolled out instance by instance."""
        return self._send(_Calls.update_application(app_id, _run_body(spec, "services")))

    def delete_application(self, app_id: str) -> None:
        self._send(_Calls.delete_application(app_id))

    # --- users and tokens (docs/security.md) ----------------------------------------------

    def login(self, name: str, password: str) -> dict[str, Any]:
        """``access_token`` (short-lived), ``refresh_token``, ``expires_in``."""
        return self._send(_Calls.login(name, password))

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        """A new pair; the refresh token given is used up."""
        return self._send(_Calls.refresh(refresh_token))

    def create_user(
        self,
        name: str,
        password: str,
        *,
        role: str = "viewer",
        projects: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        return self._send(_Calls.create_user(_user_body(name, password, role, projects)))

    def users(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._send(_Calls.users())["items"]
        return items

    def delete_user(self, name: str) -> None:
        self._send(_Calls.delete_user(name))

    def create_token(
        self,
        name: str = "",
        *,
        scopes: Sequence[str] | None = None,
        expires_in: float | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """A long-lived token; its secret (``token``) is in this answer only."""
        return self._send(_Calls.create_token(_token_body(name, scopes, expires_in, user)))

    def tokens(self, user: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._send(_Calls.tokens(user))["items"]
        return items

    def revoke_token(self, token_id: str) -> None:
        self._send(_Calls.revoke_token(token_id))

    def audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        resource: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        cursor: int | None = None,
    ) -> AuditPage:
        """A page of the audit log, newest first (admin); ``next`` is the ``cursor`` of
        the page after it. ``action``: an HTTP method or a broker identity change;
        ``resource``: a kind (``task``) or ``kind/id``; ``since``/``until``: unix times."""
        return self._send(
            _Calls.audit(_audit_params(actor, action, resource, since, until, limit, cursor))
        )


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
        ca: str | Path | None = None,
    ) -> None:
        super().__init__(url, token, timeout, clock, ca)
        verify = self._tls if self._tls is not None else True
        self._http = httpx.AsyncClient(transport=transport, verify=verify, **self._options())

    async def _send(self, call: _Call[T]) -> T:
        request = self._request(call).for_httpx()
        tried: set[str] = set()
        while True:
            tried.add(self.url)
            try:
                reply = Reply.of(await self._http.request(**request))
            except httpx.TransportError as exc:
                # only a request that surely did nothing is sent again, elsewhere
                sent = not isinstance(exc, httpx.ConnectError)
                if sent or not self._move(tried, None):
                    raise _unreachable(self.url, exc) from None
                continue
            if reply.leader is not None and self._move(tried, reply.leader):
                continue
            return call.parse(reply)

    def _retarget(self) -> None:
        self._http.base_url = httpx.URL(self.url)

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
        module = await _module(file)
        return await self._send(_Calls.create(_submit_body(module, name, inputs, fields)))

    async def run(
        self,
        file: FileArg = None,
        name: str = "",
        inputs: Sequence[Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **fields: Any,
    ) -> Task:
        """Create a task and wait for it to end: one request when it ends within
        :data:`LONG_POLL_S` (``POST /tasks?wait=``); :class:`WaitTimeout` after ``timeout``."""
        body = _submit_body(await _module(file), name, inputs, fields)
        return await self._poll(_Wait.new_task(body, timeout, self._clock))

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

    async def retry(self, task_id: str) -> Task:
        """See :meth:`Client.retry`."""
        return await self._send(_Calls.action(task_id, "retry"))

    async def get(self, task_id: str) -> Task:
        return await self._send(_Calls.get(task_id))

    # The timeout is a server-side long-poll deadline, not an asyncio one: hence noqa.
    async def _poll(self, plan: _Wait[D], progress: Callable[[D], object] | None = None) -> D:
        last: D | None = None
        while (call := plan.next_call(last)) is not None:
            try:
                last = await self._send(call)
            except Busy as busy:  # too many answers held open there: ask again soon
                await asyncio.sleep(plan.pause_for(busy))
                continue
            if progress is not None:
                progress(last)
        assert last is not None
        return last

    async def wait(self, task_id: str, timeout: float | None = None) -> Task:  # noqa: ASYNC109
        """The task once terminal (long-polling, no busy loop); :class:`WaitTimeout` if not."""
        return await self._poll(_Wait.task(task_id, timeout, self._clock))

    async def result(self, task_id: str, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Wait, then the task's results; :class:`TaskFailure` if it did not complete."""
        return _outcome(await self.wait(task_id, timeout))

    async def list_tasks(
        self,
        *,
        state: str | None = None,
        name: str | None = None,
        worker_id: str | None = None,
        job_id: str | None = None,
        workflow_id: str | None = None,
        order: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        cursor: str | None = None,
    ) -> TaskPage:
        """See :meth:`Client.list_tasks`."""
        params = _filters(
            state=state,
            name=name,
            worker_id=worker_id,
            job_id=job_id,
            workflow_id=workflow_id,
            order=order,
            limit=limit,
            offset=offset,
            cursor=cursor,
        )
        return await self._send(_Calls.list_tasks(params))

    async def count_tasks(self) -> dict[str, int]:
        """See :meth:`Client.count_tasks`."""
        return await self._send(_Calls.count_tasks())

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

    async def undrain_worker(self, worker_id: str) -> Worker:
        return await self._send(_Calls.undrain_worker(worker_id))

    async def set_worker_owner(self, worker_id: str, owner: str | None) -> Worker:
        """Give a worker to a user (None: to nobody); an admin's call."""
        return await self._send(_Calls.set_worker_owner(worker_id, owner))

    async def delete_worker(self, worker_id: str) -> None:
        await self._send(_Calls.delete_worker(worker_id))

    async def health(self) -> dict[str, Any]:
        return await self._send(_Calls.health())

    async def metrics(self) -> str:
        """``GET /metrics``: the Prometheus text exposition."""
        return await self._send(_Calls.metrics())

    async def schedule_task(self, spec: Mapping[str, Any]) -> Schedule:
        """``POST /tasks`` with ``schedule`` (cron) set: the schedule that will create the task."""
        return await self._send(_Calls.schedule_task(_spec(spec)))

    # --- jobs and workflows ---------------------------------------------------------------

    async def create_job(self, spec: RunSpec) -> Workflow | Schedule:
        """``POST /jobs``: the job (started unless ``start`` is false), or its
        :class:`Schedule` when ``spec`` has ``schedule``."""
        return await self._send(_Calls.create_run("jobs", _run_body(spec)))

    async def job(self, job_id: str) -> Workflow:
        return await self._send(_Calls.run("jobs", job_id))

    async def jobs(self, *, limit: int | None = None, offset: int | None = None) -> Page[Workflow]:
        return await self._send(_Calls.runs("jobs", _filters(limit=limit, offset=offset)))

    async def stop_job(self, job_id: str) -> Workflow:
        return await self._send(_Calls.stop_run("jobs", job_id))

    async def wait_job(
        self,
        job_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
        *,
        progress: Progress | None = None,
        poll_s: float = LONG_POLL_S,
    ) -> Workflow:
        """The job once terminal; ``progress`` sees every state polled (at most ``poll_s``
        apart). :class:`WaitTimeout` if it is not done within ``timeout``."""
        plan = _Wait.run("jobs", job_id, timeout, self._clock, poll_s)
        return await self._poll(plan, progress)

    async def create_workflow(self, spec: RunSpec) -> Workflow | Schedule:
        """``POST /workflows``: the workflow (started unless ``start`` is false), or its
        :class:`Schedule` when ``spec`` has ``schedule``."""
        return await self._send(_Calls.create_run("workflows", _run_body(spec)))

    async def workflow(self, workflow_id: str) -> Workflow:
        return await self._send(_Calls.run("workflows", workflow_id))

    async def workflows(
        self, *, limit: int | None = None, offset: int | None = None
    ) -> Page[Workflow]:
        return await self._send(_Calls.runs("workflows", _filters(limit=limit, offset=offset)))

    async def stop_workflow(self, workflow_id: str) -> Workflow:
        return await self._send(_Calls.stop_run("workflows", workflow_id))

    async def wait_workflow(
        self,
        workflow_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
        *,
        progress: Progress | None = None,
        poll_s: float = LONG_POLL_S,
    ) -> Workflow:
        """The workflow once terminal; ``progress`` sees every state polled (at most ``poll_s``
        apart). :class:`WaitTimeout` if it is not done within ``timeout``."""
        plan = _Wait.run("workflows", workflow_id, timeout, self._clock, poll_s)
        return await self._poll(plan, progress)

    async def schedules(
        self, *, limit: int | None = None, offset: int | None = None
    ) -> Page[Schedule]:
        return await self._send(_Calls.schedules(_filters(limit=limit, offset=offset)))

    async def schedule(self, schedule_id: str) -> Schedule:
        return await self._send(_Calls.schedule(schedule_id))

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        return await self._send(_Calls.schedule_action(schedule_id, "pause"))

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        return await self._send(_Calls.schedule_action(schedule_id, "resume"))

    async def delete_schedule(self, schedule_id: str) -> None:
        await self._send(_Calls.delete_schedule(schedule_id))

    # --- federated learning ----------------------------------------------------------------

    async def fl_create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Start an experiment (docs/fl.md); its ``initial_model`` may be bytes or a path."""
        return await self._send(_Calls.fl_create(await asyncio.to_thread(_experiment, body)))

    async def fl_experiments(
        self, *, limit: int | None = None, offset: int | None = None
    ) -> dict[str, Any]:
        return await self._send(_Calls.fl_experiments(_filters(limit=limit, offset=offset)))

    async def fl_experiment(self, experiment_id: str) -> dict[str, Any]:
        return await self._send(_Calls.fl_experiment(experiment_id))

    async def fl_stop(self, experiment_id: str) -> dict[str, Any]:
        return await self._send(_Calls.fl_stop(experiment_id))

    async def fl_delete(self, experiment_id: str) -> None:
        """Delete an ended experiment and its blobs (docs/fl.md)."""
        await self._send(_Calls.fl_delete(experiment_id))

    async def fl_model(self, experiment_id: str, version: int | None = None) -> bytes:
        """A global model version, raw ``f32`` (docs/fl.md)."""
        return await self._send(_Calls.fl_model(experiment_id, version))

    # --- clusters and applications --------------------------------------------------------

    async def clusters(
        self, *, limit: int | None = None, offset: int | None = None
    ) -> Page[Cluster]:
        return await self._send(_Calls.clusters(_filters(limit=limit, offset=offset)))

    async def cluster(self, cluster_id: str) -> Cluster:
        return await self._send(_Calls.cluster(cluster_id))

    async def delete_cluster(self, cluster_id: str) -> None:
        """``DELETE /clusters/{id}`` (a root's): revoke and forget the cluster."""
        await self._send(_Calls.delete_cluster(cluster_id))

    async def publish_chute(
        self, manifest: Mapping[str, Any], project: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """``POST /store/chutes``: the published version, and False when that version
        was published already with this very content."""
        return await self._send(_Calls.publish_chute(dict(manifest), project))

    async def store_chutes(
        self, *, limit: int | None = None, offset: int | None = None
    ) -> dict[str, Any]:
        return await self._send(_Calls.store_chutes(_filters(limit=limit, offset=offset)))

    async def store_chute(self, name: str) -> dict[str, Any]:
        return await self._send(_Calls.store_chute(name))

    async def store_chute_version(self, name: str, version: str) -> dict[str, Any]:
        return await self._send(_Calls.store_chute_version(name, version))

    async def delete_store_chute_version(self, name: str, version: str) -> None:
        await self._send(_Calls.delete_store_chute_version(name, version))

    async def create_application(self, spec: AppSpec) -> ApplicationView:
        """``POST /applications``: the application, its instances placed in the background."""
        return await self._send(_Calls.create_application(_run_body(spec, "services")))

    async def applications(
        self, *, limit: int | None = None, offset: int | None = None
    ) -> Page[ApplicationView]:
        return await self._send(_Calls.applications(_filters(limit=limit, offset=offset)))

    async def application(self, app_id: str) -> ApplicationView:
        return await self._send(_Calls.application(app_id))

    async def update_application(self, app_id: str, spec: AppSpec) -> ApplicationView:
        """``PUT /applications/{id}``: the new descriptor, rolled out instance by instance."""
        return await self._send(_Calls.update_application(app_id, _run_body(spec, "services")))

    async def delete_application(self, app_id: str) -> None:
        await self._send(_Calls.delete_application(app_id))

    # --- users and tokens (docs/security.md) ----------------------------------------------

    async def login(self, name: str, password: str) -> dict[str, Any]:
        """``access_token`` (short-lived), ``refresh_token``, ``expires_in``."""
        return await self._send(_Calls.login(name, password))

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        """A new pair; the refresh token given is used up."""
        return await self._send(_Calls.refresh(refresh_token))

    async def create_user(
        self,
        name: str,
        password: str,
        *,
        role: str = "viewer",
        projects: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        return await self._send(_Calls.create_user(_user_body(name, password, role, projects)))

    async def users(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await self._send(_Calls.users()))["items"]
        return items

    async def delete_user(self, name: str) -> None:
        await self._send(_Calls.delete_user(name))

    async def create_token(
        self,
        name: str = "",
        *,
        scopes: Sequence[str] | None = None,
        expires_in: float | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """A long-lived token; its secret (``token``) is in this answer only."""
        return await self._send(_Calls.create_token(_token_body(name, scopes, expires_in, user)))

    async def tokens(self, user: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await self._send(_Calls.tokens(user)))["items"]
        return items

    async def revoke_token(self, token_id: str) -> None:
        await self._send(_Calls.revoke_token(token_id))

    async def audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        resource: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        cursor: int | None = None,
    ) -> AuditPage:
        """See :meth:`Client.audit`."""
        return await self._send(
            _Calls.audit(_audit_params(actor, action, resource, since, until, limit, cursor))
        )
