"""The dashboard open in many tabs of one browser, and a task's usage charts, in Debian's
chromium driven by playwright (headless) against the real stack.

A browser opens at most 6 HTTP/1.1 connections to a host, and an open event stream holds
one: the tabs of one browser share a single stream (one tab reads it and passes it on),
so a 10th tab loads and follows changes like the first, and closing the reading tab hands
the stream to another. Every test fails on a script error or a CSP violation.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane.roles.up import Stack
from stack_fixtures import TOKEN, start_stack

CHROMIUM = Path("/usr/bin/chromium")
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is in the test extras: pip install -e '.[test]'"
)
if not CHROMIUM.exists():
    pytest.skip("chromium is missing: run scripts/system-deps.sh", allow_module_level=True)

expect = playwright_api.expect
SHOWN_MS = 20_000
TABS = 10
FAST = {"interval_s": 0.2, "history": 100}


@pytest.fixture
async def stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    async for pair in start_stack(
        tmp_path, fast_broker_url, f"sqlite:///{tmp_path / 'db.sqlite'}", unique_domain
    ):
        yield pair


async def goto(page: Any, url: str) -> None:
    """``page.goto``, again when chromium aborted the load because the machine's network
    interfaces changed (``ERR_NETWORK_CHANGED``: other tests' network namespaces and veth
    pairs come and go on a shared machine); anything else fails the test."""
    for attempt in range(3):
        try:
            await page.goto(url)
            return
        except playwright_api.Error as exc:
            if "ERR_NETWORK_CHANGED" not in str(exc) or attempt == 2:
                raise


class Tabs:
    """Tabs of one browser context (one browser profile: shared storage and connections)."""

    def __init__(self, context: Any, base: str, shots: Path) -> None:
        self.context = context
        self.base = base
        self.shots = shots
        self.problems: list[str] = []

    async def open(self, fragment: str) -> Any:
        page = await self.context.new_page()
        page.on("pageerror", lambda exc: self.problems.append(f"script error: {exc}"))
        page.on("console", self._console)
        await goto(page, f"{self.base}/dashboard{fragment}")
        await expect(page.locator("#status")).to_have_text("live", timeout=SHOWN_MS)
        return page

    def _console(self, message: Any) -> None:
        text = message.text
        if "Content Security Policy" in text or (
            message.type == "error" and "Failed to load resource" not in text
        ):
            self.problems.append(f"console {message.type}: {text}")


@pytest.fixture
async def tabs(
    stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Tabs]:
    shots = Path(os.environ.get("EDGEPLANE_TEST_ARTIFACTS", tmp_path)) / request.node.name
    shots.mkdir(parents=True, exist_ok=True)
    async with playwright_api.async_playwright() as driver:
        chromium = await driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            context = await chromium.new_context()
            found = Tabs(context, stack[0].control.url, shots)
            # the first tab logs in (the token goes to the profile's storage)
            first = await context.new_page()
            await goto(first, f"{found.base}/dashboard#token={TOKEN}")
            await expect(first.locator("#status")).to_have_text("live", timeout=SHOWN_MS)
            await first.close()
            yield found
            assert found.problems == [], found.problems
        finally:
            await chromium.close()


def streams(stack: Stack) -> int:
    """Event streams open on the control plane."""
    return len(stack.control.manager.journal.changes)


async def eventually_streams(stack: Stack, page: Any, wanted: int) -> None:
    """Until ``wanted`` streams are open (a closed tab's ends when the server notices)."""
    for _ in range(200):
        if streams(stack) == wanted:
            return
        await page.wait_for_timeout(50)  # the browser's clock: no event to wait on here
    raise AssertionError(f"{streams(stack)} streams open, not {wanted}")


async def run_host(http: httpx.AsyncClient, name: str, script: str, **extra: Any) -> str:
    body = {"name": name, "runtime": "host", "command": ["sh", "-c", script], "start": True}
    created = await http.post("/tasks", json={**body, **extra})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def test_ten_tabs_load_and_follow_one_shared_stream(
    tabs: Tabs, stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    up, http = stack
    pages = [await tabs.open("#tasks") for _ in range(TABS)]
    await eventually_streams(up, pages[0], 1)
    gate = tmp_path / "go"
    task_id = await run_host(http, "watched", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    for page in pages:
        row = page.locator(f'#view tr[data-id="{task_id}"]')
        await expect(row.locator(".st")).to_have_text("running", timeout=SHOWN_MS)
        await page.evaluate("window.notReloaded = true")
    gate.touch()
    for page in pages:
        row = page.locator(f'#view tr[data-id="{task_id}"]')
        await expect(row.locator(".st")).to_have_text("completed", timeout=SHOWN_MS)
        assert await page.evaluate("window.notReloaded") is True
    await pages[-1].screenshot(path=str(tabs.shots / "tenth-tab.png"), full_page=True)

    # the tab reading the stream closes: another takes it over, and the rest still follow
    await pages[0].close()
    rest = pages[1:]
    await eventually_streams(up, rest[0], 1)
    later = await run_host(http, "after-handover", "true")
    for page in rest:
        row = page.locator(f'#view tr[data-id="{later}"]')
        await expect(row.locator(".st")).to_have_text("completed", timeout=SHOWN_MS)
    assert streams(up) == 1


async def test_a_task_page_charts_its_usage_samples(
    tabs: Tabs, stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    _, http = stack
    gate = tmp_path / "go"
    script = (
        "dd if=/dev/zero of=written bs=1M count=4 oflag=direct 2>/dev/null; "
        f"while [ ! -e {gate} ]; do sleep 0.05; done"
    )
    task_id = await run_host(http, "sampled", script, monitoring=FAST)
    page = await tabs.open(f"#task/{task_id}")
    for value in ("cpu_percent", "rss_mb", "io_write_bytes"):
        await expect(page.locator(f'[data-metric="{value}"]')).to_be_visible(timeout=SHOWN_MS)
    await expect(page.locator('[data-metric="ts"]')).to_have_count(0)
    await page.screenshot(path=str(tabs.shots / "task-metrics.png"), full_page=True)
    gate.touch()
    await expect(page.locator("#task-state")).to_have_text("completed", timeout=SHOWN_MS)
