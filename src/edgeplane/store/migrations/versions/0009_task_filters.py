"""Task list filters: ``name`` and ``worker_id`` columns, and indexes in list order.

``GET /tasks`` filters by state, name prefix, worker and run and pages newest or oldest
first by a cursor; each filter gets an index ending in (``created_at``, ``id``), the list
order. ``name`` compares by code point on PostgreSQL too (collation ``"C"``), so a prefix
is one index range. Rows written before this revision get both columns from their
documents.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Filters whose one-column index becomes (column, created_at, id).
_REORDERED = ("state", "job_id", "workflow_id")
#: Rows read and updated per statement while filling the new columns.
_BATCH = 1000

_tasks = sa.table(
    "tasks",
    sa.column("id", sa.String()),
    sa.column("doc", sa.Text()),
    sa.column("name", sa.String()),
    sa.column("worker_id", sa.String()),
)


def upgrade() -> None:
    name_type = sa.String().with_variant(sa.String(collation="C"), "postgresql")
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("name", name_type, nullable=False, server_default=""))
        batch.add_column(sa.Column("worker_id", sa.String(), nullable=True))
    for column in _REORDERED:
        op.drop_index(f"ix_tasks_{column}", "tasks")
    _fill()
    for column in _REORDERED:
        op.create_index(f"ix_tasks_{column}", "tasks", [column, "created_at", "id"])
    op.create_index("ix_tasks_name", "tasks", ["name", "created_at", "id"])
    op.create_index("ix_tasks_worker_id", "tasks", ["worker_id", "created_at", "id"])


def _fill() -> None:
    """The new columns of existing rows, read from their documents in Python (a document
    that is not JSON, which SQL's JSON functions would stop the migration on, keeps the
    defaults; the store reads such rows its own way)."""
    conn = op.get_bind()
    update = (
        _tasks.update()
        .where(_tasks.c.id == sa.bindparam("key"))
        .values(name=sa.bindparam("new_name"), worker_id=sa.bindparam("new_worker"))
    )
    last: str | None = None
    while True:
        query = sa.select(_tasks.c.id, _tasks.c.doc).order_by(_tasks.c.id).limit(_BATCH)
        if last is not None:
            query = query.where(_tasks.c.id > last)
        rows = conn.execute(query).all()
        if not rows:
            return
        changes = [change for change in (_columns(row.id, row.doc) for row in rows) if change]
        if changes:
            conn.execute(update, changes)
        last = rows[-1].id


def _columns(task_id: str, doc: str) -> dict[str, Any] | None:
    try:
        found = orjson.loads(doc)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(found, dict):
        return None
    name, worker = found.get("name"), found.get("worker_id")
    name = name if isinstance(name, str) else ""
    worker = worker if isinstance(worker, str) else None
    if not name and worker is None:
        return None
    return {"key": task_id, "new_name": name, "new_worker": worker}


def downgrade() -> None:
    op.drop_index("ix_tasks_worker_id", "tasks")
    op.drop_index("ix_tasks_name", "tasks")
    for column in _REORDERED:
        op.drop_index(f"ix_tasks_{column}", "tasks")
        op.create_index(f"ix_tasks_{column}", "tasks", [column])
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("worker_id")
        batch.drop_column("name")
