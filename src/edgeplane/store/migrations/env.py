"""Alembic environment: always run in code by ``SqlStore.open`` on a connection it lends.

No ``alembic.ini`` and no URL here: the store passes its open connection through
``config.attributes["connection"]`` so migrations share its driver, schema and
transaction.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from edgeplane.store.tables import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("edgeplane migrations run through SqlStore.open(), not the alembic CLI")

context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
