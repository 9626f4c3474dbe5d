"""A worker's task handles on disk (worker/handles.py): atomic records, one per attempt."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.protocol import TaskEvent
from edgeplane.runtimes import RunSpec
from edgeplane.worker.handles import HandleRecord, HandleStore, record_name


def record(
    task_id: str = "t1",
    attempt: int = 1,
    *,
    started_at: float | None = None,
    final: TaskEvent | None = None,
) -> HandleRecord:
    spec = RunSpec(task_id=task_id, attempt=attempt, runtime="host", command=["true"])
    state = {"pid": 42, "dir": "/x"}
    return HandleRecord(spec=spec, state=state, started_at=started_at, final=final)


def test_save_load_remove(tmp_path: Path) -> None:
    store = HandleStore(tmp_path / "handles")
    assert store.load() == []  # no directory yet
    first, second = record("a", started_at=5.0), record("b", 2)
    store.save(first)
    store.save(second)
    assert sorted(store.load(), key=lambda r: r.key) == [first, second]
    store.remove([first.key, ("never", 1)])
    assert store.load() == [second]


def test_only_the_workers_user_may_read_them(tmp_path: Path) -> None:
    """A task's env may hold secrets."""
    store = HandleStore(tmp_path / "handles")
    store.save(record())
    assert (tmp_path / "handles").stat().st_mode & 0o777 == 0o700
    [saved] = (tmp_path / "handles").iterdir()
    assert saved.stat().st_mode & 0o777 == 0o600


def test_the_final_event_replaces_the_record(tmp_path: Path) -> None:
    store = HandleStore(tmp_path)
    store.save(record())
    final = TaskEvent(task_id="t1", attempt=1, state="completed", results={"exit_code": 0})
    store.save(record(final=final))
    [loaded] = store.load()
    assert loaded.final == final
    assert [p.name for p in tmp_path.iterdir()] == [record_name(("t1", 1))]


def test_a_write_cut_short_leaves_the_record_as_it_was(tmp_path: Path) -> None:
    """What a crash between writing the temporary file and renaming it leaves."""
    store = HandleStore(tmp_path)
    store.save(record())
    cut = tmp_path / (record_name(("t1", 1)) + ".tmp")
    cut.write_bytes(b'{"spec": {"task_id"')
    assert store.load() == [record()]
    assert not cut.exists()


def test_an_unreadable_record_is_dropped_the_others_load(tmp_path: Path) -> None:
    store = HandleStore(tmp_path)
    store.save(record("good"))
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"spec": {}}')
    (tmp_path / "README").write_text("not a record")
    assert [r.spec.task_id for r in store.load()] == ["good"]
    assert sorted(os.listdir(tmp_path)) == sorted(["README", record_name(("good", 1))])


def test_a_record_an_older_version_wrote_is_read(tmp_path: Path) -> None:
    """Before RunSpec, a record's spec was the whole Assignment, module bytes and the
    root's scheduling hints included: a worker restarted on a new version still finds
    the attempt."""
    older = {
        "spec": {
            "task_id": "t1",
            "attempt": 2,
            "name": "",
            "runtime": "host",
            "mode": "function",
            "entrypoint": "",
            "artifact": None,
            "artifact_b64": None,
            "inputs": [],
            "cli_args": [],
            "env": {"A": "1"},
            "command": ["sleep", "9"],
            "image": None,
            "limits": {"timeout_s": 5.0, "fuel": None, "memory_mb": None},
            "daemon": False,
            "retries": 1,
            "priority": 50,
            "constraints": None,
            "metadata": {"owner": "ops"},
            "pinned_worker": None,
        },
        "state": {"pid": 42, "dir": "/x"},
        "started_at": 3.0,
        "final": None,
    }
    (tmp_path / record_name(("t1", 2))).write_text(json.dumps(older))
    [loaded] = HandleStore(tmp_path).load()
    assert loaded.key == ("t1", 2)
    assert (loaded.spec.runtime, loaded.spec.command, loaded.spec.env) == (
        "host",
        ["sleep", "9"],
        {"A": "1"},
    )
    assert loaded.spec.limits.timeout_s == 5.0


@settings(max_examples=50)
@given(
    keys=st.lists(
        st.tuples(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=9)),
        unique=True,
        max_size=6,
    )
)
def test_any_task_id_gets_a_file_of_its_own(keys: list[tuple[str, int]]) -> None:
    names = {record_name(key) for key in keys}
    assert len(names) == len(keys)
    assert all("/" not in n and "\0" not in n and len(n) < 64 for n in names)
