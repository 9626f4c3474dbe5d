"""A chute service's log is rotated at a bounded size, and ``logs -f`` (``Node.follow``)
keeps following across the rotations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeplane.chutes import manifest
from edgeplane.chutes.node import Node
from oci_fixtures import busybox_containers_unavailable, images_with_busybox

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
    ),
]

MAX = 16 << 10
#: about 10 KB/s of numbered lines
CHATTY = "i=0; while true; do echo line-$i; i=$((i+1)); usleep 1000; done"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    images = images_with_busybox(tmp_path / "images")
    found = Node(
        tmp_path / "worker", images, grace_s=0.3, settle_s=0.3, log_max_bytes=MAX, log_check_s=0.1
    )
    await found.start()
    try:
        yield found
    finally:
        for name in found.names():
            await asyncio.wait_for(found.changes.wait((await found.act(name, "delete")).id), 30)
        await found.close()


async def test_logs_are_rotated_and_followed_across_rotations(node: Node) -> None:
    chute = manifest.parse(
        {
            "name": "chatty",
            "version": "1",
            "services": [{"name": "talk", "image": "busybox", "command": ["sh", "-c", CHATTY]}],
        }
    )
    change = await asyncio.wait_for(node.changes.wait((await node.install(chute)).id), 30)
    assert change.state == "done", change
    path = node.log_file("chatty", None)

    numbers: list[int] = []
    rotations = 0
    copy = path.with_name(path.name + ".1")
    seen_copy: int | None = None
    text = ""
    async with asyncio.timeout(60):
        async for chunk in node.follow("chatty"):
            text += chunk
            *lines, text = text.split("\n")
            numbers += [int(line[5:]) for line in lines if line.startswith("line-")]
            if copy.exists() and copy.stat().st_ino != seen_copy:
                seen_copy = copy.stat().st_ino
                rotations += 1
            # both files stay bounded (a check every 0.1 s at ~10 KB/s: < 4 KB over)
            assert path.stat().st_size < MAX + (8 << 10)
            if rotations >= 3:
                break
    assert copy.stat().st_size < MAX + (8 << 10)
    # the follower went on across three rotations, in order, with (at most) the few lines
    # written between a copy and its truncate missing
    assert numbers == sorted(numbers)
    assert numbers[-1] - numbers[0] > 2 * MAX // 10
    assert len(numbers) > 0.9 * (numbers[-1] - numbers[0] + 1)
