"""Federated learning experiments (docs/fl.md): one document per experiment.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fl_experiments",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("project", sa.String(), nullable=False, server_default="default"),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("doc", sa.Text(), nullable=False),
    )
    op.create_index("ix_fl_experiments_created_at", "fl_experiments", ["created_at", "id"])


def downgrade() -> None:
    op.drop_table("fl_experiments")
