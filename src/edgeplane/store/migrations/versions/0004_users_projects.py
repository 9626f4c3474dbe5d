"""Users; tokens with expiry, scopes, projects and kind; a project on every resource.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Resources that belong to a project; rows written before this revision go to 'default'.
_PROJECTED = ("tasks", "workflows", "schedules", "applications")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("projects", sa.String(), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    # batch mode: SQLite cannot add some columns in place; Alembic copies the table there
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("scopes", sa.String(), nullable=False, server_default=""))
        batch.add_column(sa.Column("projects", sa.String(), nullable=False, server_default=""))
        batch.add_column(sa.Column("kind", sa.String(), nullable=False, server_default="api"))
        batch.add_column(sa.Column("name", sa.String(), nullable=False, server_default=""))
    op.create_index("ix_tokens_user", "tokens", ["user"])
    for table in _PROJECTED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("project", sa.String(), nullable=False, server_default="default")
            )
        op.create_index(f"ix_{table}_project", table, ["project", "created_at", "id"])


def downgrade() -> None:
    for table in _PROJECTED:
        op.drop_index(f"ix_{table}_project", table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("project")
    op.drop_index("ix_tokens_user", "tokens")
    with op.batch_alter_table("tokens") as batch:
        for column in ("expires_at", "scopes", "projects", "kind", "name"):
            batch.drop_column(column)
    op.drop_table("users")
