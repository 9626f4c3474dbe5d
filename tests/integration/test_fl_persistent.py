"""Long-lived clients (``client_tasks: persistent``) against a real API and real workers:
what the assignment long-poll hands out and to whom, a late update of an earlier attempt,
a client whose task ended replaced at the next round, the experiment's end told to a
client that waits, and the clients a restart finds never submitted started.

The clients here only sleep (their tasks stay live, so their credentials hold); the test
asks and posts for them, with credentials made from the stored experiment's key."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from edgeplane.errors import Unavailable
from edgeplane.fl import tokens, updates
from edgeplane.fl.model import initial
from edgeplane.fl.state import Experiment
from edgeplane.roles.up import Stack
from stack_fixtures import start_stack

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(150)]

pytest.importorskip("sklearn")

WAIT_S = 60.0
SLEEP = {"runtime": "host", "command": ["sleep", "300"]}


@pytest.fixture
async def stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for pair in start_stack(tmp_path, fast_broker_url, store, unique_domain):
        yield pair


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT_S):
            while not await condition():  # noqa: ASYNC110 -- the API has nothing to wait on
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def spec(**fields: Any) -> dict[str, Any]:
    return {
        "name": "warm",
        "workload": SLEEP,
        "rounds": 2,
        "clients_per_round": 2,
        "min_clients": 1,
        "client_tasks": "persistent",
        **fields,
    }


def bearer(exp: Experiment, worker: str, task: str, round_no: int = 0) -> dict[str, str]:
    grant = tokens.Grant(exp.id, round_no, worker, task)
    return {"Authorization": f"Bearer {tokens.issue(bytes.fromhex(exp.secret), grant)}"}


async def test_rounds_are_handed_to_each_live_client_once_and_a_dead_one_is_replaced(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    running, http = stack
    store = running.control.store
    exp_id = (await http.post("/fl/experiments", json=spec(round_timeout_s=4))).json()["id"]

    async def read() -> Experiment:
        exp = await store.get_fl_experiment(exp_id)
        assert exp is not None
        return exp

    async def handed_out(round_no: int) -> bool:
        exp = await read()
        return exp.round == round_no and exp.rounds[-1].opened_at is not None

    await until(partial_(handed_out, 1), "round 1 is handed out")
    exp = await read()
    w1, w2 = exp.rounds[0].clients
    first = dict(exp.client_tasks)
    assert first == exp.rounds[0].tasks and len(set(first.values())) == 2

    async def live(task_id: str) -> bool:
        return bool((await http.get(f"/tasks/{task_id}")).json()["state"] == "running")

    await until(partial_(live, first[w1]), "w1's client runs")
    await until(partial_(live, first[w2]), "w2's client runs")
    url = f"/fl/experiments/{exp_id}/assignment"
    w1_auth = bearer(exp, w1, first[w1])

    got = (await http.get(url, headers=w1_auth, params={"wait": 0})).json()
    assert got["round"] == 1 and got["attempt"] == 0 and got["state"] == "running", got
    assert "model" not in got and got["model_uri"].endswith("/model?version=0")
    # the same, with the (small) model in the answer
    inline = (await http.get(url, headers=w1_auth, params={"wait": 0, "model": "inline"})).json()
    assert inline["round"] == 1
    model = updates.decode(base64.b64decode(inline["model"])).arrays
    assert set(model) == {"w", "b"} and not model["w"].any()
    assert got["shard"] == [0, 2] and got["update_url"].endswith("/rounds/1/updates?attempt=0")
    # given once: asked again with that cursor, there is nothing until the next round
    again = await http.get(url, headers=w1_auth, params={"round": 1, "attempt": 0, "wait": 0.2})
    assert again.json() == {"state": "running", "round": None}
    # only the client task of the worker's credential is handed its rounds
    other = await http.get(url, headers=bearer(exp, w1, first[w2]), params={"wait": 0})
    assert other.json()["round"] is None
    # a per-round credential (naming its round) has no assignments
    per_round = await http.get(url, headers=bearer(exp, w1, first[w1], 1), params={"wait": 0})
    assert per_round.status_code == 401
    bad_wait = await http.get(url, headers=w1_auth, params={"wait": 600})
    assert bad_wait.status_code == 422 and "wait" in bad_wait.text

    post = f"/fl/experiments/{exp_id}/rounds/1/updates"
    good = updates.encode_raw(initial(), num_samples=10)
    late = await http.post(post, params={"attempt": 1}, content=good, headers=w1_auth)
    assert (late.status_code, late.json()["reason"]) == (422, "closed")
    taken = await http.post(post, params={"attempt": 0}, content=good, headers=w1_auth)
    assert taken.status_code == 202, taken.text

    # w2's client dies: round 1 closes at its timeout with w1's update (min_clients 1),
    # and round 2 gives w2 a new client while w1 keeps its own
    assert (await http.post(f"/tasks/{first[w2]}/stop")).status_code == 200
    waiting = asyncio.create_task(
        http.get(url, headers=w1_auth, params={"round": 1, "attempt": 0, "wait": 20})
    )
    await until(partial_(handed_out, 2), "round 2 is handed out")
    exp = await read()
    assert exp.rounds[0].state == "closed" and exp.rounds[0].updates == {w1: 10}
    assert exp.rounds[0].rejected == {"closed": 1}
    assert exp.client_tasks[w1] == first[w1] and exp.client_tasks[w2] != first[w2]
    assert exp.rounds[1].tasks == exp.client_tasks
    got = (await waiting).json()  # the waiting ask is answered by round 2's opening
    assert (got["round"], got["attempt"], got["model_version"]) == (2, 0, 1), got
    dead = await http.get(url, headers=bearer(exp, w2, first[w2]), params={"wait": 0})
    assert dead.status_code == 401  # the credential expired with its task
    fresh = bearer(exp, w2, exp.client_tasks[w2])
    await until(partial_(live, exp.client_tasks[w2]), "w2's new client runs")
    # round 1 never had w2's first client ask: never ready; round 2 is once w2's new one
    # asks (w1's waited for it), and its deadline counts from then
    assert exp.rounds[0].ready_at is None and exp.rounds[1].ready_at is None
    assert (await http.get(url, headers=fresh, params={"wait": 0})).json()["round"] == 2
    ready = (await read()).rounds[1]
    assert ready.ready_at is not None and ready.opened_at is not None
    assert ready.ready_at >= ready.opened_at and ready.deadline >= ready.ready_at + 4
    shown = (await http.get(f"/fl/experiments/{exp_id}")).json()["rounds"][1]
    assert shown["ready_at"] == ready.ready_at

    # the experiment's end is told to a client that waits for its next round
    waiting = asyncio.create_task(
        http.get(url, headers=w1_auth, params={"round": 2, "attempt": 0, "wait": 20})
    )
    coordinator = running.control.fl
    assert coordinator is not None

    async def asking() -> bool:  # the ask is held by the coordinator (not yet answered)
        return exp_id in coordinator._changed

    await until(asking, "the client's ask waits at the coordinator")
    assert (await http.post(f"/fl/experiments/{exp_id}/stop")).status_code == 200
    assert (await waiting).json() == {"state": "stopped", "round": None}

    async def stopped() -> bool:
        return not any([await live(t) for t in (first[w1], exp.client_tasks[w2])])

    await until(stopped, "a stopped experiment's clients are stopped")


async def test_an_update_is_answered_with_the_clients_next_round(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    """``then=assignment``: the update's answer holds the next round once it is out
    (held open until then), and the experiment's end after the last; one call a round."""
    running, http = stack
    store = running.control.store
    body = spec(rounds=2, min_clients=2, round_timeout_s=60)
    exp_id = (await http.post("/fl/experiments", json=body)).json()["id"]

    async def opened() -> bool:
        exp = await store.get_fl_experiment(exp_id)
        return exp is not None and exp.round == 1 and exp.rounds[-1].opened_at is not None

    await until(opened, "round 1 is handed out")
    exp = await store.get_fl_experiment(exp_id)
    assert exp is not None
    w1, w2 = exp.rounds[0].clients
    auth = {w: bearer(exp, w, exp.client_tasks[w]) for w in (w1, w2)}
    good = updates.encode_raw(initial(), num_samples=10)
    then = {"attempt": 0, "then": "assignment", "wait": 20, "model": "inline"}

    def post(worker: str, round_no: int, **params: Any) -> Awaitable[httpx.Response]:
        url = f"/fl/experiments/{exp_id}/rounds/{round_no}/updates"
        asked = {k: v for k, v in {**then, **params}.items() if v is not None}
        return http.post(url, params=asked, content=good, headers=auth[worker])

    def lines(answer: httpx.Response) -> list[dict[str, Any]]:
        assert answer.status_code == 202, answer.text
        assert answer.headers["content-type"] == "application/x-ndjson"
        return [orjson.loads(line) for line in answer.text.splitlines()]

    bad = await post(w1, 1, then="later")
    assert bad.status_code == 422 and "then" in bad.text
    first = asyncio.create_task(post(w1, 1))  # waits: round 2 needs w2's update too
    coordinator = running.control.fl
    assert coordinator is not None

    async def asking() -> bool:
        return exp_id in coordinator._changed

    await until(asking, "w1's update answer waits for round 2")
    # w2's completes round 1: round 2 is out in its answer, and in w1's
    taken, told = lines(await post(w2, 1, wait=0))
    assert taken == {"accepted": True, "round": 1, "updates": 2}
    assert (told["round"], told["attempt"], told["model_version"]) == (2, 0, 1), told
    assert updates.decode(base64.b64decode(told["model"])).arrays.keys() == {"w", "b"}
    taken, told = lines(await first)
    assert taken == {"accepted": True, "round": 1, "updates": 1}
    assert told["round"] == 2 and told["update_url"].endswith("attempt=0"), told
    # without an attempt (a per-round client's post): the update's answer alone, as JSON
    plain = await post(w1, 2, attempt=None)
    assert plain.status_code == 202 and plain.json()["round"] == 2, plain.text
    assert lines(await post(w2, 2, wait=5))[1] == {"state": "completed", "round": None}


async def test_an_update_whose_write_failed_is_taken_when_sent_again(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    """The coordinator changes the experiment as it last stored it, without reading it
    back: an update whose write failed must leave no trace there (else its resend would
    be refused as a duplicate), and the resend is on record before its 202."""
    running, http = stack
    fl = running.control.fl
    assert fl is not None
    exp_id = (await http.post("/fl/experiments", json=spec(clients_per_round=1))).json()["id"]

    async def read() -> Experiment:
        exp = await fl.store.get_fl_experiment(exp_id)
        assert exp is not None
        return exp

    async def handed_out() -> bool:
        exp = await read()
        return exp.round == 1 and exp.rounds[-1].opened_at is not None

    await until(handed_out, "round 1 is handed out")
    exp = await read()
    (worker,) = exp.rounds[0].clients
    task_id = exp.client_tasks[worker]

    async def live() -> bool:
        return bool((await http.get(f"/tasks/{task_id}")).json()["state"] == "running")

    await until(live, "the client runs")
    auth = bearer(exp, worker, task_id)
    post = f"/fl/experiments/{exp_id}/rounds/1/updates"
    good = updates.encode_raw(initial(), num_samples=10)
    # a malformed one is refused (and counted) first: the document is held from then on
    other = await http.post(post, params={"attempt": 0}, content=b"junk", headers=auth)
    assert (other.status_code, other.json()["reason"]) == (422, "malformed")
    saved = fl.store.save_fl_experiment

    async def failing(*_: object) -> None:
        raise Unavailable("the store is unreachable")

    fl.store.save_fl_experiment = failing  # type: ignore[method-assign]
    try:
        lost = await http.post(post, params={"attempt": 0}, content=good, headers=auth)
    finally:
        fl.store.save_fl_experiment = saved  # type: ignore[method-assign]
    assert lost.status_code == 503, lost.text
    assert (await read()).rounds[0].updates == {}
    again = await http.post(post, params={"attempt": 0}, content=good, headers=auth)
    assert again.status_code == 202, again.text
    exp = await read()
    assert exp.rounds[0].updates == {worker: 10} and exp.rounds[0].rejected == {"malformed": 1}
    await http.post(f"/fl/experiments/{exp_id}/stop")


async def test_clients_stored_but_never_started_are_started_after_a_restart(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    """A manager killed after it stored the experiment's long-lived clients and before it
    submitted them: started again, it starts them (with the ids on record). And one killed
    after it stored a round's version (in the write that opened the next round) and
    before it stored the version's score: it scores it."""
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    first = start_stack(tmp_path, fast_broker_url, store, unique_domain)
    running, http = await first.__anext__()
    try:
        exp_id = (await http.post("/fl/experiments", json=spec())).json()["id"]

        async def opened() -> bool:
            exp = await running.control.store.get_fl_experiment(exp_id)
            return exp is not None and bool(exp.client_tasks)

        await until(opened, "round 1 opens")
        exp = await running.control.store.get_fl_experiment(exp_id)
        assert exp is not None
        never = {worker: f"never-{worker}" for worker in exp.client_tasks}
        exp.client_tasks = never
        exp.rounds[-1].tasks = dict(never)
        # round 1 closed as version 1 (the zeros again), not scored yet
        exp.rounds[-1].state = "closed"
        exp.versions.append(exp.versions[0])
        await running.control.store.save_fl_experiment(exp)
    finally:
        await first.aclose()

    second = start_stack(tmp_path, fast_broker_url, store, unique_domain)
    _, http = await second.__anext__()
    try:

        async def started() -> bool:
            states = [(await http.get(f"/tasks/{t}")).status_code for t in never.values()]
            return states == [200] * len(never)

        await until(started, "the clients are started")
        for task_id in never.values():
            task = (await http.get(f"/tasks/{task_id}")).json()
            assert "FL_ASSIGNMENT_URL" in task["env"] and "ROUND_ID" not in task["env"]
        got = (await http.get(f"/fl/experiments/{exp_id}")).json()
        # the zeros model: every class as likely, a loss of ln 10
        assert got["rounds"][0]["metrics"]["loss"] == pytest.approx(2.302585, abs=1e-4), got
        await http.post(f"/fl/experiments/{exp_id}/stop")
    finally:
        await second.aclose()


def partial_(check: Callable[[Any], Awaitable[bool]], arg: Any) -> Callable[[], Awaitable[bool]]:
    async def call() -> bool:
        return await check(arg)

    return call
