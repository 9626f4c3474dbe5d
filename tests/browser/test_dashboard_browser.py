"""The dashboard in a real browser: Debian's chromium driven by playwright (headless),
against the real stack (`start_stack`: manager, API, two host workers, SQLite), and for
chutes a manager and a real `edgeplane worker --api` process running runc containers.

Every test fails on a Content-Security-Policy violation or a script error reported by the
page. A screenshot of each page visited is kept in ``$EDGEPLANE_TEST_ARTIFACTS`` (or the
test's temporary directory). `make test` installs chromium (scripts/system-deps.sh) and
playwright (the ``test`` extras); the browser is never downloaded (no
``playwright install``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane import safeyaml
from edgeplane.roles.up import Stack
from edgeplane.transport import free_port
from faults import procs
from faults.test_chute_worker import Node, chute, running_node
from oci_fixtures import busybox_containers_unavailable
from stack_fixtures import TOKEN, start_stack

CHROMIUM = Path("/usr/bin/chromium")
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is in the test extras: pip install -e '.[test]'"
)
if not CHROMIUM.exists():
    pytest.skip("chromium is missing: run scripts/system-deps.sh", allow_module_level=True)

expect = playwright_api.expect
Page = playwright_api.Page
#: how long the page may take to show something (the stack answers in milliseconds)
SHOWN_MS = 20_000


class Browser:
    """One page of a headless chromium, with what it reported that must fail the test."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        self.page = page
        self.base = base
        self.shots = shots
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"script error: {exc}"))
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        # a 4xx the page expects (a refused token, the metrics it feature-detects) is
        # logged as a failed load; anything else the console says as an error is a fault
        text = message.text
        if "Content Security Policy" in text or (
            message.type == "error" and "Failed to load resource" not in text
        ):
            self.problems.append(f"console {message.type}: {text}")

    def _response(self, response: Any) -> None:
        if response.status >= 500:
            self.problems.append(f"{response.status} from {response.url}")

    async def open(self, fragment: str = "") -> None:
        await self.page.goto(f"{self.base}/dashboard{fragment}")

    async def login(self, token: str = TOKEN) -> None:
        await self.open()
        await self.page.fill("#token-input", token)
        await self.page.click("#token-form button")
        await expect(self.page.locator("#status")).to_have_text("live", timeout=SHOWN_MS)

    async def go(self, fragment: str) -> None:
        """Another page of the dashboard, as its navigation does it: no reload."""
        await self.page.evaluate("(f) => { location.hash = f; }", fragment)

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@pytest.fixture
async def stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    async for pair in start_stack(
        tmp_path, fast_broker_url, f"sqlite:///{tmp_path / 'db.sqlite'}", unique_domain
    ):
        yield pair


def shots_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    shots = Path(os.environ.get("EDGEPLANE_TEST_ARTIFACTS", tmp_path)) / request.node.name
    shots.mkdir(parents=True, exist_ok=True)
    return shots


@contextlib.asynccontextmanager
async def open_browser(base: str, shots: Path) -> AsyncIterator[Browser]:
    """A headless chromium on ``base``; what the page reported must be nothing at the end."""
    async with playwright_api.async_playwright() as driver:
        chromium = await driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            page = await chromium.new_page()
            found = Browser(page, base, shots)
            yield found
            assert found.problems == [], found.problems
        finally:
            await chromium.close()


@pytest.fixture
async def browser(
    stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Browser]:
    async with open_browser(stack[0].control.url, shots_dir(tmp_path, request)) as found:
        yield found


async def test_nothing_is_visible_without_login(
    browser: Browser, stack: tuple[Stack, httpx.AsyncClient]
) -> None:
    await stack[1].post(
        "/tasks",
        json={"name": "secret-name", "runtime": "host", "command": ["true"], "start": True},
    )
    await browser.open("#tasks")
    page = browser.page
    await expect(page.locator("#login")).to_be_visible(timeout=SHOWN_MS)
    await expect(page.locator("#view")).to_be_hidden()
    await expect(page.locator("#nav")).to_be_hidden()
    assert "secret-name" not in await page.content()
    await browser.shot("login")

    # a refused token shows the login again, with why
    await page.fill("#token-input", "not-a-token")
    await page.click("#token-form button")
    await expect(page.locator("#login-error")).to_have_text(re.compile("refused"), timeout=SHOWN_MS)
    await expect(page.locator("#view")).to_be_hidden()


async def test_log_in_see_workers_and_drain_one(
    browser: Browser, stack: tuple[Stack, httpx.AsyncClient]
) -> None:
    await browser.login()
    page = browser.page
    await expect(page.locator(".cards")).to_contain_text("2 / 2", timeout=SHOWN_MS)
    await browser.shot("overview")
    await browser.go("#workers")
    rows = page.locator("#view tbody tr")
    await expect(rows).to_have_count(2, timeout=SHOWN_MS)
    await browser.shot("workers")
    first = rows.first
    worker_id = await first.get_attribute("data-id")
    await first.locator("button[data-action=drain]").click()
    await expect(first.locator(".st")).to_have_text("draining", timeout=SHOWN_MS)
    assert (await stack[1].get(f"/workers/{worker_id}")).json()["state"] == "draining"

    # changed elsewhere: the page follows the stream
    await stack[1].post(f"/workers/{worker_id}/undrain")
    row = page.locator(f'#view tr[data-id="{worker_id}"]')
    await expect(row.locator(".st")).to_have_text("online", timeout=SHOWN_MS)


async def test_submit_a_task_and_watch_it_complete(
    browser: Browser, stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    await browser.login()
    page = browser.page
    await page.evaluate("window.notReloaded = true")
    await browser.go("#tasks")
    await page.fill("#submit-name", "from-the-ui")
    await page.select_option("#submit-runtime", "host")
    # waits for the test's go-ahead, so the page must show it running, then completed
    wait = f"while [ ! -e {gate} ]; do sleep 0.05; done; echo released"
    await page.fill("#submit-command", json.dumps(["sh", "-c", wait]))
    await page.click("#submit-task")
    created = page.locator("#view span[data-task-id]")
    await expect(created).to_have_count(1, timeout=SHOWN_MS)
    task_id = await created.get_attribute("data-task-id")
    row = page.locator(f'#view tr[data-id="{task_id}"]')
    await expect(row).to_contain_text("from-the-ui", timeout=SHOWN_MS)
    await browser.shot("tasks")
    assert task_id is not None
    await browser.go(f"#task/{task_id}")
    await expect(page.locator("#task-state")).to_have_text("running", timeout=SHOWN_MS)
    gate.touch()
    await expect(page.locator("#task-state")).to_have_text("completed", timeout=SHOWN_MS)
    await expect(page.locator("#view pre").nth(1)).to_contain_text("released", timeout=SHOWN_MS)
    await browser.shot("task")
    assert await page.evaluate("window.notReloaded") is True
    # the overview's count by state is the API's (one GET /tasks/counts), this one included
    completed = (await stack[1].get("/tasks/counts")).json()["completed"]
    assert completed >= 1
    await browser.go("#overview")
    await expect(page.locator('.cards [data-state="completed"]')).to_have_text(
        f"{completed} completed", timeout=SHOWN_MS
    )


async def test_stop_a_running_task(
    browser: Browser, stack: tuple[Stack, httpx.AsyncClient]
) -> None:
    body = {"name": "long", "runtime": "host", "command": ["sleep", "60"], "start": True}
    task = (await stack[1].post("/tasks", json=body)).json()
    await browser.login()
    page = browser.page
    await browser.go(f"#task/{task['id']}")
    await expect(page.locator("#task-state")).to_have_text("running", timeout=SHOWN_MS)
    await page.get_by_role("button", name="stop").click()
    await expect(page.locator("#task-state")).to_have_text(
        re.compile("cancelled|failed"), timeout=SHOWN_MS
    )


async def test_a_workflow_dag_follows_its_tasks_live(
    browser: Browser, stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    gate = tmp_path / "release"
    wait = ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"]
    flow = {
        "name": "diamond",
        "tasks": [
            {"name": "fetch", "runtime": "host", "command": wait},
            {"name": "left", "runtime": "host", "command": ["true"], "depends_on": ["fetch"]},
            {"name": "right", "runtime": "host", "command": ["true"], "depends_on": ["fetch"]},
            {
                "name": "join",
                "runtime": "host",
                "command": ["true"],
                "depends_on": ["left", "right"],
            },
        ],
    }
    created = await stack[1].post("/workflows", json=flow)
    assert created.status_code == 201, created.text
    run = created.json()
    await browser.login()
    page = browser.page
    await browser.go("#workflows")
    await expect(page.locator(f'#view tr[data-id="{run["id"]}"]')).to_be_visible(timeout=SHOWN_MS)
    await browser.shot("workflows")
    await browser.go(f"#run/{run['id']}")
    nodes = page.locator("svg.dag g.node")
    await expect(nodes).to_have_count(4, timeout=SHOWN_MS)
    fetch = page.locator(f'svg.dag g[data-id="{run["names"]["fetch"]}"]')
    await expect(fetch).to_have_attribute("data-state", "running", timeout=SHOWN_MS)
    join = page.locator(f'svg.dag g[data-id="{run["names"]["join"]}"]')
    assert await join.get_attribute("data-state") == "pending"
    await browser.shot("workflow")
    gate.touch()
    await expect(join).to_have_attribute("data-state", "completed", timeout=SHOWN_MS)
    await expect(page.locator("#run-state")).to_have_text("completed", timeout=SHOWN_MS)
    await browser.shot("workflow-completed")


async def test_password_login_and_the_other_pages(
    browser: Browser, stack: tuple[Stack, httpx.AsyncClient]
) -> None:
    http = stack[1]
    user = {"name": "ada", "password": "correct-horse", "role": "operator"}
    assert (await http.post("/users", json=user)).status_code == 201
    cron = {"name": "nightly", "runtime": "host", "command": ["true"], "schedule": "0 3 * * *"}
    assert (await http.post("/tasks", json=cron)).status_code == 201
    await browser.open()
    page = browser.page
    await page.fill("#user-input", "ada")
    await page.fill("#password-input", "correct-horse")
    await page.click("#password-form button")
    await expect(page.locator("#status")).to_have_text("live", timeout=SHOWN_MS)
    await browser.go("#schedules")
    await expect(page.locator("#view")).to_contain_text("nightly", timeout=SHOWN_MS)
    await browser.shot("schedules")
    for name in ("jobs", "applications"):
        await browser.go(f"#{name}")
        await expect(page.locator("#view h2").first).to_contain_text(
            name.capitalize(), timeout=SHOWN_MS
        )
        await browser.shot(name)
    # logging out forgets the token and hides everything again
    await page.click("#logout")
    await expect(page.locator("#view")).to_be_hidden()
    await page.reload()
    await expect(page.locator("#login")).to_be_visible(timeout=SHOWN_MS)


async def test_pause_a_schedule_retry_a_failed_task_and_filter_tasks_by_name(
    browser: Browser, stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    http = stack[1]
    cron = {"name": "hourly", "runtime": "host", "command": ["true"], "schedule": "0 * * * *"}
    schedule = (await http.post("/tasks", json=cron)).json()
    gate = tmp_path / "gate"
    flaky = {"name": "flaky", "runtime": "host", "command": ["test", "-e", str(gate)]}
    failed = (await http.post("/tasks", params={"wait": 30}, json={**flaky, "start": True})).json()
    assert failed["state"] == "failed", failed
    others = [{"name": f"other-{i}", "runtime": "host", "command": ["true"]} for i in range(3)]
    assert (await http.post("/tasks/batch", json={"tasks": others})).status_code == 201

    await browser.login()
    page = browser.page
    await browser.go("#schedules")
    row = page.locator(f'#view tr[data-id="{schedule["id"]}"]')
    await row.locator("button[data-action=pause]").click()
    await expect(row.locator(".st")).to_have_text("paused", timeout=SHOWN_MS)
    assert (await http.get(f"/schedules/{schedule['id']}")).json()["paused"] is True
    await browser.shot("schedule-paused")
    await row.locator("button[data-action=resume]").click()
    await expect(row.locator(".st")).to_have_text("active", timeout=SHOWN_MS)
    assert (await http.get(f"/schedules/{schedule['id']}")).json()["paused"] is False

    await browser.go(f"#task/{failed['id']}")
    await expect(page.locator("#task-state")).to_have_text("failed", timeout=SHOWN_MS)
    gate.touch()  # what failed it is fixed: the retry runs the same command and passes
    # The page renders again on every event of the stream: a click that lands as the
    # button is replaced is lost (seen once in a parallel run), so it is clicked again.
    for _ in range(10):
        await page.locator("button[data-action=retry]").click()
        try:
            await expect(page).not_to_have_url(re.compile(failed["id"]), timeout=SHOWN_MS // 10)
            break
        except AssertionError:
            continue
    await expect(page).not_to_have_url(re.compile(failed["id"]), timeout=SHOWN_MS)
    retry_id = page.url.rsplit("/", 1)[1]
    await expect(page.locator("#task-state")).to_have_text("completed", timeout=SHOWN_MS)
    await expect(page.locator(f'#view a[href="#task/{failed["id"]}"]')).to_be_visible()
    await browser.shot("task-retried")
    assert (await http.get(f"/tasks/{retry_id}")).json()["retry_of"] == failed["id"]

    await browser.go("#tasks")
    await expect(page.locator("#view tbody tr")).to_have_count(5, timeout=SHOWN_MS)
    await page.fill("#filter-name", "fla")
    # the server filters (the page asks for name=…), the page shows what it answers
    async with page.expect_request(lambda r: "/api/v1/tasks?" in r.url and "name=fla" in r.url):
        await page.click("#filter-apply")
    rows = page.locator("#view tbody tr")
    await expect(rows).to_have_count(2, timeout=SHOWN_MS)
    assert {await r.get_attribute("data-id") for r in await rows.all()} == {
        failed["id"],
        retry_id,
    }
    await browser.shot("tasks-filtered")
    await page.select_option("#filter-state", "failed")
    await page.click("#filter-apply")
    await expect(rows).to_have_count(1, timeout=SHOWN_MS)
    assert await rows.first.get_attribute("data-id") == failed["id"]


FL_EXAMPLE = Path(__file__).parents[2] / "examples" / "fl" / "digits.yaml"


async def test_the_fl_page_charts_accuracy_and_loss_per_round_live(
    browser: Browser, stack: tuple[Stack, httpx.AsyncClient]
) -> None:
    pytest.importorskip("sklearn")
    http = stack[1]
    spec = safeyaml.load(FL_EXAMPLE.read_text())
    # this interpreter (the test venv's), this tree's code, on the stack's two workers
    spec["workload"]["command"] = [sys.executable, "-m", "edgeplane.fl.client"]
    src = str(Path(__file__).parents[2] / "src")
    spec["workload"]["env"] = {"PYTHONPATH": src, "PATH": os.environ.get("PATH", "")}
    spec.update(rounds=2, clients_per_round=2, min_clients=2)
    created = await http.post("/fl/experiments", json=spec)
    assert created.status_code == 201, created.text
    exp = created.json()
    # one no worker can train (no worker has the label): it stays in its first round
    idle = {**spec, "name": "idle", "select": {"labels": {"gpu": "none"}}}
    waiting = (await http.post("/fl/experiments", json=idle)).json()

    await browser.login()
    page = browser.page
    await browser.go("#fl")
    row = page.locator(f'#view tr[data-id="{waiting["id"]}"]')
    await expect(row.locator(".st")).to_have_text("running", timeout=SHOWN_MS)
    await expect(page.locator(f'#view tr[data-id="{exp["id"]}"]')).to_contain_text("digits")
    await browser.shot("fl")
    await browser.go(f"#fl/{exp['id']}")
    # the page reads the experiment again while it runs: the chart grows without a reload
    await page.evaluate("window.notReloaded = true")
    await expect(page.locator("#fl-state")).to_have_text("completed", timeout=120_000)
    accuracy = page.locator("svg.chart .accuracy circle")
    await expect(accuracy).to_have_count(2, timeout=SHOWN_MS)
    await expect(page.locator("svg.chart .loss circle")).to_have_count(2)
    done = (await http.get(f"/fl/experiments/{exp['id']}")).json()
    closed = [r for r in done["rounds"] if r["state"] == "closed"]
    shown = [float(v or 0) for v in await accuracy.evaluate_all(
        "(dots) => dots.map((d) => d.dataset.value)")]  # fmt: skip
    assert shown == [r["metrics"]["accuracy"] for r in closed]
    assert await page.evaluate("window.notReloaded") is True
    await browser.shot("fl-experiment")


@pytest.fixture
def chute_node(lab: procs.Lab) -> Iterator[tuple[procs.Api, Node]]:
    """A manager and a real worker ``n1`` serving chutes (runc, busybox), both online."""
    why = busybox_containers_unavailable()
    if why is not None:
        pytest.skip(why)
    with running_node(lab) as node:
        port = free_port()
        manager = lab.manager(port).start()
        api = lab.api(port)
        api.wait_healthy(manager)
        node.start()
        api.wait_workers(["n1"], watch=[manager, node.role])
        yield api, node


#: a line a tenth of a second, numbered
TICKER = "i=0; while true; do echo tick-$i; i=$((i+1)); usleep 100000; done"


@pytest.mark.mosquitto
@pytest.mark.timeout(240)
async def test_install_a_chute_from_the_store_follow_its_logs_and_stop_it(
    chute_node: tuple[procs.Api, Node], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    api, node = chute_node
    ticker = {
        **chute("ticker", command=["sh", "-c", TICKER]),
        "description": "counts",
        "monitoring": {"interval_s": 0.5, "history": 20},
    }
    published = api.http.post("/store/chutes", json=ticker)
    assert published.status_code == 201, published.text
    async with open_browser(api.url, shots_dir(tmp_path, request)) as browser:
        await browser.login(procs.TOKEN)
        page = browser.page
        await browser.go("#store")
        await expect(page.locator('#view tr[data-id="ticker"]')).to_contain_text(
            "counts", timeout=SHOWN_MS
        )
        await browser.shot("store")
        await page.click('#view a[href="#store/ticker"]')
        await expect(page.locator("#install-worker")).to_have_value("n1", timeout=SHOWN_MS)
        await page.click("#install")
        # the change's progress, from its stream, to its end
        await expect(page.locator("#install-change")).to_have_attribute(
            "data-state", "done", timeout=90_000
        )
        await browser.shot("store-installed")
        installed = api.http.get("/workers/n1/chutes/ticker").json()
        assert installed["state"] == "running" and installed["source"]["store"] == "ticker@1"

        await browser.go("#chutes")
        row = page.locator('#view tr[data-id="n1/ticker"]')
        await expect(row.locator(".st")).to_have_text("running", timeout=SHOWN_MS)
        await expect(row).to_contain_text("ticker@1")
        await browser.shot("chutes")

        await row.locator("a").click()
        logs = page.locator("#chute-logs")
        await expect(logs).to_contain_text("tick-", timeout=SHOWN_MS)
        first = await logs.text_content() or ""
        # live: lines keep coming over the stream, the page is not read again for them
        await expect(logs).not_to_have_text(first, timeout=SHOWN_MS)
        # its service's usage, charted from the manager's series (read again while shown)
        memory = page.locator('#metrics [data-metric="memory_mb"]')
        await expect(memory).to_have_count(1, timeout=SHOWN_MS)
        await expect(memory).to_contain_text("last", timeout=SHOWN_MS)
        await browser.shot("chute")
        await page.locator("button[data-action=stop]").first.click()
        await expect(page.locator("#chute-change")).to_have_attribute(
            "data-state", "done", timeout=60_000
        )
        await expect(page.locator("#chute-state")).to_have_text("stopped", timeout=SHOWN_MS)
        assert api.http.get("/workers/n1/chutes/ticker").json()["state"] == "stopped"

        # the worker gone: its chutes as last reported, marked stale
        await browser.go("#chutes")
        await expect(row.locator(".st")).to_have_text("stopped", timeout=SHOWN_MS)
        node.role.stop()
        await expect(page.locator("#view .stale")).to_contain_text("last contact", timeout=60_000)
        await expect(row.locator("button")).to_have_count(0)
        await browser.shot("chutes-stale")
