"""The chute store (docs/chutes.md): chute names, each of one project, and their
published versions (a manifest each, immutable).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "store_chutes",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_store_chutes_project", "store_chutes", ["project", "name"])
    op.create_table(
        "store_chute_versions",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("version", sa.String(), primary_key=True),
        sa.Column("digest", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False, server_default=""),
        sa.Column("published_at", sa.Float(), nullable=False),
        sa.Column("published_by", sa.String(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("doc", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("store_chute_versions")
    op.drop_table("store_chutes")
