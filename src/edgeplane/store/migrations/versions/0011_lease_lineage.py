"""Leases get a lineage: a random id kept from holder to holder, which the root tells a
cluster's new leader from another cluster with the same id by.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("lineage", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("lineage")
