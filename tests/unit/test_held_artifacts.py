"""What a worker reports it holds (modules and container images): bounded, lenient, and
kept by the manager for the scheduler's soft preference, which a container task naming a
pinned ``oci://`` image takes part in."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from edgeplane.artifacts.blobs import BlobStore
from edgeplane.manager.queue import artifact_of, demand_of
from edgeplane.manager.registry import WorkerEntry
from edgeplane.model import Task, Worker
from edgeplane.model.worker import Capabilities
from edgeplane.protocol.messages import HELD_ARTIFACTS, Alive, Hello
from edgeplane.runtimes.pull import ImagePuller
from edgeplane.worker.held import report

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


HEXES = st.text("0123456789abcdef", min_size=64, max_size=64)
DISTINCT = st.lists(HEXES, unique=True, max_size=40)


@given(DISTINCT, DISTINCT, st.integers(0, 40))
def test_property_a_report_shares_its_room_between_modules_and_images(
    modules: list[str], images: list[str], limit: int
) -> None:
    images = [i for i in images if i not in modules]  # (different content, other digests)
    found = report(modules, images, limit)
    assert len(found) == min(limit, len(modules) + len(images))
    taken_images = [d for d in found if d in images]
    taken_modules = [d for d in found if d in modules]
    # the most recent of each kind, in their order
    assert taken_images == images[: len(taken_images)]
    assert taken_modules == modules[: len(taken_modules)]
    # each kind gets half the room when it has that much; the other takes what is left
    assert len(taken_images) >= min(len(images), limit // 2)
    assert len(taken_modules) >= min(len(modules), limit - limit // 2)


REF = "oci://registry.test:5000/demo/box"


@given(HEXES, st.sampled_from(["", ":1"]))
def test_property_a_container_task_pinned_to_a_digest_prefers_its_holders(
    hexdigest: str, tag: str
) -> None:
    image = f"{REF}{tag}@sha256:{hexdigest}"
    task = Task(id="t", runtime="container", image=image)
    assert artifact_of(task) == hexdigest
    assert demand_of(task).artifact == hexdigest


def test_no_preference_for_a_tag_not_pinned_or_an_image_of_the_image_dir() -> None:
    for image in (f"{REF}:1", REF, "busybox:1", "oci://bad ref", None):
        assert artifact_of(Task(id="t", runtime="container", image=image)) is None
    # a wasm task's is its module's sha256, whatever names its image
    wasm = Task(id="t", runtime="wasm", artifact=DIGESTS[0], image_url=f"{REF}@sha256:{DIGESTS[1]}")
    assert artifact_of(wasm) == DIGESTS[0]
    # a host task names no artifact
    assert artifact_of(Task(id="t", runtime="host", image=f"{REF}@sha256:{DIGESTS[1]}")) is None


def test_the_image_puller_lists_the_layouts_used_most_recently(tmp_path: Path) -> None:
    directory = tmp_path / ".oci"
    for n, name in enumerate(DIGESTS[:4]):
        (directory / name).mkdir(parents=True)
        os.utime(directory / name, ns=(n * 10**9, n * 10**9))
    (directory / f".{DIGESTS[5]}-tmp").mkdir()  # a pull in progress: not held
    (directory / "notes").mkdir()
    puller = ImagePuller(directory)
    assert puller.recent(3) == [DIGESTS[3], DIGESTS[2], DIGESTS[1]]  # by modification time

    # a task uses one (its layout held: nothing is pulled): it becomes the most recent,
    # and a restarted worker finds the same order
    asyncio.run(puller.layout_for(f"{REF}@sha256:{DIGESTS[0]}"))
    assert puller.recent(2) == [DIGESTS[0], DIGESTS[3]]
    assert ImagePuller(directory).recent(2) == [DIGESTS[0], DIGESTS[3]]

    # one removed by hand is not reported any more
    (directory / DIGESTS[3]).rmdir()
    assert puller.recent(16) == [DIGESTS[0], DIGESTS[2], DIGESTS[1]]
