"""What a worker reports it holds: bounded, lenient, and kept by the manager for the
scheduler's soft preference."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgeplane.artifacts.blobs import BlobStore
from edgeplane.manager.registry import WorkerEntry
from edgeplane.model import Worker
from edgeplane.model.worker import Capabilities
from edgeplane.protocol.messages import HELD_ARTIFACTS, Alive, Hello

DIGESTS = [f"{i:064x}" for i in range(HELD_ARTIFACTS + 10)]


def test_reports_are_bounded_and_odd_entries_dropped_not_the_message() -> None:
    alive = Alive.model_validate({"artifacts": ["nope", 7, DIGESTS[0], DIGESTS[0], *DIGESTS]})
    assert alive.artifacts == DIGESTS[:HELD_ARTIFACTS]
    assert Alive.model_validate({"artifacts": "not a list"}).artifacts == []
    assert Alive().artifacts is None  # a member that does not say keeps what it said
    hello = Hello.model_validate(
        {"worker_id": "w", "session": "s", "capabilities": {}, "artifacts": ["A" * 64]}
    )
    assert hello.artifacts == []


def test_blob_store_lists_the_most_recently_used_first(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    blobs = [bytes([n]) * 10 for n in range(4)]
    digests = [hashlib.sha256(b).hexdigest() for b in blobs]
    for digest, data in zip(digests, blobs, strict=True):
        store.put(digest, data)
    assert store.open(digests[0]) == blobs[0]  # used again: now the most recent
    assert store.recent(3) == [digests[0], digests[3], digests[2]]


def test_a_new_report_rebuilds_the_view_and_the_same_one_keeps_it() -> None:
    caps = Capabilities.model_validate({"slots": 1, "cpus": 1, "memory_mb": 64})
    entry = WorkerEntry(worker=Worker(id="w", capabilities=caps))
    first = entry.view(0)
    assert first.artifacts == frozenset()
    entry.hold(DIGESTS[:2])
    second = entry.view(0)
    assert second.artifacts == frozenset(DIGESTS[:2])
    entry.hold(list(reversed(DIGESTS[:2])))
    assert entry.view(0) is second
