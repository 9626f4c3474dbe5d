"""Rows an older version wrote (metadata nested past pydantic's reader, a null from an old
PATCH, no JSON at all) stay readable, listable and deletable on SQLite and PostgreSQL, and
ids no row can hold (NUL: PostgreSQL refuses it) are "not found", never a driver error."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from edgeplane.model import Task
from store_fixtures import PG_SERVER, PgSchema, StoreFactory

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


def nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


async def insert(
    backend: str, tmp_path: Path, schema: PgSchema, rows: list[tuple[Any, ...]]
) -> None:
    sql = (
        "INSERT INTO tasks (id, state, job_id, workflow_id, created_at, priority, doc) VALUES ({})"
    )
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "store.db") as db:
            db.executemany(sql.format(", ".join("?" * 7)), rows)
        return
    conn = await asyncpg.connect(PG_SERVER, server_settings={"search_path": schema.name})
    try:
        await conn.executemany(sql.format(", ".join(f"${i}" for i in range(1, 8))), rows)
    finally:
        await conn.close()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_rows_an_older_version_wrote_are_read_listed_and_deleted(
    make_store: StoreFactory, backend: str, tmp_path: Path, pg_schema: PgSchema
) -> None:
    store = await make_store(backend)
    now = time.time()
    deep = Task(id="deep", started=True, metadata=nested(200), created_at=now)
    nulled = orjson.loads(Task(id="nulled", created_at=now + 1).model_dump_json())
    nulled["name"] = None
    docs = {"deep": deep.model_dump_json(), "nulled": orjson.dumps(nulled).decode()}
    docs["garbage"] = "{not json"
    rows = [(i, "pending", None, None, now + n, 50, d) for n, (i, d) in enumerate(docs.items())]
    await insert(backend, tmp_path, pg_schema, rows)

    found = await store.get_task("deep")
    assert found is not None and found.metadata == nested(200)
    assert (await store.get_task("nulled")) is not None
    garbage = await store.get_task("garbage")
    assert garbage is not None and garbage.state == "pending"  # from its columns
    items, total = await store.list_tasks()
    assert ([t.id for t in items], total) == (["deep", "nulled", "garbage"], 3)
    assert {t.id for t in await store.unfinished_tasks()} == {"deep", "nulled", "garbage"}
    await store.save_tasks([found.model_copy(update={"priority": 3})])
    assert (await store.get_task("deep")).priority == 3  # type: ignore[union-attr]
    for task_id in docs:
        assert await store.delete_task(task_id)
    assert (await store.list_tasks())[1] == 0


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_nul_in_a_key_is_not_found(make_store: StoreFactory, backend: str) -> None:
    store = await make_store(backend)
    bad = "a\x00b"
    assert await store.get_task(bad) is None
    assert await store.delete_task(bad) is False
    assert await store.list_tasks(job_id=bad) == ([], 0)
    assert await store.get_workflow(bad) is None
    assert await store.get_schedule(bad) is None
    assert await store.delete_schedule(bad) is False
    assert await store.get_application(bad) is None
    assert await store.delete_application(bad) is False
    assert await store.get_worker(bad) is None
    assert await store.delete_worker(bad) is False
    assert await store.find_token(bad) is None
    assert await store.get_artifact(bad) is None
