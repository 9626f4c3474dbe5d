"""One store suite run against every backend: memory, SQLite (a file) and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from edgeplane.errors import Conflict, Fenced, Invalid, Unavailable
from edgeplane.fl.spec import ExperimentSpec
from edgeplane.fl.state import Experiment
from edgeplane.model import Application, Instance, Schedule, Task, Worker, Workflow
from edgeplane.model.audit import AuditQuery, AuditRecord
from edgeplane.store import (
    AuditPrune,
    Batch,
    Claim,
    MemoryStore,
    SqlStore,
    Store,
    TokenRecord,
    UserRecord,
    open_store,
)
from edgeplane.store import base as store_base
from edgeplane.store.sql import MIGRATIONS
from edgeplane.store.tables import metadata
from edgeplane.store.tables import schedules as schedules_table
from edgeplane.store.tables import tasks as tasks_table
from store_fixtures import (
    BACKEND_PARAMS,
    StoreFactory,
    fresh_pg_url,
    make_store,
    pg_schema,
    sqlite_url,
    store,
    store_backend,
)

__all__ = ["make_store", "pg_schema", "store", "store_backend"]  # fixtures used by name

DURABLE = [p for p in BACKEND_PARAMS if p.values != ("memory",)]
#: The newest migration: where ``SqlStore.open`` leaves every database.
HEAD = "0011"


def task(task_id: str, created_at: float, **fields: object) -> Task:
    return Task.model_validate({"id": task_id, "created_at": created_at, **fields})


async def test_add_and_get_hand_out_copies(store: Store) -> None:
    original = task("a", 1.0, name="add", inputs=[2, 3], metadata={"k": [1]}, job_id="j")
    await store.add_tasks([original])
    original.metadata["k"].append(2)

    got = await store.get_task("a")
    assert got == task("a", 1.0, name="add", inputs=[2, 3], metadata={"k": [1]}, job_id="j")
    assert got is not None
    got.inputs.append(4)
    got.state = "running"
    assert await store.get_task("a") == task(
        "a", 1.0, name="add", inputs=[2, 3], metadata={"k": [1]}, job_id="j"
    )
    assert await store.get_task("missing") is None


async def test_list_filters_orders_and_pages(store: Store) -> None:
    await store.add_tasks(
        [
            task("t3", 3.0, state="running", job_id="j1"),
            task("t1", 1.0, job_id="j1", workflow_id="w"),
            task("t2b", 2.0, state="completed", workflow_id="w"),
            task("t2a", 2.0, job_id="j2"),
            task("t4", 4.0, state="running", job_id="j1", workflow_id="w"),
        ]
    )

    async def ids(
        state: str | None = None,
        job_id: str | None = None,
        workflow_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[str], int]:
        items, total = await store.list_tasks(
            state=state, job_id=job_id, workflow_id=workflow_id, limit=limit, offset=offset
        )
        return [t.id for t in items], total

    assert await ids() == (["t1", "t2a", "t2b", "t3", "t4"], 5)
    assert await ids(limit=2) == (["t1", "t2a"], 5)
    assert await ids(limit=2, offset=2) == (["t2b", "t3"], 5)
    assert await ids(offset=10) == ([], 5)
    assert await ids(state="running") == (["t3", "t4"], 2)
    assert await ids(job_id="j1") == (["t1", "t3", "t4"], 3)
    assert await ids(workflow_id="w") == (["t1", "t2b", "t4"], 3)
    assert await ids(state="running", job_id="j1", workflow_id="w") == (["t4"], 1)
    assert await ids(job_id="j1", limit=1, offset=1) == (["t3"], 3)
    assert await ids(state="cancelled") == ([], 0)


async def test_list_filters_by_name_prefix_and_worker(store: Store) -> None:
    names = ["train", "train-2", "training", "trai", "Train", "retrain", "tr%in", "tr_in", "тrain"]
    await store.add_tasks(
        [task(f"t{i}", float(i), name=n, worker_id=f"w{i % 2}") for i, n in enumerate(names)]
    )
    await store.add_tasks([task("z", 99.0, name="train\U0010ffff"), task("y", 98.0, name="")])

    async def names_of(name: str | None = None, worker_id: str | None = None) -> list[str]:
        items, total = await store.list_tasks(name=name, worker_id=worker_id)
        assert total == len(items)
        return [t.name for t in items]

    assert await names_of(name="train") == ["train", "train-2", "training", "train\U0010ffff"]
    assert await names_of(name="tr%") == ["tr%in"]  # no pattern characters: text as given
    assert await names_of(name="tr_") == ["tr_in"]
    assert await names_of(name="тr") == ["тrain"]
    assert await names_of(name="T") == ["Train"]  # case counts
    assert await names_of(name="train\U0010ffff") == ["train\U0010ffff"]
    assert len(await names_of(name="")) == 11  # no name filter
    assert await names_of(name="nothing") == []
    assert await names_of(worker_id="w1") == ["train-2", "trai", "retrain", "tr_in"]
    assert await names_of(worker_id="w1", name="tr") == ["train-2", "trai", "tr_in"]
    assert await names_of(worker_id="w9") == []
    # a later version of a task moves it between filters (the columns follow the document)
    await store.save_tasks([task("t1", 1.0, name="renamed", worker_id="w7")])
    assert await names_of(worker_id="w7", name="ren") == ["renamed"]
    assert "train-2" not in await names_of(name="train")


async def test_list_pages_by_cursor_either_way(store: Store) -> None:
    """Every task exactly once, in order, whatever the page size, with ties on created_at
    (a batch gets one time) and tasks added behind the pages read."""
    ids = [f"t{i:02}" for i in range(23)]
    await store.add_tasks([task(i, float(n // 4), state="failed") for n, i in enumerate(ids)])
    await store.add_tasks([task("other", 2.0, state="completed")])
    for newest_first in (False, True):
        for size in (1, 4, 7, 23, 50):
            seen: list[str] = []
            after = None
            while True:
                items, total = await store.list_tasks(
                    state="failed", after=after, newest_first=newest_first, limit=size
                )
                assert total == 23
                if not items:
                    break
                seen += [t.id for t in items]
                after = (items[-1].created_at, items[-1].id)
            assert seen == (ids[::-1] if newest_first else ids), (newest_first, size)
    # a task created after the first page was read shows at its head, not again later
    first, _ = await store.list_tasks(state="failed", newest_first=True, limit=5)
    await store.add_tasks([task("late", 100.0, state="failed")])
    rest, total = await store.list_tasks(
        state="failed", newest_first=True, after=(first[-1].created_at, first[-1].id), limit=100
    )
    assert total == 24 and "late" not in [t.id for t in rest]
    assert [t.id for t in first + rest] == ids[::-1]


async def test_add_conflict_inserts_nothing(store: Store) -> None:
    await store.add_tasks([task("a", 1.0)])

    with pytest.raises(Conflict) as info:
        await store.add_tasks([task("b", 2.0), task("a", 3.0, name="again")])
    assert "a" in info.value.detail
    with pytest.raises(Conflict):
        await store.add_tasks([task("c", 4.0), task("c", 5.0)])

    items, total = await store.list_tasks()
    assert (items, total) == ([task("a", 1.0)], 1)


async def test_count_tasks_counts_each_state_in_the_projects_asked_for(store: Store) -> None:
    assert await store.count_tasks() == {}
    lab = {"project": "lab"}
    await store.add_tasks(
        [
            task("a", 1.0),
            task("b", 2.0, state="running"),
            task("c", 3.0, state="failed", **lab),
            task("d", 4.0, state="failed"),
            task("e", 5.0, **lab),
        ]
    )
    assert await store.count_tasks() == {"pending": 2, "running": 1, "failed": 2}
    assert await store.count_tasks(projects=["lab"]) == {"pending": 1, "failed": 1}
    assert await store.count_tasks(projects=[]) == {}
    assert await store.count_tasks(projects=["nul\x00"]) == {}
    await store.save_tasks([task("b", 2.0, state="completed")])
    await store.delete_task("a")
    assert await store.count_tasks() == {"pending": 1, "completed": 1, "failed": 2}


async def test_save_tasks_upserts_a_thousand_in_one_call(store: Store) -> None:
    await store.add_tasks([task(f"t{i:04}", float(i)) for i in range(0, 1000, 2)])
    saved = [
        task(f"t{i:04}", float(i), state="scheduled", worker_id=f"w{i % 7}", priority=i % 101)
        for i in range(1000)
    ]

    await store.save_tasks(saved)

    items, total = await store.list_tasks(limit=1000)
    assert total == 1000
    assert items == saved
    await store.save_tasks([])
    assert (await store.list_tasks(state="scheduled", limit=0))[1] == 1000


async def test_unfinished_tasks_are_the_non_terminal_ones(store: Store) -> None:
    states = ["pending", "scheduled", "running", "completed", "failed", "skipped", "cancelled"]
    await store.add_tasks([task(s, float(-i), state=s) for i, s in enumerate(states)])

    unfinished = await store.unfinished_tasks()

    assert [t.id for t in unfinished] == ["running", "scheduled", "pending"]


async def test_delete_task(store: Store) -> None:
    await store.add_tasks([task("a", 1.0), task("b", 2.0)])

    assert await store.delete_task("a") is True
    assert await store.delete_task("a") is False
    assert await store.get_task("a") is None
    assert await store.list_tasks() == ([task("b", 2.0)], 1)
    await store.add_tasks([task("a", 3.0)])  # the id is free again
    assert (await store.list_tasks())[1] == 2


def workflow(workflow_id: str, created_at: float, **fields: object) -> Workflow:
    return Workflow.model_validate({"id": workflow_id, "created_at": created_at, **fields})


def schedule(schedule_id: str, created_at: float, **fields: object) -> Schedule:
    return Schedule.model_validate(
        {"id": schedule_id, "kind": "task", "cron": "*/5 * * * *", "created_at": created_at}
        | fields
    )


def run_tasks(workflow_id: str, count: int, **fields: object) -> list[Task]:
    return [
        task(f"{workflow_id}/{i}", float(i), workflow_id=workflow_id, **fields)
        for i in range(count)
    ]


async def test_add_workflow_stores_it_and_its_tasks_without_the_task_list(store: Store) -> None:
    tasks = run_tasks("w", 2, inputs_from=[{"task": "x", "index": 1}], schedule_id="s")
    wf = workflow(
        "w",
        5.0,
        kind="job",
        mode="sequential",
        task_ids=["w/0", "w/1"],
        names={"x": "w/0"},
        metadata={"k": [1]},
        tasks=tasks,
    )

    await store.add_workflow(wf, tasks)
    wf.metadata["k"].append(2)

    got = await store.get_workflow("w")
    assert got == wf.model_copy(update={"tasks": [], "metadata": {"k": [1]}})
    assert got is not None
    got.task_ids.append("changed")
    assert (await store.get_workflow("w")) == got.model_copy(update={"task_ids": ["w/0", "w/1"]})
    assert await store.get_workflow("missing") is None
    assert await store.list_tasks(workflow_id="w") == (tasks, 2)
    await store.add_workflow(workflow("empty", 6.0), [])
    assert await store.get_workflow("empty") == workflow("empty", 6.0)


async def test_add_workflow_conflict_inserts_nothing(store: Store) -> None:
    await store.add_workflow(workflow("w", 1.0), run_tasks("w", 2))
    await store.add_tasks([task("loose", 2.0)])

    with pytest.raises(Conflict) as info:  # the workflow id is taken
        await store.add_workflow(workflow("w", 3.0, name="again"), run_tasks("w-new", 2))
    assert "w" in info.value.detail
    with pytest.raises(Conflict) as info:  # one task id is taken
        await store.add_workflow(workflow("x", 4.0), [task("x/0", 4.0), task("loose", 4.0)])
    assert "loose" in info.value.detail
    with pytest.raises(Conflict):  # a task id repeats in the batch
        await store.add_workflow(workflow("y", 5.0), [task("y/0", 5.0), task("y/0", 5.0)])

    assert (await store.list_workflows())[1] == 1
    assert await store.get_workflow("w") == workflow("w", 1.0)
    assert [t.id for t in (await store.list_tasks())[0]] == ["w/0", "w/1", "loose"]


async def test_concurrent_add_workflow_of_one_id_lets_exactly_one_win(
    make_store: StoreFactory, store_backend: str
) -> None:
    # Two managers firing the same cron slot: separate stores over one database.
    first = await make_store(store_backend)
    second = first if store_backend == "memory" else await make_store(store_backend)
    contenders = [first, second, first, second]

    for slot in range(3):
        run_id = f"s:{slot}"
        outcomes = await asyncio.gather(
            *(
                store.add_workflow(
                    workflow(run_id, 1.0, name=f"by {n}"),
                    run_tasks(run_id, 3, name=f"by {n}"),
                )
                for n, store in enumerate(contenders)
            ),
            return_exceptions=True,
        )

        assert sum(o is None for o in outcomes) == 1
        assert all(isinstance(o, Conflict) for o in outcomes if o is not None)
        winner = f"by {outcomes.index(None)}"
        stored = await first.get_workflow(run_id)
        assert stored is not None
        assert stored.name == winner
        tasks, total = await first.list_tasks(workflow_id=run_id)
        assert total == 3
        assert {t.name for t in tasks} == {winner}


async def test_save_workflows_upserts(store: Store) -> None:
    await store.add_workflow(workflow("a", 1.0), run_tasks("a", 1))

    done = workflow("a", 1.0, state="completed", finished_at=3.0, reason="all done")
    await store.save_workflows([done, workflow("b", 2.0, kind="job", state="running")])
    await store.save_workflows([])

    assert await store.get_workflow("a") == done
    assert [w.id for w in (await store.list_workflows())[0]] == ["a", "b"]
    await store.save_workflows([workflow("c", 0.5, tasks=run_tasks("c", 1))])
    assert await store.get_workflow("c") == workflow("c", 0.5)
    assert await store.get_task("c/0") is None  # saving a workflow never writes tasks


async def test_list_workflows_filters_orders_and_pages(store: Store) -> None:
    await store.save_workflows(
        [
            workflow("w3", 3.0),
            workflow("j1", 1.0, kind="job"),
            workflow("w2b", 2.0),
            workflow("w2a", 2.0, kind="job"),
            workflow("w4", 4.0, kind="job"),
        ]
    )

    async def ids(kind: str | None = None, limit: int = 100, offset: int = 0) -> object:
        items, total = await store.list_workflows(kind=kind, limit=limit, offset=offset)
        return [w.id for w in items], total

    assert await ids() == (["j1", "w2a", "w2b", "w3", "w4"], 5)
    assert await ids(limit=2, offset=1) == (["w2a", "w2b"], 5)
    assert await ids(kind="job") == (["j1", "w2a", "w4"], 3)
    assert await ids(kind="job", limit=1, offset=2) == (["w4"], 3)
    assert await ids(kind="workflow") == (["w2b", "w3"], 2)
    assert await ids(offset=9) == ([], 5)


async def test_unfinished_workflows_are_the_non_terminal_ones(store: Store) -> None:
    states = ["pending", "running", "completed", "failed", "cancelled"]
    await store.save_workflows([workflow(s, float(-i), state=s) for i, s in enumerate(states)])

    assert [w.id for w in await store.unfinished_workflows()] == ["running", "pending"]


async def test_schedules_crud(store: Store) -> None:
    job = schedule(
        "s2",
        2.0,
        kind="job",
        timezone="Europe/Berlin",
        catch_up="all",
        spec={"mode": "dag", "tasks": [{"name": "a"}]},
        next_run=300.0,
    )
    await store.save_schedule(job)
    await store.save_schedule(schedule("s1", 2.0))
    await store.save_schedule(schedule("s3", 1.0))

    got = await store.get_schedule("s2")
    assert got == job
    assert got is not None
    got.spec["tasks"].append({"name": "b"})
    assert await store.get_schedule("s2") == job
    assert await store.get_schedule("nope") is None

    fired = job.model_copy(update={"next_run": 600.0, "last_slot": 300.0, "runs": 1})
    await store.save_schedule(fired)
    assert await store.get_schedule("s2") == fired
    items, total = await store.list_schedules()
    assert ([s.id for s in items], total) == (["s3", "s1", "s2"], 3)
    page, total = await store.list_schedules(limit=1, offset=1)
    assert ([s.id for s in page], total) == (["s1"], 3)

    assert await store.delete_schedule("s1") is True
    assert await store.delete_schedule("s1") is False
    assert await store.get_schedule("s1") is None
    assert (await store.list_schedules())[1] == 2


def application(
    app_id: str, created_at: float, name: str = "shop", **fields: object
) -> Application:
    spec = {
        "name": name,
        "services": [
            {"name": "web", "runtime": "host", "command": ["sleep", "inf"], "replicas": 2},
            {"name": "db", "runtime": "container", "image": "postgres", "restart": "on-failure"},
        ],
    }
    return Application.model_validate(
        {"id": app_id, "name": name, "spec": spec, "created_at": created_at} | fields
    )


def instance(app_id: str, service: str, index: int, **fields: object) -> Instance:
    instance_id = f"{app_id}/{service}/{index}"
    return Instance.model_validate(
        {
            "id": instance_id,
            "service": service,
            "index": index,
            "revision": "r1",
            "task_id": f"{instance_id}@1",
        }
        | fields
    )


async def test_applications_crud(store: Store) -> None:
    shop = application(
        "a2",
        2.0,
        instances=[instance("a2", "web", 0, state="running", worker_id="w1", cluster_id="c1")],
    )
    await store.save_application(shop)
    await store.save_application(application("a1", 2.0, name="blog"))
    await store.save_application(application("a3", 1.0, name="blog"))  # names may repeat

    got = await store.get_application("a2")
    assert got == shop
    assert got is not None
    assert got.instances[0].worker_id == "w1"
    got.instances.clear()
    got.spec.services[0].replicas = 9
    assert await store.get_application("a2") == shop
    assert await store.get_application("nope") is None

    rolled = shop.model_copy(
        update={
            "generation": 2,
            "state": "running",
            "updated_at": 5.0,
            "instances": [instance("a2", "web", i, revision="r2") for i in range(2)],
        }
    )
    await store.save_application(rolled)
    assert await store.get_application("a2") == rolled
    items, total = await store.list_applications()
    assert ([a.id for a in items], total) == (["a3", "a1", "a2"], 3)
    assert [a.name for a in items] == ["blog", "blog", "shop"]
    assert items[2] == rolled
    page, total = await store.list_applications(limit=1, offset=1)
    assert ([a.id for a in page], total) == (["a1"], 3)
    assert await store.list_applications(offset=5) == ([], 3)

    assert await store.delete_application("a1") is True
    assert await store.delete_application("a1") is False
    assert await store.get_application("a1") is None
    assert [a.id for a in (await store.list_applications())[0]] == ["a3", "a2"]
    await store.save_application(application("a1", 0.5))  # the id is free again
    assert [a.id for a in (await store.list_applications())[0]] == ["a1", "a3", "a2"]


async def test_workers_crud(store: Store) -> None:
    w2 = Worker.model_validate({"id": "w2", "capabilities": {"cpus": 4, "labels": {"a": "b"}}})
    await store.save_workers([w2, Worker(id="w1")])
    await store.save_workers([Worker(id="w3", state="draining")])

    got = await store.get_worker("w2")
    assert got == w2
    assert got is not None
    got.capabilities.labels["a"] = "changed"
    assert await store.get_worker("w2") == w2
    assert await store.get_worker("nope") is None

    await store.save_workers([w2.model_copy(update={"state": "offline", "last_seen": 9.5})])
    workers, total = await store.list_workers()
    assert ([w.id for w in workers], total) == (["w1", "w2", "w3"], 3)
    assert workers[1].state == "offline"
    assert workers[1].last_seen == 9.5
    page, total = await store.list_workers(limit=1, offset=1)
    assert ([w.id for w in page], total) == (["w2"], 3)

    assert await store.delete_worker("w1") is True
    assert await store.delete_worker("w1") is False
    assert (await store.list_workers())[1] == 2


async def test_tokens_find_by_hash_and_delete(store: Store) -> None:
    admin = TokenRecord(id="t1", user="admin", role="admin", secret_hash="h1", created_at=1.0)
    await store.save_token(admin)
    await store.save_token(TokenRecord("t2", "bob", "viewer", "h2", 2.0))

    assert await store.find_token("h1") == admin
    assert await store.find_token("nope") is None
    renamed = TokenRecord("t2", "bob", "operator", "h3", 2.0)
    await store.save_token(renamed)
    assert await store.find_token("h2") is None
    assert await store.find_token("h3") == renamed
    with pytest.raises(Conflict):
        await store.save_token(TokenRecord("t9", "eve", "admin", "h1", 3.0))

    assert await store.delete_token("t1") is True
    assert await store.delete_token("t1") is False
    assert await store.find_token("h1") is None
    assert await store.find_token("h3") == renamed


async def test_users_and_their_tokens(store: Store) -> None:
    ann = UserRecord("ann", "operator", ("default", "lab"), "argon2-hash", 1.0)
    await store.add_user(ann)
    await store.add_user(UserRecord("bob", "viewer", ("lab",), "h", 2.0))
    with pytest.raises(Conflict) as taken:
        await store.add_user(UserRecord("ann", "admin", (), "h", 3.0))
    assert taken.value.field == "name"
    assert await store.get_user("ann") == ann
    assert [u.name for u in await store.list_users()] == ["ann", "bob"]

    scoped = TokenRecord(
        "t1", "ann", "operator", "h1", 1.0, 99.0, ("read",), ("default", "lab"), "api", "ci"
    )
    await store.save_token(scoped)
    await store.save_token(TokenRecord("t2", "bob", "viewer", "h2", 2.0))
    assert await store.find_token("h1") == scoped
    assert await store.get_token("t1") == scoped
    assert [t.id for t in await store.list_tokens()] == ["t1", "t2"]
    assert [t.id for t in await store.list_tokens(user="bob")] == ["t2"]

    assert await store.delete_user("ann") is True
    assert await store.delete_user("ann") is False
    assert await store.get_user("ann") is None
    assert await store.find_token("h1") is None  # a deleted user's tokens go with them
    assert [t.id for t in await store.list_tokens()] == ["t2"]


async def test_artifacts_put_is_idempotent(store: Store) -> None:
    data = bytes(range(256)) * 40
    await store.put_artifact("sha256:aa", data)
    await store.put_artifact("sha256:aa", data)
    await store.put_artifact("sha256:aa", b"other bytes never replace the first")

    assert await store.get_artifact("sha256:aa") == data
    assert await store.get_artifact("sha256:bb") is None


def lease_claim(holder: str) -> Claim:
    return Claim(holder, f"home-{holder}", f"http://{holder}:7070", 3.0)


FL_REF = "sha256:" + hashlib.sha256(b"model").hexdigest()


def fl_ref(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_fl_blobs_are_written_once_and_read_back(store: Store) -> None:
    """Model versions and updates: the large-model benchmark's size (1M float32) round
    trips; a digest written twice keeps its first bytes; one never written is None."""
    big = os.urandom(4_000_000)
    small = b"\x00\x01 model"
    await store.put_fl_blob(fl_ref(big), big)
    await store.put_fl_blob(fl_ref(small), small)
    await store.put_fl_blob(fl_ref(small), small)
    await store.put_fl_blob(fl_ref(small), b"other bytes never replace the first")
    assert await store.get_fl_blob(fl_ref(big)) == big
    assert await store.get_fl_blob(fl_ref(small)) == small
    assert await store.get_fl_blob(fl_ref(b"never")) is None
    assert await store.get_fl_blob("sha256:\x00") is None
    asked = [fl_ref(big), fl_ref(b"never"), fl_ref(small), "sha256:\x00"]
    assert await store.missing_fl_blobs(asked) == {fl_ref(b"never"), "sha256:\x00"}
    assert await store.missing_fl_blobs([]) == set()
    # apart from the artifacts workers fetch: a model is not a module
    assert await store.get_artifact(fl_ref(small)) is None


async def test_fl_blobs_are_bounded(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_base, "MAX_FL_BLOB", 16)
    fits, over = b"x" * 16, b"x" * 17
    await store.put_fl_blob(fl_ref(fits), fits)
    with pytest.raises(Invalid) as caught:
        await store.put_fl_blob(fl_ref(over), over)
    assert caught.value.field == "data"
    for bad in ("sha256:aa", "md5:" + "0" * 64, "sha256:" + "G" * 64, "sha256:" + "A" * 64):
        with pytest.raises(Invalid) as caught:
            await store.put_fl_blob(bad, fits)
        assert caught.value.field == "digest"
    too_many = [fl_ref(str(n).encode()) for n in range(store_base.MAX_FL_BLOB_BATCH + 1)]
    with pytest.raises(Invalid) as caught:
        await store.missing_fl_blobs(too_many)
    assert caught.value.field == "digests"
    assert await store.missing_fl_blobs([fl_ref(fits), fl_ref(over)]) == {fl_ref(over)}


async def test_fl_blobs_are_deleted_by_digest(store: Store) -> None:
    """A prune deletes what it names (once: a second delete of it counts none) and
    nothing else; a malformed or unknown digest is skipped; at most a batch at once."""
    kept, gone, also = b"a model version", b"an update", os.urandom(100_000)
    for data in (kept, gone, also):
        await store.put_fl_blob(fl_ref(data), data)
    asked = [fl_ref(gone), fl_ref(also), fl_ref(b"never"), "sha256:\x00"]
    assert await store.delete_fl_blobs(asked) == 2
    assert await store.delete_fl_blobs(asked) == 0
    assert await store.delete_fl_blobs([]) == 0
    assert await store.get_fl_blob(fl_ref(kept)) == kept
    assert await store.missing_fl_blobs([fl_ref(kept), fl_ref(gone), fl_ref(also)]) == {
        fl_ref(gone),
        fl_ref(also),
    }
    await store.put_fl_blob(fl_ref(gone), gone)  # written again once deleted: stored
    assert await store.get_fl_blob(fl_ref(gone)) == gone
    too_many = [fl_ref(str(n).encode()) for n in range(store_base.MAX_FL_BLOB_BATCH + 1)]
    with pytest.raises(Invalid) as caught:
        await store.delete_fl_blobs(too_many)
    assert caught.value.field == "digests"


async def test_fl_blob_digests_page_through_every_stored_one_in_order(store: Store) -> None:
    """What a full prune reads to find the blobs no experiment names."""
    refs = sorted(fl_ref(str(n).encode()) for n in range(5))
    for n in range(5):
        await store.put_fl_blob(fl_ref(str(n).encode()), str(n).encode())
    assert await store.fl_blob_digests() == refs
    assert await store.fl_blob_digests(limit=2) == refs[:2]
    assert await store.fl_blob_digests(refs[1], limit=2) == refs[2:4]
    assert await store.fl_blob_digests(refs[-1]) == []
    for bad in (0, store_base.MAX_FL_BLOB_BATCH + 1):
        with pytest.raises(Invalid) as caught:
            await store.fl_blob_digests(limit=bad)
        assert caught.value.field == "limit"


async def test_a_manager_that_lost_the_lead_deletes_no_fl_blob(store: Store) -> None:
    data = b"a version the new leader references"
    await store.put_fl_blob(fl_ref(data), data)
    lease = await store.claim_lease("leader", lease_claim("a"), 10.0)
    store.fence("leader", lease.term)
    await store.claim_lease("leader", lease_claim("b"), 20.0)  # a expired: b leads
    with pytest.raises(Fenced):
        await store.delete_fl_blobs([fl_ref(data)])
    assert await store.get_fl_blob(fl_ref(data)) == data


async def test_fl_experiments_are_deleted(store: Store) -> None:
    spec = ExperimentSpec.model_validate(
        {"name": "e", "workload": {"runtime": "host", "command": ["true"]}}
    )
    for exp_id in ("one", "two"):
        await store.save_fl_experiment(
            Experiment(id=exp_id, name="e", spec=spec, created_at=1.0, updated_at=1.0)
        )
    assert await store.delete_fl_experiment("one")
    assert not await store.delete_fl_experiment("one")
    assert await store.get_fl_experiment("one") is None
    assert await store.get_fl_experiment("two") is not None
    assert [e.id for e in (await store.list_fl_experiments())[0]] == ["two"]
    assert await store.live_fl_experiment_ids() == ["two"]


@pytest.mark.parametrize("backend", DURABLE)
async def test_concurrent_writers_of_one_fl_blob_store_it_once(
    make_store: StoreFactory, backend: str
) -> None:
    """Two managers on one store writing the same blob at once (a version both close
    to, an update both take): neither fails, one row."""
    one, two = await make_store(backend), await make_store(backend)
    data = b"shared" * 1000
    await asyncio.gather(*(s.put_fl_blob(fl_ref(data), data) for s in (one, two, one, two)))
    assert await two.get_fl_blob(fl_ref(data)) == data
    assert await one.missing_fl_blobs([fl_ref(data)]) == set()


@pytest.mark.parametrize("backend", DURABLE)
async def test_reopen_keeps_data(make_store: StoreFactory, backend: str) -> None:
    first = await make_store(backend)
    await first.add_tasks([task("a", 1.0, state="running")])
    await first.save_workers([Worker(id="w")])
    await first.save_token(TokenRecord("t", "u", "admin", "h", 1.0))
    await first.put_artifact("d", b"\x00\x01")
    await first.put_fl_blob(FL_REF, b"model")
    await first.add_workflow(workflow("j", 1.0, kind="job"), [])
    await first.save_schedule(schedule("s", 1.0, next_run=60.0))
    await first.save_application(application("app", 1.0, instances=[instance("app", "web", 0)]))
    await first.close()

    again = await make_store(backend)

    assert await again.get_task("a") == task("a", 1.0, state="running")
    assert await again.get_worker("w") == Worker(id="w")
    assert await again.find_token("h") == TokenRecord("t", "u", "admin", "h", 1.0)
    assert await again.get_artifact("d") == b"\x00\x01"
    assert await again.get_fl_blob(FL_REF) == b"model"
    assert await again.get_workflow("j") == workflow("j", 1.0, kind="job")
    assert await again.get_schedule("s") == schedule("s", 1.0, next_run=60.0)
    assert await again.get_application("app") == application(
        "app", 1.0, instances=[instance("app", "web", 0)]
    )


@asynccontextmanager
async def durable_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A database no store has opened yet."""
    if backend == "sqlite":
        yield sqlite_url(tmp_path)
        return
    async with fresh_pg_url() as url:
        yield url


@asynccontextmanager
async def raw_connection(url: str) -> AsyncIterator[AsyncConnection]:
    """A connection beside the store's, to look at what the migrations left."""
    parsed = make_url(url)
    schema = parsed.query.get("schema")
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(parsed.set(drivername="sqlite+aiosqlite"))
    else:
        engine = create_async_engine(
            parsed.set(drivername="postgresql+asyncpg").difference_update_query(["schema"]),
            connect_args={"server_settings": {"search_path": str(schema)}},
        )
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


def schema_drift(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


@pytest.mark.parametrize("backend", DURABLE)
async def test_migrations_twice_are_a_no_op(backend: str, tmp_path: Path) -> None:
    async with durable_url(backend, tmp_path) as url:
        first = open_store(url)
        await first.open()  # creates the schema (PostgreSQL) and migrates from nothing
        try:
            await first.add_tasks([task("a", 1.0)])
        finally:
            await first.close()
        second = open_store(url)
        await second.open()  # already at head: nothing to do
        await second.close()

        async with raw_connection(url) as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            rows = (await conn.execute(text("SELECT id FROM tasks"))).all()
            drift = await conn.run_sync(schema_drift)
    assert [tuple(v) for v in versions] == [(HEAD,)]
    assert [tuple(r) for r in rows] == [("a",)]
    assert drift == []


def upgrade_to(conn: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


@pytest.mark.parametrize("backend", DURABLE)
async def test_migration_0002_upgrades_a_0001_database(backend: str, tmp_path: Path) -> None:
    old = task("a", 1.0, state="running", job_id="j")
    async with durable_url(backend, tmp_path) as url:
        async with raw_connection(url) as conn:  # a database left by the first release
            schema = make_url(url).query.get("schema")
            if schema is not None:
                await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            await conn.run_sync(upgrade_to, "0001")
            row = {
                "id": old.id,
                "state": old.state,
                "job_id": old.job_id,
                "workflow_id": None,
                "created_at": old.created_at,
                "priority": old.priority,
                "doc": old.model_dump_json(exclude={"inputs_from", "schedule_id"}),
            }
            await conn.execute(tasks_table.insert(), row)
            await conn.commit()

        store = open_store(url)
        await store.open()
        try:
            assert await store.get_task("a") == old
            await store.add_workflow(workflow("w", 2.0), run_tasks("w", 1))
            await store.save_schedule(schedule("s", 3.0))
            assert await store.get_workflow("w") == workflow("w", 2.0)
            assert await store.get_schedule("s") == schedule("s", 3.0)
            assert (await store.list_tasks())[1] == 2
        finally:
            await store.close()

        async with raw_connection(url) as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            drift = await conn.run_sync(schema_drift)
    assert [tuple(v) for v in versions] == [(HEAD,)]
    assert drift == []


@pytest.mark.parametrize("backend", DURABLE)
async def test_migration_0003_upgrades_a_0002_database(backend: str, tmp_path: Path) -> None:
    cron = schedule("s", 1.0, next_run=60.0)
    async with durable_url(backend, tmp_path) as url:
        async with raw_connection(url) as conn:  # a database left by the release before
            schema = make_url(url).query.get("schema")
            if schema is not None:
                await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            await conn.run_sync(upgrade_to, "0002")
            before = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
            row = {
                "id": cron.id,
                "next_run": 60.0,
                "created_at": 1.0,
                "doc": cron.model_dump_json(),
            }
            await conn.execute(schedules_table.insert(), row)
            await conn.commit()
        assert "schedules" in before
        assert "applications" not in before

        store = open_store(url)
        await store.open()
        try:
            assert await store.get_schedule("s") == cron
            assert await store.list_applications() == ([], 0)
            await store.save_application(application("app", 2.0))
            assert await store.get_application("app") == application("app", 2.0)
        finally:
            await store.close()

        async with raw_connection(url) as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            drift = await conn.run_sync(schema_drift)
    assert [tuple(v) for v in versions] == [(HEAD,)]
    assert drift == []


@pytest.mark.parametrize("backend", DURABLE)
async def test_migration_0004_upgrades_a_0003_database(backend: str, tmp_path: Path) -> None:
    old = task("a", 1.0, state="running")
    async with durable_url(backend, tmp_path) as url:
        async with raw_connection(url) as conn:  # a database left by the release before
            schema = make_url(url).query.get("schema")
            if schema is not None:
                await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            await conn.run_sync(upgrade_to, "0003")
            row = {
                "id": old.id,
                "state": old.state,
                "job_id": None,
                "workflow_id": None,
                "created_at": old.created_at,
                "priority": old.priority,
                "doc": old.model_dump_json(exclude={"project"}),
            }
            await conn.execute(tasks_table.insert(), row)
            await conn.execute(
                text(
                    'INSERT INTO tokens (id, secret_hash, "user", role, created_at) '
                    "VALUES ('admin', 'h', 'admin', 'admin', 1.0)"
                )
            )
            await conn.commit()

        store = open_store(url)
        await store.open()
        try:
            assert await store.get_task("a") == old  # in the project 'default'
            assert (await store.list_tasks(projects=["default"]))[1] == 1
            assert (await store.list_tasks(projects=["lab"]))[1] == 0
            assert await store.find_token("h") == TokenRecord("admin", "admin", "admin", "h", 1.0)
        finally:
            await store.close()

        async with raw_connection(url) as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            projects = (await conn.execute(text("SELECT project FROM tasks"))).all()
            drift = await conn.run_sync(schema_drift)
    assert [tuple(v) for v in versions] == [(HEAD,)]
    assert [tuple(r) for r in projects] == [("default",)]
    assert drift == []


@pytest.mark.parametrize("backend", DURABLE)
async def test_migration_0009_fills_the_filter_columns_of_a_0007_database(
    backend: str, tmp_path: Path
) -> None:
    ran = task("a", 1.0, name="train-1", state="completed", worker_id="w1", project="lab")
    waiting = task("b", 2.0, name="train-2")
    nameless = task("c", 3.0)
    async with durable_url(backend, tmp_path) as url:
        async with raw_connection(url) as conn:  # a database left by the release before
            schema = make_url(url).query.get("schema")
            if schema is not None:
                await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            await conn.run_sync(upgrade_to, "0007")
            rows = [
                {
                    "id": t.id,
                    "state": t.state,
                    "created_at": t.created_at,
                    "priority": t.priority,
                    "project": t.project,
                    "doc": t.model_dump_json(),
                }
                for t in (ran, waiting, nameless)
            ]
            # and one whose document is not JSON: the migration must not stop on it
            rows.append({**rows[2], "id": "junk", "doc": "{not json"})
            await conn.execute(
                text(
                    "INSERT INTO tasks (id, state, created_at, priority, project, doc) "
                    "VALUES (:id, :state, :created_at, :priority, :project, :doc)"
                ),
                rows,
            )
            await conn.commit()

        store = open_store(url)
        await store.open()
        try:
            assert [t.id for t in (await store.list_tasks(name="train"))[0]] == ["a", "b"]
            assert [t.id for t in (await store.list_tasks(worker_id="w1"))[0]] == ["a"]
            assert await store.get_task("a") == ran
        finally:
            await store.close()

        async with raw_connection(url) as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            columns = (
                await conn.execute(text("SELECT id, name, worker_id FROM tasks ORDER BY id"))
            ).all()
            drift = await conn.run_sync(schema_drift)
    assert [tuple(v) for v in versions] == [(HEAD,)]
    assert [tuple(c) for c in columns] == [
        ("a", "train-1", "w1"),
        ("b", "train-2", None),
        ("c", "", None),
        ("junk", "", None),
    ]
    assert drift == []


@pytest.mark.parametrize("backend", DURABLE)
async def test_migration_0010_adds_the_fl_blobs_to_a_0009_database(
    backend: str, tmp_path: Path
) -> None:
    async with durable_url(backend, tmp_path) as url:
        async with raw_connection(url) as conn:  # a database left by the release before
            schema = make_url(url).query.get("schema")
            if schema is not None:
                await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            await conn.run_sync(upgrade_to, "0009")
            await conn.execute(
                text(
                    "INSERT INTO fl_experiments (id, name, state, project, created_at, doc) "
                    "VALUES ('e', 'digits', 'running', 'default', 1.0, '{}')"
                )
            )
            await conn.commit()
        store = open_store(url)
        await store.open()
        try:
            await store.put_fl_blob(FL_REF, b"model")
            assert await store.get_fl_blob(FL_REF) == b"model"
            assert await store.live_fl_experiment_ids() == ["e"]
        finally:
            await store.close()
        async with raw_connection(url) as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            sizes = (await conn.execute(text("SELECT digest, size FROM fl_blobs"))).all()
            drift = await conn.run_sync(schema_drift)
    assert [tuple(v) for v in versions] == [(HEAD,)]
    assert [tuple(r) for r in sizes] == [(FL_REF, 5)]
    assert drift == []


def audit_record(at: float, **fields: object) -> AuditRecord:
    defaults: dict[str, object] = {"actor": "ann", "action": "POST"}
    return AuditRecord.model_validate({"at": at, **defaults, **fields})


async def test_audit_records_are_appended_and_read_newest_first(store: Store) -> None:
    full = audit_record(
        1.0,
        token_id="t1",
        client="10.0.0.9",
        path="/api/v1/tasks/x/stop",
        route="/api/v1/tasks/{task_id}/stop",
        resource="task",
        resource_id="x",
        project="lab",
        status=202,
        request_id="req-1",
    )
    await store.apply(Batch(audit=[full, audit_record(2.0, action="DELETE", status=404)]))
    await store.apply(Batch(audit=[audit_record(3.0, actor="bob", action="worker.joined")]))
    found = await store.list_audit(AuditQuery())
    assert [r.at for r in found] == [3.0, 2.0, 1.0]
    ids = [r.id for r in found]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 3 and min(ids) > 0
    assert found[2] == full.model_copy(update={"id": found[2].id})  # every field kept
    # the store gives ids: what the record carried is ignored
    await store.apply(Batch(audit=[audit_record(4.0, id=1)]))
    assert (await store.list_audit(AuditQuery(limit=1)))[0].id > ids[0]


async def test_audit_filters_and_cursor(store: Store) -> None:
    records = [
        audit_record(10.0, actor="ann", action="POST", resource="task", resource_id="a"),
        audit_record(20.0, actor="bob", action="DELETE", resource="task", resource_id="b"),
        audit_record(30.0, actor="ann", action="DELETE", resource="worker", resource_id="w"),
        audit_record(40.0, actor="system", action="worker.joined", resource="worker"),
    ]
    await store.apply(Batch(audit=records))

    async def ats(**query: object) -> list[float]:
        return [r.at for r in await store.list_audit(AuditQuery(**query))]  # type: ignore[arg-type]

    assert await ats(actor="ann") == [30.0, 10.0]
    assert await ats(action="DELETE") == [30.0, 20.0]
    assert await ats(resource="task") == [20.0, 10.0]
    assert await ats(resource="task/b") == [20.0]
    assert await ats(resource="worker/w") == [30.0]
    assert await ats(since=20.0, until=40.0) == [30.0, 20.0]  # since included, until not
    assert await ats(actor="nobody") == []
    assert await ats(actor="a\x00b") == []  # what no row can hold is found nowhere
    first = await store.list_audit(AuditQuery(limit=2))
    assert [r.at for r in first] == [40.0, 30.0]
    assert await ats(before=first[-1].id, limit=2) == [20.0, 10.0]
    assert await ats(before=first[-1].id, actor="ann") == [10.0]


async def test_audit_prune_by_age_and_by_count(store: Store) -> None:
    await store.apply(Batch(audit=[audit_record(float(at)) for at in range(1, 11)]))
    # older than 4 go, in the same transaction as new records
    await store.apply(
        Batch(audit=[audit_record(11.0)], audit_prune=AuditPrune(before=4.0, keep=1000))
    )
    kept = [r.at for r in await store.list_audit(AuditQuery())]
    assert kept == [float(a) for a in range(11, 3, -1)]
    await store.apply(Batch(audit_prune=AuditPrune(before=0.0, keep=3)))
    assert [r.at for r in await store.list_audit(AuditQuery())] == [11.0, 10.0, 9.0]
    # ids are not reused after a prune
    newest = (await store.list_audit(AuditQuery(limit=1)))[0].id
    await store.apply(Batch(audit_prune=AuditPrune(before=100.0, keep=3)))
    assert await store.list_audit(AuditQuery()) == []
    await store.apply(Batch(audit=[audit_record(12.0)]))
    assert (await store.list_audit(AuditQuery()))[0].id > newest


@pytest.mark.parametrize("backend", DURABLE)
async def test_audit_records_survive_reopening(make_store: StoreFactory, backend: str) -> None:
    first = await make_store(backend)
    await first.apply(Batch(audit=[audit_record(1.0, status=201)]))
    await first.close()
    again = await make_store(backend)
    (kept,) = await again.list_audit(AuditQuery())
    assert (kept.at, kept.actor, kept.status) == (1.0, "ann", 201)


async def test_lists_show_only_the_projects_asked_for(store: Store) -> None:
    lab = task("b", 2.0).model_copy(update={"project": "lab"})
    await store.add_tasks([task("a", 1.0), lab, task("c", 3.0)])
    mine, total = await store.list_tasks(projects=["lab"])
    assert ([t.id for t in mine], total) == (["b"], 1)
    assert (await store.list_tasks(projects=["lab", "default"]))[1] == 3
    assert (await store.list_tasks(projects=[]))[1] == 0
    assert (await store.list_tasks())[1] == 3
    await store.add_workflow(workflow("w", 1.0).model_copy(update={"project": "lab"}), [])
    await store.add_workflow(workflow("v", 2.0), [])
    found, total = await store.list_workflows(projects=["lab"])
    assert ([w.id for w in found], total) == (["w"], 1)
    await store.save_schedule(schedule("s", 1.0).model_copy(update={"project": "lab"}))
    await store.save_schedule(schedule("t", 2.0))
    listed, total = await store.list_schedules(projects=["default"])
    assert ([x.id for x in listed], total) == (["t"], 1)


async def test_sqlite_creates_parent_dir_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "edgeplane.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        await store.add_tasks([task("a", 1.0)])
    finally:
        await store.close()
    assert path.exists()
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one()
    finally:
        await engine.dispose()
    assert mode == "wal"


async def test_sqlite_in_memory_serves_concurrent_callers() -> None:
    store = open_store("sqlite://")
    await store.open()
    try:
        writes = [
            store.save_tasks([task(f"b{b}-{i}", float(i)) for i in range(50)]) for b in range(8)
        ]
        reads = [store.list_tasks(limit=1) for _ in range(8)]
        await asyncio.gather(*writes, *reads)
        assert (await store.list_tasks(limit=0))[1] == 400
    finally:
        await store.close()


async def test_file_sqlite_serialises_concurrent_writers(tmp_path: Path) -> None:
    store = open_store(sqlite_url(tmp_path))
    await store.open()
    try:
        await asyncio.gather(
            *(store.save_tasks([task(f"b{b}-{i}", float(i)) for i in range(50)]) for b in range(8)),
            *(store.put_artifact(f"d{b}", b"x") for b in range(8)),
        )
        assert (await store.list_tasks(limit=0))[1] == 400
    finally:
        await store.close()


def test_open_store_picks_the_backend_by_scheme(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store("sqlite://"), SqlStore)
    assert isinstance(open_store(sqlite_url(tmp_path)), SqlStore)
    assert isinstance(open_store("postgresql://h:5433/db?schema=s1"), SqlStore)
    for bad in ("redis://localhost", "nonsense", "postgresql://h/db?schema=bad;name"):
        with pytest.raises(Invalid) as info:
            open_store(bad)
        assert info.value.field == "store"


async def test_unreachable_postgresql_is_unavailable() -> None:
    store = open_store("postgresql://postgres@127.0.0.1:1/test")
    with pytest.raises(Unavailable):
        await store.open()
    with pytest.raises(Unavailable):
        await store.get_task("a")


async def test_fl_experiments_round_trip(store: Store) -> None:
    from edgeplane.fl.spec import ExperimentSpec
    from edgeplane.fl.state import Experiment, RoundRecord

    spec = ExperimentSpec.model_validate({"name": "digits", "workload": {"runtime": "host"}})
    exp = Experiment(id="e1", name="digits", spec=spec, created_at=1.0, updated_at=1.0)
    await store.save_fl_experiment(exp)
    exp.rounds.append(RoundRecord(round=1, clients=["w1"], updates={"w1": 10}))
    exp.versions = ["sha256:" + "0" * 64]
    await store.save_fl_experiment(exp)
    assert await store.get_fl_experiment("e1") == exp
    assert await store.get_fl_experiment("nope") is None
    assert await store.list_fl_experiments() == ([exp], 1)
    assert await store.live_fl_experiment_ids() == ["e1"]
    later = exp.model_copy(update={"id": "e2", "created_at": 2.0})
    await store.save_fl_experiment(later)
    assert await store.live_fl_experiment_ids() == ["e1", "e2"]
    for state in ("completed", "failed", "stopped"):
        exp.state = state  # type: ignore[assignment]
        await store.save_fl_experiment(exp)
        assert await store.live_fl_experiment_ids() == ["e2"]
