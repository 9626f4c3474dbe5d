"""Shared fixtures: brokers (broker_fixtures), stores (store_fixtures), a fresh pg schema,
the fault suite's processes (faults/procs)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

pytest_plugins = ["broker_fixtures", "store_fixtures", "faults.procs", "registry_fixtures"]


@pytest_asyncio.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A PostgreSQL store URL with a schema of its own, dropped after the test."""
    from store_fixtures import fresh_pg_url

    async with fresh_pg_url() as url:
        yield url
