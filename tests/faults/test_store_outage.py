"""The store failing for 10 s under load: PostgreSQL reached through a proxy that the test
cuts (every connection dropped, new ones refused). Meanwhile the API answers 503
problem+json and /healthz says the store is down; afterwards work continues without a
restart, every accepted task ends exactly once, and the audit records of the refused calls
are written."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from faults.procs import Lab, check_exactly_once, check_lines, host_tasks, wait_until
from faults.proxy import TcpProxy

pytestmark = [pytest.mark.mosquitto, pytest.mark.postgres, pytest.mark.timeout(120)]

#: How long the store stays unreachable (the issue's 10 s): the fault's length.
OUTAGE_S = 10.0
BEFORE, DURING, AFTER = 300, 50, 100


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[TcpProxy]:
    server = urlsplit(postgres_url)
    proxy = TcpProxy(server.hostname or "127.0.0.1", server.port or 5432).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def store_url(postgres_url: str, proxy: TcpProxy) -> str:
    """The test's schema, reached through the proxy."""
    parts = urlsplit(postgres_url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))


def test_store_down_for_10_s_under_load(lab: Lab, proxy: TcpProxy, store_url: str) -> None:
    manager, workers, api = lab.manager_and_workers()
    watch = [manager, *workers]
    out = lab.root / "out.txt"
    first = [f"a{n:03d}" for n in range(BEFORE)]
    accepted = api.submit(host_tasks(first, out, sleep_s=0.05))
    api.wait_ended(BEFORE // 5, watch=watch)

    proxy.cut()
    cut_at = time.monotonic()
    down = wait_until(
        lambda: (h := api.health()) and h[0] == 503 and h[1]["store"] is False and h[1],
        "/healthz to say the store is down",
        watch=watch,
    )
    assert down["status"] == "unavailable" and down["broker"] is True, down
    # A change asked for meanwhile is refused at once, and says why.
    refused = api.http.post(
        "/tasks/batch",
        json={"tasks": host_tasks([f"x{n}" for n in range(DURING)], out)},
        headers={"X-Request-ID": "refused-in-outage"},
    )
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["status"] == 503
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut_at)))
    proxy.restore()

    wait_until(lambda: (api.health() or (0,))[0] == 200, "the store to be back", watch=watch)
    second = [f"b{n:03d}" for n in range(AFTER)]
    accepted += api.submit(host_tasks(second, out))
    api.wait_ended(BEFORE + AFTER, watch=watch)

    names = first + second
    expected = {name: {"stdout": f"{name}\n", "exit_code": 0} for name in names}
    check_exactly_once(api.tasks(), accepted, expected)
    check_lines(out, names)  # and none of the refused batch ran
    assert api.metric("edgeplane_workers_lost_total") == 0
    # the refused call's audit record was kept in memory and written once the store was back
    log = api.http.get("/audit", params={"method": "POST", "limit": 1000}).json()["items"]
    (kept,) = [r for r in log if r["request_id"] == "refused-in-outage"]
    assert (kept["route"], kept["status"]) == ("/api/v1/tasks/batch", 503)
    assert api.metric("edgeplane_audit_dropped_total") == 0
