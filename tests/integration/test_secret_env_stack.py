"""Secret env (docs/security.md, "Secrets"), against the real stack: the task sees the value;
no read of the API, no log line at any level, no MQTT message a subscriber to everything
sees, and no file others may read holds it.

Two brokers: the locked-down Mosquitto ``up`` starts (the subscriber uses the manager's
own identity, which may read every topic) and an external one given with ``--broker``
(no ACL at all: the subscriber is anonymous). On both the value must cross sealed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import shutil
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane.logs import JsonFormatter
from edgeplane.logs import setup as setup_logs
from edgeplane.roles.up import Stack
from edgeplane.transport import MqttLink
from stack_fixtures import start_stack

WAIT_S = 20.0
VALUE = "s3cr3t-" + secrets.token_hex(12)
DIGEST = hashlib.sha256(VALUE.encode()).hexdigest()


def secret_task(**extra: Any) -> dict[str, Any]:
    """A host task printing the sha256 of its secret (not the secret: stdout is a read)."""
    return {
        "name": "uses-secret",
        "runtime": "host",
        "command": ["sh", "-c", 'printf %s "$API_KEY" | sha256sum; echo "plain=$PLAIN"'],
        "env": {"PLAIN": "visible"},
        "secret_env": {"API_KEY": VALUE},
        **extra,
    }


class Captured(logging.Handler):
    """Every log record of the process, at every level, as the JSON line it would be."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Iterator[Captured]:
    """The process's logging as ``--log-level debug`` sets it up, every line kept."""
    handler = Captured()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    setup_logs("debug")
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


class Sniffer:
    """A subscriber to every topic of the domain, keeping each payload."""

    def __init__(self, url: str, domain: str, **credentials: Any) -> None:
        self.payloads: list[bytes] = []
        self.link = MqttLink(
            url,
            client_id=f"sniffer-{secrets.token_hex(4)}",
            subscriptions=[f"{domain}/#"],
            on_message=self._on_message,
            **credentials,
        )

    async def _on_message(self, topic: str, payload: bytes) -> None:
        self.payloads.append(payload)


async def _until_sent(sniffer: Sniffer, marker: bytes) -> None:
    async with asyncio.timeout(WAIT_S):
        while not any(marker in p for p in sniffer.payloads):  # noqa: ASYNC110 -- no event
            await asyncio.sleep(0.02)


async def _exercise(stack: Stack, http: httpx.AsyncClient, sniffer: Sniffer) -> list[str]:
    """Runs the secret through every path a task body takes; returns every API answer."""
    answers: list[str] = []

    def seen(response: httpx.Response, status: int) -> dict[str, Any]:
        answers.append(response.text)
        assert response.status_code == status, response.text
        body: dict[str, Any] = response.json()
        return body

    # a task: created and waited for in one request (the fast path)
    task = seen(
        await http.post("/tasks", params={"wait": WAIT_S}, json=secret_task(start=True)), 201
    )
    assert task["state"] == "completed", task
    assert DIGEST in task["stdout"] and "plain=visible" in task["stdout"]
    assert task["secret_env"] == {"API_KEY": "***"} and task["env"] == {"PLAIN": "visible"}
    for path in ("", "/results", "/logs"):
        seen(await http.get(f"/tasks/{task['id']}{path}"), 200)
    assert seen(await http.get(f"/tasks/{task['id']}"), 200)["secret_env"] == {"API_KEY": "***"}
    listed = seen(await http.get("/tasks"), 200)
    assert all(t["secret_env"] in ({}, {"API_KEY": "***"}) for t in listed["items"])

    # a task created, then started (the other path), and a batch
    created = seen(await http.post("/tasks", json=secret_task()), 201)
    seen(await http.post(f"/tasks/{created['id']}/start"), 200)
    batch = seen(await http.post("/tasks/batch", json={"tasks": [secret_task(start=True)]}), 201)
    for task_id in (created["id"], batch["items"][0]["id"]):
        done = seen(await http.get(f"/tasks/{task_id}", params={"wait": WAIT_S}), 200)
        assert done["state"] == "completed" and DIGEST in done["stdout"], done
    # the store keeps the value itself: a retry or a restarted manager sends it again
    stored = await stack.control.store.get_task(created["id"])
    assert stored is not None and stored.secret_env == {"API_KEY": VALUE}

    # a job's task template, and the job's read
    job = seen(await http.post("/jobs", json={"name": "j", "tasks": [secret_task()]}), 201)
    job = seen(await http.get(f"/jobs/{job['id']}", params={"wait": WAIT_S}), 200)
    assert job["state"] == "completed", job
    assert DIGEST in job["tasks"][0]["stdout"]
    assert job["tasks"][0]["secret_env"] == {"API_KEY": "***"}
    seen(await http.get("/jobs"), 200)

    # schedules keep the template: their reads redact it (task and job schedules)
    cron = {"schedule": "0 0 1 1 *"}
    seen(await http.post("/tasks", json=secret_task(**cron)), 201)
    seen(await http.post("/jobs", json={"tasks": [secret_task()], **cron}), 201)
    schedules = seen(await http.get("/schedules"), 200)["items"]
    assert {s["kind"] for s in schedules} == {"task", "job"}
    kept = await stack.control.store.get_schedule(schedules[0]["id"])
    assert kept is not None and VALUE in str(kept.spec)  # each run is made from it
    for schedule in schedules:
        spec = schedule["spec"]
        template = spec if schedule["kind"] == "task" else spec["tasks"][0]
        assert template["secret_env"] == {"API_KEY": "***"}, schedule

    # a name in env and secret_env: 422 naming the field, without echoing the value
    both = secret_task(env={"API_KEY": VALUE})
    problem = seen(await http.post("/tasks", json=both), 422)
    assert problem["field"] == "secret_env" and "API_KEY" in problem["detail"]
    problem = seen(await http.post("/jobs", json={"tasks": [both]}), 422)
    assert problem["field"] == "tasks[0].secret_env"
    # a patch may not put a secret's name in env
    problem = seen(await http.patch(f"/tasks/{created['id']}", json={"env": {"API_KEY": "x"}}), 422)
    assert problem["field"] == "env"

    # the dashboard's data is the same API: its page holds no data of its own
    answers.append((await http.get(stack.control.url + "/")).text)
    answers.append((await http.get(stack.control.url + "/metrics")).text)
    await _until_sent(sniffer, b'"task.start"')
    return answers


def _assert_nowhere(answers: list[str], sniffer: Sniffer, captured: Captured, root: Path) -> None:
    assert not [a for a in answers if VALUE in a], "an API answer holds the secret"
    starts = [p for p in sniffer.payloads if b'"task.start"' in p]
    assert starts, "the sniffer saw no task.start"
    assert any(b'"sealed_env":"v1.' in p for p in starts), "secret env did not go sealed"
    assert not [p for p in sniffer.payloads if VALUE.encode() in p], "the wire holds it"
    assert not [line for line in captured.lines if VALUE in line], "a log line holds it"
    assert any('"logger":"edgeplane' in line for line in captured.lines)  # logs were caught
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if VALUE.encode() in data:
            # the store (retries need it) and a worker's handle records: owner only
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o077 == 0, f"{path} ({oct(mode)}) holds the secret"
            assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0, path.parent


def _assert_stored(db: Path) -> None:
    """The store keeps the value (retries need it), in a file only its owner may read."""
    files = [db, *db.parent.glob(db.name + "-*")]
    assert any(VALUE.encode() in p.read_bytes() for p in files), "the store lost the secret"
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")
async def test_a_secret_stays_secret_on_the_broker_up_starts(
    tmp_path: Path, unique_domain: str, captured: Captured
) -> None:
    store = f"sqlite:///{tmp_path / 'edgeplane.db'}"
    stacks: AsyncIterator[tuple[Stack, httpx.AsyncClient]] = start_stack(
        tmp_path, "", store, unique_domain, workers=1
    )
    async for stack, http in stacks:
        auth = stack.control.auth
        assert auth is not None
        manager = auth.manager  # the one identity that may read every topic
        sniffer = Sniffer(
            stack.broker_url, unique_domain, username=manager.username, password=manager.password
        )
        await sniffer.link.start()
        try:
            answers = await _exercise(stack, http, sniffer)
        finally:
            await sniffer.link.stop()
    _assert_nowhere(answers, sniffer, captured, tmp_path)
    _assert_stored(tmp_path / "edgeplane.db")


async def test_a_secret_crosses_an_external_broker_sealed(
    tmp_path: Path, fast_broker_url: str, unique_domain: str, captured: Captured
) -> None:
    """A broker given with --broker has no ACL edgeplane wrote: an anonymous subscriber
    reads everything. ``up``'s own workers still get the secret sealed."""
    async for stack, http in start_stack(
        tmp_path, fast_broker_url, "memory://", unique_domain, workers=1
    ):
        assert stack.control.auth is None
        sniffer = Sniffer(fast_broker_url, unique_domain)
        await sniffer.link.start()
        try:
            answers = await _exercise(stack, http, sniffer)
        finally:
            await sniffer.link.stop()
    _assert_nowhere(answers, sniffer, captured, tmp_path)
    key = tmp_path / "workers" / "local-1" / "secret-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")
async def test_a_secret_reaches_a_worker_through_the_root_and_its_cluster(
    tmp_path: Path, unique_domain: str, captured: Captured
) -> None:
    """root → cluster → worker: the cluster's manager stores the secret (its retries need
    it) and seals it to its worker. The cluster joined the root with a token, so the root
    seals it to the cluster too: nothing goes in the clear."""
    async for _, http in start_stack(
        tmp_path, "", "memory://", unique_domain, clusters=1, workers=1
    ):
        created = await http.post("/tasks", params={"wait": WAIT_S}, json=secret_task(start=True))
        assert created.status_code == 201, created.text
        task = created.json()
        assert task["state"] == "completed", task
        assert DIGEST in task["stdout"]
        read = await http.get(f"/tasks/{task['id']}")
        assert read.json()["secret_env"] == {"API_KEY": "***"}
        assert VALUE not in created.text + read.text
        # an application's services are task bodies too: their reads redact them
        service = {**secret_task(), "name": "web", "command": ["sleep", "30"], "replicas": 1}
        app = await http.post("/applications", json={"name": "shop", "services": [service]})
        assert app.status_code == 201, app.text
        app_id = app.json()["id"]
        async with asyncio.timeout(WAIT_S):
            while True:
                view = await http.get(f"/applications/{app_id}")
                instances = view.json()["services"][0]["instances"]
                if instances and instances[0]["state"] == "running":
                    break
                await asyncio.sleep(0.05)
        instance = await http.get(f"/tasks/{instances[0]['task_id']}")
        assert instance.json()["secret_env"] == {"API_KEY": "***"}
        listed = await http.get("/applications")
        assert view.json()["spec"]["services"][0]["secret_env"] == {"API_KEY": "***"}
        for answer in (app, view, instance, listed):
            assert VALUE not in answer.text
        assert (await http.delete(f"/applications/{app_id}")).status_code in (202, 204)
    assert not [line for line in captured.lines if VALUE in line]
    # the clusters joined the root with tokens: sealed to each, never in the clear
    assert not [line for line in captured.lines if "in the clear" in line]


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")
async def test_a_retry_on_another_worker_gets_the_secret_again(
    tmp_path: Path, unique_domain: str, captured: Captured
) -> None:
    """The store keeps the value for retries: the worker running the first attempt leaves,
    the second attempt runs on the other worker (a new attempt, a new worker: sealed anew)
    and sees the secret."""
    flag = tmp_path / "first-attempt-ran"
    script = f'printf %s "$API_KEY" | sha256sum; [ -e {flag} ] || {{ touch {flag}; sleep 60; }}'
    body = secret_task(command=["sh", "-c", script], retries=1, start=True)
    async for stack, http in start_stack(tmp_path, "", "memory://", unique_domain, workers=2):
        created = await http.post("/tasks", json=body)
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        async with asyncio.timeout(WAIT_S):
            while not flag.exists():  # noqa: ASYNC110 -- a file has no event
                await asyncio.sleep(0.02)
        first = (await http.get(f"/tasks/{task_id}")).json()
        holder = next(w for w in stack.workers if w.id == first["worker_id"])
        await holder.stop()  # leaving: its tasks are placed again at once
        done = (await http.get(f"/tasks/{task_id}", params={"wait": WAIT_S})).json()
        assert done["state"] == "completed", done
        assert done["attempt"] == 2 and done["worker_id"] != holder.id, done
        assert DIGEST in done["stdout"] and VALUE not in str(done)
    assert not [line for line in captured.lines if VALUE in line]
