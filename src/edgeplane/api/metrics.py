"""Prometheus exposition of the manager's counters and gauges (no token needed)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgeplane.manager import Manager
from edgeplane.manager.uplink import Uplink


class ManagerCollector(Collector):
    def __init__(
        self,
        manager: Manager,
        uplink: Uplink | None = None,
        fl_mqtt: Mapping[str, int] | None = None,
    ) -> None:
        """``fl_mqtt``: the coordinator's MQTT updates by outcome (None: no coordinator)."""
        self._manager = manager
        self._uplink = uplink
        self._fl_mqtt = fl_mqtt

    def collect(self) -> Iterator[Metric]:
        m = self._manager
        yield CounterMetricFamily(
            "edgeplane_tasks_dispatched", "Task attempts sent to workers", value=m.stats.dispatched
        )
        yield GaugeMetricFamily(
            "edgeplane_held_answers", "Answers held open now (long polls)", value=m.holds.held
        )
        yield CounterMetricFamily(
            "edgeplane_held_answers_refused",
            "Long polls refused (503) past max_held_answers",
            value=m.holds.refused,
        )
        yield CounterMetricFamily(
            "edgeplane_task_events", "Task events received from workers", value=m.stats.events
        )
        yield CounterMetricFamily(
            "edgeplane_bad_messages",
            "Malformed or unknown MQTT messages",
            value=m.stats.bad_messages,
        )
        yield CounterMetricFamily(
            "edgeplane_foreign_events",
            "Task events refused: the task is another member's",
            value=m.stats.foreign_events,
        )
        yield CounterMetricFamily(
            "edgeplane_chute_events",
            "Chute events applied, from the workers' nodes",
            value=m.stats.chute_events,
        )
        yield CounterMetricFamily(
            "edgeplane_foreign_chute_events",
            "Chute events refused: they named another worker than the one that sent them",
            value=m.stats.foreign_chute_events,
        )
        yield CounterMetricFamily(
            "edgeplane_workers_lost", "Workers that went offline", value=m.stats.lost_workers
        )
        yield CounterMetricFamily(
            "edgeplane_audit_written", "Audit records written", value=m.audit.stats.written
        )
        yield CounterMetricFamily(
            "edgeplane_audit_dropped",
            "Audit records dropped: kept in memory past the bound while the store was down",
            value=m.audit.stats.dropped,
        )
        yield CounterMetricFamily(
            "edgeplane_members_refused",
            "Processes refused for claiming the id of a live worker (or cluster)",
            value=m.stats.refused_members,
        )
        if m.tracer is not None:  # tracing on (docs/metrics.md, "Traces")
            yield CounterMetricFamily(
                "edgeplane_trace_contexts_invalid",
                "Received traceparents that were not well-formed (ignored)",
                value=m.tracer.invalid,
            )
        if self._uplink is not None:  # a cluster's manager with a root
            yield CounterMetricFamily(
                "edgeplane_uplink_bad_messages",
                "Messages from the root refused: malformed, unexpected or without a valid MAC",
                value=self._uplink.bad_messages,
            )
            yield CounterMetricFamily(
                "edgeplane_uplink_unsigned",
                "Commands from the root refused for want of a valid MAC",
                value=self._uplink.unsigned,
            )
        proxy = m.proxy_stats
        if proxy is not None:  # a cluster's leader serves its workers' artifacts
            yield CounterMetricFamily(
                "edgeplane_proxy_requests", "Artifact requests from workers", value=proxy.requests
            )
            yield CounterMetricFamily(
                "edgeplane_proxy_chunks_sent", "Artifact chunks sent to workers", value=proxy.chunks
            )
            yield CounterMetricFamily(
                "edgeplane_proxy_bytes_sent", "Artifact chunk bytes sent", value=proxy.bytes
            )
            refused = CounterMetricFamily(
                "edgeplane_proxy_refused", "Artifact requests not served, by why", labels=["why"]
            )
            refused.add_metric(["not_found"], proxy.not_found)
            refused.add_metric(["too_large"], proxy.too_large)
            refused.add_metric(["coalesced"], proxy.coalesced)
            refused.add_metric(["bad_request"], proxy.bad_requests)
            yield refused
        if self._fl_mqtt is not None:
            fl = CounterMetricFamily(
                "edgeplane_fl_mqtt_updates",
                "Federated learning updates that came over MQTT, by outcome: accepted, or "
                "why they were refused",
                labels=["outcome"],
            )
            for outcome, count in sorted(dict(self._fl_mqtt).items()):
                fl.add_metric([outcome], count)
            yield fl
        finished = CounterMetricFamily(
            "edgeplane_tasks_finished", "Tasks that ended, by final state", labels=["state"]
        )
        for state, count in sorted(m.stats.finished.items()):
            finished.add_metric([state], count)
        yield finished
        tasks = GaugeMetricFamily("edgeplane_tasks", "Unfinished tasks in memory", labels=["state"])
        for state, count in sorted(m.task_counts().items()):
            tasks.add_metric([state], count)
        yield tasks
        workers = GaugeMetricFamily("edgeplane_workers", "Known workers", labels=["state"])
        by_state = Counter(w.state for w in m.workers())
        for state, count in sorted(by_state.items()):
            workers.add_metric([state], count)
        yield workers
        yield GaugeMetricFamily(
            "edgeplane_workers_online",
            "Members (workers; at a root, clusters) online now",
            value=by_state.get("online", 0),
        )
        yield GaugeMetricFamily(
            "edgeplane_queue_depth",
            "Tasks ready to run that wait for a worker",
            value=len(m.dispatcher.core.pending),
        )
        yield m.stats.dispatch_latency.family(
            "edgeplane_task_dispatch_seconds",
            "Seconds from a task's being ready (created, or its retry due) to its task.start",
        )
        yield m.stats.end_to_end.family(
            "edgeplane_task_end_to_end_seconds",
            "Seconds from a task's creation to its end (tasks ended since the manager started)",
        )
        link = m.link.stats
        yield CounterMetricFamily(
            "edgeplane_mqtt_messages_received",
            "MQTT messages received by the manager",
            value=link.received,
        )
        yield CounterMetricFamily(
            "edgeplane_mqtt_messages_published",
            "MQTT messages the manager handed to its broker link",
            value=link.published,
        )
        yield CounterMetricFamily(
            "edgeplane_mqtt_messages_bad",
            "MQTT messages refused: malformed, unknown or unexpected",
            value=m.stats.bad_messages,
        )
        yield CounterMetricFamily(
            "edgeplane_mqtt_reconnects", "Reconnections to the broker", value=link.reconnects
        )
        journal = m.journal
        yield journal.stats.commit_latency.family(
            "edgeplane_store_commit_seconds",
            "Seconds each journal round took to write its changes to the store",
        )
        yield GaugeMetricFamily(
            "edgeplane_journal_queue",
            "Changes waiting for the journal's next round",
            value=journal.queued,
        )
        yield m.loop_lag.histogram.family(
            "edgeplane_event_loop_lag_seconds",
            "How late the control plane's event loop woke a 0.5 s sleeper",
        )
        yield CounterMetricFamily(
            "edgeplane_metric_samples",
            "Usage samples received on the metrics leaf",
            value=m.series.samples,
        )
