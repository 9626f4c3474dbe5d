"""Federated learning (docs/fl.md): experiments for users; model, shard and updates for
the training tasks, which call with their own client credential (``edgeplane.fl.tokens``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.types import Receive, Scope, Send

from edgeplane.api.deps import BearerDeclared, CallerDep, caller
from edgeplane.api.params import Limit, Offset
from edgeplane.api.routing import JsonRoute
from edgeplane.errors import EdgeplaneError, Invalid, NotFound, Unauthorized, Unavailable
from edgeplane.fl import tokens
from edgeplane.fl.spec import ExperimentSpec
from edgeplane.security import projects

if TYPE_CHECKING:  # numpy is the fl extra's
    from edgeplane.fl.coordinator import Coordinator
    from edgeplane.fl.state import Experiment
    from edgeplane.store import TokenRecord

PREFIX = "/fl/experiments"
RAW = "application/x-edgeplane-f32"
#: an update's answer with ``then=assignment``: JSON lines
NDJSON = "application/x-ndjson"
#: a client's shard
NPZ = "application/x-npz"
#: An update's body: the digits model is 2.6 kB; far past any model this coordinator
#: aggregates in memory
MAX_UPDATE_BYTES = 256 * 2**20
#: The longest a long-lived client's ask for its next round is held open, s (it asks
#: again after an empty answer)
MAX_WAIT_S = 60.0


async def _coordinator(request: Request) -> Coordinator:
    # async: a plain def went through the thread pool on every request (7.7 % of the
    # coordinator process's samples with long-lived clients, py-spy under bench/fl.py)
    found: Coordinator | None = getattr(request.app.state, "fl", None)
    if found is None:
        raise Unavailable(
            "federated learning is off on this manager: install edgeplane[fl] (numpy, scikit-learn)"
        )
    return found


FlDep = Annotated["Coordinator", Depends(_coordinator)]

users = APIRouter(prefix=PREFIX, tags=["fl"], route_class=JsonRoute)
clients = APIRouter(
    prefix=PREFIX, tags=["fl"], route_class=JsonRoute, dependencies=[BearerDeclared]
)


@users.post("", status_code=201)
async def create(spec: ExperimentSpec, fl: FlDep, who: CallerDep) -> dict[str, Any]:
    """Start an experiment (docs/fl.md); its ``initial_model`` (``{"data": base64}`` or
    ``{"experiment": ID, "version": N}``) becomes model version 0."""
    project = str(spec.workload.get("project", "default"))
    projects.check_new(who, project)
    source = spec.initial_model
    if source is not None and source.experiment is not None:
        # another experiment's model: only one the caller may see (else as if missing)
        try:
            await _seen(fl, who, source.experiment)
        except NotFound:
            raise Invalid(
                f"experiment {source.experiment} not found", field="initial_model.experiment"
            ) from None
    return (await fl.create(spec, project=project)).public()


@users.get("")
async def list_(
    fl: FlDep, who: CallerDep, limit: Limit = 100, offset: Offset = 0
) -> dict[str, Any]:
    """The experiments you may see, oldest first."""
    items, total = await fl.list(limit=limit, offset=offset, projects=projects.visible(who))
    return {"items": [e.public() for e in items], "total": total}


async def _seen(fl: Coordinator, who: TokenRecord, experiment_id: str) -> Experiment:
    """The experiment, 404 as if it did not exist when it is another project's."""
    exp = await fl.get(experiment_id)
    projects.check(who, exp.project, "experiment", experiment_id)
    return exp


@users.get("/{experiment_id}")
async def get(experiment_id: str, fl: FlDep, who: CallerDep) -> dict[str, Any]:
    """An experiment: its state, its rounds and their metrics, its model version."""
    return (await _seen(fl, who, experiment_id)).public()


@users.post("/{experiment_id}/stop")
async def stop(experiment_id: str, fl: FlDep, who: CallerDep) -> dict[str, Any]:
    """Stop an experiment: its round's training tasks are cancelled."""
    await _seen(fl, who, experiment_id)
    return (await fl.stop_experiment(experiment_id)).public()


@users.delete("/{experiment_id}", status_code=204)
async def delete(experiment_id: str, fl: FlDep, who: CallerDep) -> Response:
    """Delete an ended experiment (completed, stopped or failed) with its model versions
    and every blob of it no other experiment references; 409 naming ``state`` while it
    runs (stop it first)."""
    await _seen(fl, who, experiment_id)
    await fl.delete_experiment(experiment_id)
    return Response(status_code=204)


def _client_token(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth is None or not tokens.is_client_token(auth):
        return None
    return auth.removeprefix("Bearer ")


@clients.get("/{experiment_id}/model", response_class=Response)
async def model(
    experiment_id: str,
    request: Request,
    fl: FlDep,
    version: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
) -> Response:
    """A global model version (the newest without ``version``), raw ``f32`` (docs/fl.md)."""
    token = _client_token(request)
    if token is None:
        exp = await _seen(fl, await caller(request, None), experiment_id)
        v, body = await fl.model_bytes(exp, version)
    else:
        v, body = await fl.client_model(experiment_id, token, version)
    return Response(body, media_type=RAW, headers={"X-Model-Version": str(v)})


@clients.get("/{experiment_id}/rounds/{round_no}/data", response_class=Response)
async def data(experiment_id: str, round_no: int, request: Request, fl: FlDep) -> Response:
    """The calling client's shard, as ``.npz`` (``x``: float32 features, ``y``: labels)."""
    token = _required(request)
    body = await fl.shard(experiment_id, round_no, token)
    return Response(body, media_type=NPZ)


@clients.get("/{experiment_id}/assignment")
async def assignment(
    experiment_id: str,
    request: Request,
    fl: FlDep,
    round: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    attempt: Annotated[int, Query(ge=0, le=1_000)] = 0,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 20.0,
    model: Annotated[Literal["uri", "inline"], Query()] = "uri",
) -> dict[str, Any]:
    """A long-lived client's next round (``client_tasks: persistent``), after the
    ``round`` and ``attempt`` it was last given: held open up to ``wait`` s until there is
    one; ``round`` null when there was none, ``state`` other than ``running`` when the
    experiment ended. ``model=inline``: the round's model comes in the answer too
    (``model``, base64) when it is at most 256 KiB (docs/fl.md)."""
    token = _required(request)
    return await fl.assignment(
        experiment_id, token, (round, attempt), wait, inline=model == "inline"
    )


@clients.post("/{experiment_id}/rounds/{round_no}/updates", status_code=202, response_model=None)
async def update(
    experiment_id: str,
    round_no: int,
    request: Request,
    fl: FlDep,
    attempt: Annotated[int | None, Query(ge=0, le=1_000)] = None,
    then: Annotated[Literal["none", "assignment"], Query()] = "none",
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 20.0,
    model: Annotated[Literal["uri", "inline"], Query()] = "uri",
) -> dict[str, Any] | Response:
    """A client's update (raw ``f32`` / ``f32-delta`` or ``.npz``); 422 with the reason
    (shape, nonfinite, malformed, unselected, closed, duplicate) when refused; ``attempt``:
    the round attempt a long-lived client trained for (another is late: ``closed``). A
    client that cannot reach it publishes the same over MQTT (docs/fl.md).
    ``then=assignment`` (a long-lived client, with ``attempt``): the answer is two JSON
    lines (``application/x-ndjson``), the update's at once and then, within ``wait`` s,
    the client's next round as ``GET .../assignment`` with ``wait`` and ``model`` would
    answer it after this round (no second line when it cannot be told: the client asks)."""
    token = _required(request)
    body = await request.body()
    content_type = request.headers.get("content-type", RAW)
    found = await fl.offer(experiment_id, round_no, token, body, content_type, attempt=attempt)
    if then == "none" or attempt is None:
        return found
    return then_next(fl, experiment_id, token, (round_no, attempt), wait, model == "inline", found)


def then_next(
    fl: Coordinator,
    experiment_id: str,
    token: str,
    after: tuple[int, int],
    wait: float,
    inline: bool,
    taken: dict[str, Any],
) -> Response:
    """The answer to an update with ``then=assignment`` (here and in ``fl_fastpath``):
    the update's answer as its first line, sent at once, so that a client whose
    connection drops while the next round is awaited knows its update was taken (and
    asks for the round, rather than sending the update again over MQTT: a manager
    killed mid-wait had it refused as a duplicate, tests/faults/test_fl_kill.py)."""

    async def rest() -> bytes:
        try:
            told = await fl.assignment(experiment_id, token, after, wait, inline=inline)
        except EdgeplaneError:  # not told here: the client asks (its update stays taken)
            return b""
        return orjson.dumps(told) + b"\n"

    return _Lines(orjson.dumps(taken) + b"\n", rest)


class _Lines(Response):
    """A 202 of two JSON lines, the second once ``rest`` has it. Starlette's
    StreamingResponse runs a task group (a task listening for a disconnect beside the
    body) per answer: this is two sends (an orphaned wait ends within its ``wait``)."""

    def __init__(self, first: bytes, rest: Callable[[], Awaitable[bytes]]) -> None:
        self.status_code = 202
        self.first, self.rest = first, rest
        self.raw_headers = [(b"content-type", NDJSON.encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 202, "headers": self.raw_headers}
        await send(start)
        await send({"type": "http.response.body", "body": self.first, "more_body": True})
        await send({"type": "http.response.body", "body": await self.rest()})


def _required(request: Request) -> str:
    token = _client_token(request)
    if token is None:
        raise Unauthorized("a training task's client credential (FL_TOKEN) is needed")
    return token
