"""A new task's text is made once for its row and its answer (``model/task_json.py``):
the answer is the same text a dump would give, and a secret is never shown."""

from __future__ import annotations

import orjson

from edgeplane.api.tasks import TaskItems
from edgeplane.model import Task, task_json
from edgeplane.model.secrets import REVEAL


def test_the_answer_is_what_a_dump_shows() -> None:
    tasks = [Task(id=f"t{i}", name="noop", inputs=[i, "é"]) for i in range(3)]
    rows = [task_json.stored(t) for t in tasks]
    assert rows == [t.model_dump_json(context=REVEAL) for t in tasks]
    assert task_json.items(tasks) == TaskItems(items=tasks).model_dump_json()
    # taken once: the next answer dumps again, to the same text
    assert task_json.shown(tasks[0]) == tasks[0].model_dump_json()


def test_a_secret_is_never_shown() -> None:
    task = Task(id="s", secret_env={"KEY": "hush"})
    assert "hush" in task_json.stored(task)
    shown = task_json.shown(task)
    assert "hush" not in shown and orjson.loads(shown)["secret_env"] == {"KEY": "***"}


def test_another_version_is_dumped() -> None:
    task = Task(id="v", name="a")
    task_json.stored(task)
    later = task.model_copy(update={"state": "completed"})
    assert orjson.loads(task_json.shown(later))["state"] == "completed"


def test_it_keeps_a_bounded_number() -> None:
    tasks = [Task(id=f"k{i}") for i in range(task_json.KEPT + 5)]
    for task in tasks:
        task_json.stored(task)
    assert len(task_json._kept) <= task_json.KEPT
    assert task_json.shown(tasks[0]) == tasks[0].model_dump_json()
