"""MQTT topic names (DESIGN §4). The only place that spells a topic."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    """Topics of one cluster under one domain."""

    domain: str = "edgeplane"
    cluster: str = "local"

    def _worker(self, worker_id: str, leaf: str) -> str:
        return f"{self.domain}/{self.cluster}/workers/{worker_id}/{leaf}"

    def hello(self, worker_id: str) -> str:
        return self._worker(worker_id, "hello")

    def welcome(self, worker_id: str) -> str:
        return self._worker(worker_id, "welcome")

    def alive(self, worker_id: str) -> str:
        return self._worker(worker_id, "alive")

    def cmd(self, worker_id: str) -> str:
        return self._worker(worker_id, "cmd")

    def events(self, worker_id: str) -> str:
        return self._worker(worker_id, "events")

    def metrics(self, worker_id: str) -> str:
        return self._worker(worker_id, "metrics")

    def all_workers(self, leaf: str) -> str:
        """Wildcard subscription for one leaf of every worker."""
        return self._worker("+", leaf)

    def worker_of(self, topic: str) -> tuple[str, str] | None:
        """``(worker_id, leaf)`` of a worker topic of this cluster, else None."""
        parts = topic.split("/")
        if (
            len(parts) == 5
            and parts[0] == self.domain
            and parts[1] == self.cluster
            and parts[2] == "workers"
        ):
            return parts[3], parts[4]
        return None
