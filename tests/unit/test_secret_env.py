"""Secret env: sealing to one member (protocol/sealing.py) and redaction of every read
(model/secrets.py)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edgeplane.errors import Invalid
from edgeplane.model import (
    Application,
    ApplicationSpec,
    JobSpec,
    Schedule,
    Task,
    TaskSpec,
    Workflow,
)
from edgeplane.model.secrets import REDACTED, REVEAL
from edgeplane.protocol import Assignment, StartTasks, encode
from edgeplane.protocol.sealing import derive, seal, unseal
from edgeplane.runtimes.fake import FakeRuntime
from edgeplane.worker import WorkerAgent, WorkerOptions

KEY = derive(b"k" * 32)
WHERE: dict[str, Any] = {"task_id": "t1", "attempt": 2, "member_id": "w1"}
SECRET = "hunter2-secret-value"

_names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=12)


@given(st.dictionaries(_names, st.text(max_size=64), max_size=8))
def test_sealed_env_opens_with_the_same_key_task_attempt_and_member(env: dict[str, str]) -> None:
    assert unseal(KEY, seal(KEY, env, **WHERE), **WHERE) == env


def test_sealing_twice_gives_different_ciphertexts() -> None:
    env = {"A": SECRET}
    one, two = seal(KEY, env, **WHERE), seal(KEY, env, **WHERE)
    assert one != two and SECRET not in one


@pytest.mark.parametrize(
    "change",
    [
        {"task_id": "t2"},
        {"attempt": 3},
        {"member_id": "w2"},
    ],
)
def test_a_sealed_env_does_not_open_for_another_task_attempt_or_member(
    change: dict[str, Any],
) -> None:
    sealed = seal(KEY, {"A": SECRET}, **WHERE)
    with pytest.raises(Invalid) as caught:
        unseal(KEY, sealed, **{**WHERE, **change})
    assert caught.value.field == "secret_env"


def test_a_wrong_key_is_refused() -> None:
    sealed = seal(KEY, {"A": SECRET}, **WHERE)
    with pytest.raises(Invalid):
        unseal(derive(b"x" * 32), sealed, **WHERE)


def test_every_changed_byte_is_refused() -> None:
    sealed = seal(KEY, {"A": SECRET}, **WHERE)
    raw = bytearray(base64.urlsafe_b64decode(sealed[3:]))
    for index in range(len(raw)):
        forged = bytearray(raw)
        forged[index] ^= 0x01
        with pytest.raises(Invalid):
            unseal(KEY, "v1." + base64.urlsafe_b64encode(bytes(forged)).decode(), **WHERE)


@pytest.mark.parametrize("junk", ["", "v1.", "v1.!!!", "v2." + "A" * 40, "v1." + "A" * 8])
def test_junk_is_refused_without_a_crash(junk: str) -> None:
    with pytest.raises(Invalid):
        unseal(KEY, junk, **WHERE)


def test_the_sealing_key_is_not_the_command_key() -> None:
    assert derive(b"k" * 32) != b"k" * 32 and len(derive(b"k" * 32)) == 32


# ---------------------------------------------------------------------- redaction


def test_every_read_of_a_task_redacts_and_the_store_keeps_the_value() -> None:
    task = Task(id="t", env={"PLAIN": "p"}, secret_env={"KEY": SECRET})
    for shown in (task.model_dump_json(), str(task.model_dump()), repr(task), str(task)):
        assert SECRET not in shown
    assert task.model_dump()["secret_env"] == {"KEY": REDACTED}
    assert task.model_dump(mode="json")["env"] == {"PLAIN": "p"}
    stored = task.model_dump_json(context=REVEAL)
    assert Task.model_validate_json(stored).secret_env == {"KEY": SECRET}


def test_job_workflow_schedule_and_application_reads_redact_their_templates() -> None:
    spec = TaskSpec(name="a", secret_env={"KEY": SECRET})
    assert SECRET not in spec.model_dump_json() and SECRET not in repr(spec)
    assert spec.model_dump(context=REVEAL)["secret_env"] == {"KEY": SECRET}
    run = Workflow(id="w", tasks=[Task(id="t", secret_env={"KEY": SECRET})])
    assert SECRET not in run.model_dump_json()
    for kind, body in (
        ("task", spec.model_dump(mode="json", context=REVEAL)),
        ("job", {"tasks": [spec.model_dump(mode="json", context=REVEAL)]}),
    ):
        schedule = Schedule(id="s", kind=kind, cron="* * * * *", spec=body)  # type: ignore[arg-type]
        assert SECRET not in schedule.model_dump_json()
        assert SECRET in schedule.model_dump_json(context=REVEAL)
        assert schedule.spec == body  # the template itself is untouched
    app_spec = ApplicationSpec.model_validate(
        {
            "name": "a",
            "services": [
                {"name": "s", "runtime": "host", "command": ["x"], "secret_env": {"KEY": SECRET}}
            ],
        }
    )
    app = Application.model_validate({"id": "a", "name": "a", "spec": app_spec})
    assert SECRET not in app.model_dump_json()
    assert SECRET in app.model_dump_json(context=REVEAL)


def test_an_application_revision_leaves_secret_values_out() -> None:
    def revision(value: str) -> str:
        body = {"name": "s", "runtime": "host", "command": ["x"], "secret_env": {"K": value}}
        spec = ApplicationSpec.model_validate({"name": "a", "services": [body]})
        return spec.services[0].revision()

    assert revision("one") == revision("two")


def test_a_name_in_env_and_secret_env_is_refused_naming_the_field_not_the_value() -> None:
    with pytest.raises(ValidationError) as caught:
        TaskSpec(env={"KEY": SECRET}, secret_env={"KEY": SECRET})
    (error,) = caught.value.errors()
    assert error["loc"] == ("secret_env",)
    assert "KEY" in error["msg"] and SECRET not in error["msg"]


def test_secret_env_is_bounded_like_env() -> None:
    with pytest.raises(ValidationError):
        TaskSpec(secret_env={"A=B": "x"})
    with pytest.raises(ValidationError):
        TaskSpec(secret_env={f"K{i}": "x" for i in range(100_000)})


# ---------------------------------------------------------------------- the worker


def _agent(tmp_path: Path, key: bytes | None) -> tuple[WorkerAgent, FakeRuntime]:
    runtime = FakeRuntime()
    options = WorkerOptions(
        worker_id="w1", broker_url="mqtt://127.0.0.1:1", data_dir=tmp_path, secret_key=key
    )
    return WorkerAgent(options, {"fake": runtime}), runtime


def _start(agent: WorkerAgent, **fields: Any) -> None:
    assignment = Assignment(task_id="t1", attempt=2, runtime="fake", env={"P": "1"}, **fields)
    agent._accept(assignment)


async def test_the_worker_merges_opened_secret_env_into_the_runtime_env(tmp_path: Path) -> None:
    command_key = os.urandom(32)
    agent, _ = _agent(tmp_path, command_key)
    sealed = seal(derive(command_key), {"S": SECRET}, **WHERE)
    _start(agent, sealed_env=sealed)
    run = agent._runs["t1"]
    assert run.spec.env == {"P": "1", "S": SECRET}
    assert run.job is not None
    run.job.cancel()


@pytest.mark.parametrize("key", [None, b"w" * 32])
async def test_a_worker_fails_an_attempt_whose_secret_env_does_not_open(
    tmp_path: Path, key: bytes | None
) -> None:
    agent, _ = _agent(tmp_path, key)
    _start(agent, sealed_env=seal(derive(b"k" * 32), {"S": SECRET}, **WHERE))
    assert "t1" not in agent._runs
    ((event, _),) = agent.events._unacked.values()
    assert event.state == "failed" and not event.transient
    assert "secret_env" in (event.error or "") and SECRET not in (event.error or "")


def test_the_wire_carries_secret_env_only_in_its_own_fields() -> None:
    assignment = Assignment(task_id="t", attempt=1, runtime="host", secret_env={"S": SECRET})
    assert SECRET not in repr(assignment)
    assert SECRET in encode("task.start", StartTasks(tasks=[assignment])).decode()


def test_the_client_sends_a_model_s_secret_values_not_their_redaction() -> None:
    from edgeplane.client import _run_body
    from edgeplane.model import JobSpec

    job = JobSpec(tasks=[TaskSpec(name="a", runtime="host", secret_env={"K": SECRET})])
    assert _run_body(job)["tasks"][0]["secret_env"] == {"K": SECRET}
    listed = {"tasks": [TaskSpec(name="a", secret_env={"K": SECRET})]}
    assert _run_body(listed)["tasks"][0]["secret_env"] == {"K": SECRET}  # type: ignore[arg-type]


def test_the_text_of_a_validation_error_never_holds_a_secret() -> None:
    """What a log line with a validation error would show (str of the error)."""
    both = {"name": "a", "env": {"K": SECRET}, "secret_env": {"K": SECRET, "L=": SECRET}}
    bad_bodies: list[tuple[type[Any], Any]] = [
        (TaskSpec, both),
        (JobSpec, {"tasks": [both]}),
        (ApplicationSpec, {"name": "a", "services": [{**both, "replicas": -1}]}),
        (Task, {"id": "t", "secret_env": {"K": 1}, "state": SECRET}),
        (Assignment, {"task_id": "t", "attempt": 1, "secret_env": SECRET}),
    ]
    for model, body in bad_bodies:
        with pytest.raises(ValidationError) as caught:
            model.model_validate(body)
        assert SECRET not in str(caught.value), model
    # one bad assignment of a command: its reason (sent back as the task's error) too
    start = StartTasks.model_validate(
        {"tasks": [{"task_id": "t", "attempt": 1, "runtime": "x", "secret_env": {"K": [SECRET]}}]}
    )
    (bad,) = start.unrunnable
    assert "secret_env" in bad.reason and SECRET not in bad.reason
