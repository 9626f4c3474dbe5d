"""Store backends for tests: the same test runs on memory, SQLite and PostgreSQL.

Import the fixtures into a test module (or a conftest) to use them::

    from store_fixtures import make_store, pg_schema, store, store_backend

``store`` is one open, empty store per backend; ``make_store("sqlite")`` opens (and
reopens) stores by backend name; ``fresh_pg_url()`` gives a throwaway schema.

PostgreSQL is the server on 127.0.0.1:5432 (``$EDGEPLANE_TEST_PG`` overrides it). A test
run works in a schema of its own, dropped with CASCADE at the end; each test starts with
empty tables. An unreachable server fails the PostgreSQL cases: CI has one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from edgeplane.store import Store, open_store
from edgeplane.store.tables import metadata

PG_SERVER = os.environ.get("EDGEPLANE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("memory", "sqlite", "postgresql")
#: ``pytest.mark.parametrize`` values, PostgreSQL marked ``postgres``.
BACKEND_PARAMS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]

StoreFactory = Callable[[str], Awaitable[Store]]


def unique_schema() -> str:
    return f"edgeplane_test_{uuid.uuid4().hex[:12]}"


def pg_url(schema: str) -> str:
    """The store URL of ``schema`` on the test server (created by the store when opened)."""
    return f"{PG_SERVER}?schema={schema}"


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'store.db'}"


def store_urls(directory: Path, schema: str) -> dict[str, str]:
    """The URL of each backend: SQLite in ``directory``, PostgreSQL in ``schema``."""
    return {"memory": "memory://", "sqlite": sqlite_url(directory), "postgresql": pg_url(schema)}


async def drop_pg_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_SERVER)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_pg_url() -> AsyncIterator[str]:
    """The URL of a schema of its own (made when a store opens it), dropped on exit."""
    schema = unique_schema()
    try:
        yield pg_url(schema)
    finally:
        await drop_pg_schema(schema)


async def empty_pg_tables(schema: str) -> None:
    """Truncate the store tables of ``schema`` so a test starts from nothing."""
    names = ", ".join(f'"{schema}"."{table.name}"' for table in metadata.sorted_tables)
    conn = await asyncpg.connect(PG_SERVER)
    try:
        await conn.execute(f"TRUNCATE {names}")
    finally:
        await conn.close()


@dataclass
class PgSchema:
    """The run's PostgreSQL schema; ``used`` once a store opened it (only then dropped)."""

    name: str
    used: bool = False

    @property
    def url(self) -> str:
        return pg_url(self.name)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_schema() -> AsyncIterator[PgSchema]:
    schema = PgSchema(unique_schema())
    yield schema
    if schema.used:
        await drop_pg_schema(schema.name)


@pytest_asyncio.fixture
async def make_store(tmp_path: Path, pg_schema: PgSchema) -> AsyncIterator[StoreFactory]:
    """``await make_store("sqlite")`` opens a store of that backend; all close at teardown.

    The first store of a backend in a test is empty; later ones reopen the same database
    (a new :class:`~edgeplane.store.MemoryStore` is always empty).
    """
    opened: list[Store] = []
    started: set[str] = set()

    async def make(backend: str) -> Store:
        store = open_store(store_urls(tmp_path, pg_schema.name)[backend])
        pg_schema.used |= backend == "postgresql"
        await store.open()
        opened.append(store)
        if backend == "postgresql" and backend not in started:
            await empty_pg_tables(pg_schema.name)
        started.add(backend)
        return store

    yield make
    for store in reversed(opened):
        await store.close()


@pytest.fixture(params=BACKEND_PARAMS)
def store_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest_asyncio.fixture
async def store(make_store: StoreFactory, store_backend: str) -> Store:
    """An open, empty store of each backend in turn."""
    return await make_store(store_backend)
