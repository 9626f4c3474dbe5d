"""Bodies of the messages between manager and workers, one model per envelope type."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeplane.errors import Invalid
from edgeplane.model import Aggregate, Capabilities, ClusterInfo, Constraints, Limits, Usage


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Hello(_Body):
    """worker → manager: registration, also sent after every reconnect."""

    worker_id: str
    session: str
    capabilities: Capabilities
    active: list[str] = Field(default_factory=list, description="ids of tasks it still runs")
    #: (epoch, seq) of the last ``task.start`` received, as in :class:`Alive`
    epoch: str = ""
    seq: int = 0
    #: set when the sender is a cluster registering with the root
    cluster: ClusterInfo | None = None
    aggregate: Aggregate | None = None


class Welcome(_Body):
    """manager → worker (or root → cluster): registration accepted."""

    worker_id: str
    session: str
    heartbeat_s: float
    #: the broker the member should use from now on, and its credentials there
    #: (empty: keep the current broker, no credentials needed)
    broker_url: str = ""
    username: str = ""
    password: str = ""


class Alive(_Body):
    """worker → manager heartbeat; the broker's last will sends ``online=False``."""

    online: bool = True
    #: with ``online=False``: sent by a worker that stopped its tasks as it left (not its
    #: last will): none of them will come back, so the manager re-places them at once
    leaving: bool = False
    session: str = ""
    active: list[str] = Field(default_factory=list)
    usage: Usage | None = None
    #: (epoch, seq) of the last ``task.start`` received: every task sent up to it must be
    #: in ``active``, so the manager can tell a lost command from one still in flight.
    epoch: str = ""
    seq: int = 0


class Assignment(_Body):
    """What a worker needs to run one attempt of a task."""

    task_id: str
    attempt: int
    name: str = ""
    runtime: str
    mode: str = "function"
    entrypoint: str = ""
    artifact: str | None = None
    artifact_b64: str | None = Field(
        default=None, description="module bytes, sent once per worker session"
    )
    inputs: list[Any] = Field(default_factory=list)
    cli_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    command: list[str] | None = None
    image: str | None = None
    limits: Limits = Field(default_factory=Limits)
    daemon: bool = False
    #: root → cluster only: what the cluster's own scheduler needs (workers ignore them)
    retries: int = 0
    priority: int = 50
    constraints: Constraints | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    pinned_worker: str | None = None


class StartTasks(_Body):
    tasks: list[Assignment]
    epoch: str = ""
    seq: int = 0


class StopTasks(_Body):
    task_ids: list[str]


#: ``scheduled`` and ``rejected`` only come from a cluster to the root: placed on (or
#: taken back from) one of its workers, or refused because it cannot run the task.
EventState = Literal["scheduled", "running", "completed", "failed", "cancelled", "rejected"]


class TaskEvent(_Body):
    task_id: str
    attempt: int
    state: EventState
    results: Any = None
    error: str | None = None
    transient: bool = False
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    ts: float = 0.0
    #: on a final event: when the attempt started (its "running" event may be left out)
    started_at: float | None = None
    #: the worker inside a cluster, when a cluster reports to the root
    worker_id: str | None = None


class TaskEvents(_Body):
    events: list[TaskEvent]


class EventKey(_Body):
    task_id: str
    attempt: int


class AckEvents(_Body):
    """manager → worker: these final events are stored; stop re-sending them."""

    keys: list[EventKey]


class Reregister(_Body):
    """manager → worker: send ``hello`` again (the manager does not know this session)."""

    reason: str = ""


MESSAGE_TYPES: dict[str, type[BaseModel]] = {
    "hello": Hello,
    "welcome": Welcome,
    "alive": Alive,
    "task.start": StartTasks,
    "task.stop": StopTasks,
    "task.events": TaskEvents,
    "task.ack": AckEvents,
    "reregister": Reregister,
    "aggregate": Aggregate,
}


def parse_body(type_: str, body: dict[str, Any]) -> BaseModel:
    """Validate a body against its type's model; :class:`Invalid` when unknown or bad."""
    model = MESSAGE_TYPES.get(type_)
    if model is None:
        raise Invalid(f"unknown message type {type_!r}", field="type")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Invalid(f"bad {type_} body: {where}: {first['msg']}", field=where) from None
