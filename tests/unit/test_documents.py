"""Stored documents read back whatever version wrote them (edgeplane.store.documents)."""

from __future__ import annotations

from typing import Any

import orjson

from edgeplane.model import Application, Task, Workflow
from edgeplane.store.documents import read


def nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


def test_a_document_this_version_wrote_is_read_as_it_is() -> None:
    task = Task(id="t", name="add", metadata={"k": [1, 2]})
    assert read(Task, task.model_dump_json(), {"id": "t"}) == task


def test_nesting_past_pydantics_reader_is_read_with_orjson() -> None:
    task = Task(id="t", metadata=nested(250))
    found = read(Task, task.model_dump_json(), {"id": "t"})
    assert found is not None and found.metadata == nested(250)


def test_a_null_an_older_patch_let_in_becomes_the_default() -> None:
    doc = orjson.loads(Task(id="t", name="x", priority=9).model_dump_json())
    doc.update(name=None, priority=None)
    found = read(Task, orjson.dumps(doc), {"id": "t"})
    assert found is not None and (found.name, found.priority, found.id) == ("", 50, "t")


def test_an_application_past_todays_bounds_keeps_what_it_can() -> None:
    spec = {
        "name": "app",
        "metadata": nested(40),  # free-form: kept as it was stored
        "services": [
            {"name": "web", "retries": 5000, "replicas": 2}
        ],  # retries: past today's range
    }
    doc = orjson.dumps({"id": "a", "name": "app", "spec": spec})
    found = read(Application, doc, {"id": "a", "name": "app"})
    assert found is not None
    assert found.spec.metadata == nested(40)
    service = found.spec.services[0]
    assert (service.retries, service.replicas) == (0, 2)


def test_a_document_that_is_no_json_is_rebuilt_from_its_columns() -> None:
    columns = {"id": "w", "kind": "job", "state": "running", "created_at": 5.0}
    found = read(Workflow, b"{not json", columns)
    assert found is not None and (found.id, found.kind, found.state) == ("w", "job", "running")


def test_a_document_that_cannot_be_read_at_all_is_none() -> None:
    assert read(Application, b"[]", {"id": "a", "name": "x"}) is None


def test_an_older_applications_instances_are_still_made() -> None:
    """The root builds each instance's task from the stored descriptor: a free-form value
    past today's bounds must not stop it."""
    from edgeplane.root.applications import instance_spec
    from edgeplane.root.reconcile import Create

    spec = {"name": "app", "services": [{"name": "web", "metadata": nested(40)}]}
    app = read(Application, orjson.dumps({"id": "a", "name": "app", "spec": spec}), {"id": "a"})
    assert app is not None
    create = Create(service="web", index=0, revision="r", restarts=0, replaces=None)
    task = instance_spec(app, app.spec.services[0], create)
    assert task.metadata["a"] == nested(39) and task.daemon
