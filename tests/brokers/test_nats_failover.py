"""A clustered broker loses the node everyone is on: edgeplane goes on on the others.

A manager and two workers (real processes) are given the 3 NATS nodes' URLs
(``mqtt://a,mqtt://b,mqtt://c``) and all dial the first. It is killed with SIGKILL: each
link moves on to the next node that answers (docs/brokers.md, "Several nodes"), and
tasks submitted afterwards run, each exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bench.brokers import BrokerUnavailable
from bench.brokers.nats import NatsCluster, cluster

from edgeplane.config import Settings
from faults.procs import Lab, check_exactly_once, check_lines, host_tasks, wait_until

pytestmark = [pytest.mark.timeout(180)]

DEFAULT_HEARTBEAT_S = Settings.model_fields["heartbeat_s"].default


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsCluster]:
    """A cluster of the test's own: the test kills one of its nodes."""
    try:
        with cluster(tmp_path / "nats") as nodes:
            yield nodes
    except BrokerUnavailable as missing:
        pytest.skip(str(missing))


def test_node_killed(lab: Lab, nats: NatsCluster) -> None:
    lab.external_broker = nats.url
    # NATS answers no CONNECT for ~8 s here after a node dies (its JetStream electing new
    # leaders for the MQTT streams): the default heartbeat (5 s, 3 missed) forgives that,
    # the lab's 0.5 s beats would not (docs/brokers.md)
    lab.heartbeat_s = DEFAULT_HEARTBEAT_S
    manager, workers, api = lab.manager_and_workers()
    first = nats.nodes[0]
    # the manager and both workers are on the first node (every list starts with it)
    wait_until(lambda: (first.clients() or 0) >= 3, "3 clients on the first node")
    out = lab.root / "out.txt"
    before = api.submit(host_tasks(["before"], out))
    api.wait_ended(1, watch=[manager, *workers])

    first.kill()

    names = [f"after{n}" for n in range(10)]
    after = api.submit(host_tasks(names, out))
    api.wait_ended(1 + len(names), watch=[manager, *workers], timeout=120)
    expected: dict[str, Any] = {
        name: {"stdout": f"{name}\n", "exit_code": 0} for name in ["before", *names]
    }
    check_exactly_once(api.tasks(), [*before, *after], expected)
    check_lines(out, ["before", *names])
    assert api.online_workers() >= {"w1", "w2"}
