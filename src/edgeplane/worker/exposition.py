"""Prometheus text of one worker (``worker --metrics-listen HOST:PORT``; docs/metrics.md).

Served by prometheus_client's own HTTP server in a thread: reading the agent's counters
from there is safe (each read is one attribute of a plain int or list), and the worker's
event loop does nothing for a scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from edgeplane.worker.agent import WorkerAgent


class WorkerCollector(Collector):
    def __init__(self, agent: WorkerAgent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self._agent
        stats = agent.stats
        yield CounterMetricFamily(
            "edgeplane_worker_tasks_started", "Attempts started", value=stats.started
        )
        yield CounterMetricFamily(
            "edgeplane_worker_tasks_finished", "Attempts that ended", value=stats.finished
        )
        yield GaugeMetricFamily(
            "edgeplane_worker_tasks_running", "Attempts running now", value=agent.running
        )
        yield GaugeMetricFamily("edgeplane_worker_slots", "Attempts run at once", value=agent.slots)
        yield CounterMetricFamily(
            "edgeplane_worker_bad_messages",
            "Commands refused: malformed, unknown or without a valid MAC",
            value=stats.bad_messages,
        )
        yield CounterMetricFamily(
            "edgeplane_worker_commands_unsigned",
            "Commands refused for a missing or wrong MAC (also in bad_messages)",
            value=stats.unsigned,
        )
        yield CounterMetricFamily(
            "edgeplane_worker_commands_foreign",
            "Task starts meant for another session of this worker id (left alone)",
            value=stats.foreign_commands,
        )
        yield CounterMetricFamily(
            "edgeplane_worker_commands_duplicate",
            "Redelivered task starts recognised and not run again",
            value=stats.duplicates,
        )
        yield CounterMetricFamily(
            "edgeplane_worker_metric_batches",
            "Batches of usage samples published",
            value=agent.monitor.sent,
        )
        if agent.tracer is not None:  # tracing on (docs/metrics.md, "Traces")
            yield CounterMetricFamily(
                "edgeplane_worker_trace_contexts_invalid",
                "Received traceparents that were not well-formed (ignored)",
                value=agent.tracer.invalid,
            )
        link = agent.link.stats
        yield CounterMetricFamily(
            "edgeplane_worker_mqtt_messages_received", "MQTT messages received", value=link.received
        )
        yield CounterMetricFamily(
            "edgeplane_worker_mqtt_messages_published",
            "MQTT messages published",
            value=link.published,
        )
        family = HistogramMetricFamily(
            "edgeplane_runtime_start_seconds",
            "Seconds a runtime took to start an attempt",
            labels=["runtime"],
        )
        for runtime, histogram in sorted(dict(stats.start_latency).items()):
            family.add_metric([runtime], histogram.buckets(), histogram.sum)
        yield family


def serve(agent: WorkerAgent, host: str, port: int) -> Any:
    """Start serving; returns the server (``shutdown()`` stops it)."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(agent))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server
