"""Which chute services the node has sampled (``Node._sample_usage``): exactly the
running ones, each as its container now."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from edgeplane.chutes.node import Node
from edgeplane.monitoring import Monitoring


class Watched:
    def __init__(self) -> None:
        self.now: dict[tuple[str, str], Monitoring] = {}
        self.calls: list[str] = []

    def watch_chute(
        self,
        chute: str,
        service: str,
        profile: Monitoring,
        sample: Callable[[], Awaitable[dict[str, float]]],
    ) -> None:
        self.now[(chute, service)] = profile
        self.calls.append(f"watch {chute}/{service}")

    def unwatch_chute(self, chute: str, service: str) -> None:
        del self.now[(chute, service)]
        self.calls.append(f"unwatch {chute}/{service}")


def test_running_services_are_watched_once_and_again_for_a_new_generation(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path, runc="/bin/false")
    usage = node.usage = Watched()
    fast, slow = Monitoring(interval_s=1, history=5), Monitoring(interval_s=60, history=5)
    node._sample_usage({("a", "web"): ("ch-a-web-1", fast), ("a", "db"): ("ch-a-db-1", fast)})
    node._sample_usage({("a", "web"): ("ch-a-web-1", fast), ("a", "db"): ("ch-a-db-1", fast)})
    assert sorted(usage.calls) == ["watch a/db", "watch a/web"]  # once, not every check
    # an update's new generation (with its own profile); db exited or its chute changes
    usage.calls.clear()
    node._sample_usage({("a", "web"): ("ch-a-web-2", slow)})
    assert usage.calls == ["unwatch a/db", "watch a/web"] and usage.now == {("a", "web"): slow}
    node._sample_usage({})  # the chute deleted, or the node closing
    assert usage.now == {}
