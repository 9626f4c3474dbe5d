"""Brokers edgeplane runs on, started for a benchmark or a test: each launcher starts its
broker (one node or a cluster) in a directory of its own, on free ports, and yields an
MQTT URL that every role's ``--broker`` / ``--manager`` / ``--root`` takes; everything it
started is stopped when the ``with`` block ends, whatever happened inside.

The broker matrix (tests/brokers/test_matrix.py) runs the protocol on every launcher here,
and ``bench.suite --brokers`` measures edgeplane on each of them in one run. The configs
the launchers use are the ones docs/brokers.md shows (deploy/brokers/).
"""

from __future__ import annotations

from bench.brokers import mosquitto, nats, rabbitmq
from bench.brokers.base import BrokerUnavailable, Launcher

__all__ = ["LAUNCHERS", "BrokerUnavailable", "Launcher"]

LAUNCHERS: dict[str, Launcher] = {
    "mosquitto": mosquitto.launch,
    "nats": nats.launch,
    "rabbitmq": rabbitmq.launch,
}
