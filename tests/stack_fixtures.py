"""The real stack in the test's process: what `edgeplane up` runs (`running_stack`: store,
manager, API over uvicorn, in-process workers) and a client of its API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from edgeplane.config import Settings
from edgeplane.roles.up import Stack, running_stack

TOKEN = "test-admin-token"


async def start_stack(
    tmp_path: Path, broker: str, store: str, domain: str, **overrides: Any
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    """The stack on ``broker`` and ``store``, under ``domain``, with two workers that run
    host tasks (``overrides`` are other `Settings`), and an admin client of ``/api/v1``."""
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "broker": broker,
        "store": store,
        "port": 0,
        "workers": 2,
        "heartbeat_s": 0.3,
        "domain": domain,
        "admin_token": TOKEN,
        "allow_host": True,
        # as root: host tasks of these tests wait on files in the test's own directory,
        # which only root may enter (the default user: tests/faults/test_host_user.py)
        "host_user": "root",
        "retry_backoff_s": 0.05,
    }
    values.update(overrides)
    settings = Settings(**values)
    async with (
        running_stack(settings) as stack,
        httpx.AsyncClient(
            base_url=stack.control.url + "/api/v1",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        ) as http,
    ):
        yield stack, http
