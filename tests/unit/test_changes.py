"""The journal's watchers (manager/changes.py): fan-out, and a slow watcher dropped."""

from __future__ import annotations

from edgeplane.manager.changes import QUEUE_ROUNDS, Changes


async def test_every_watcher_gets_every_round() -> None:
    changes = Changes()
    assert not changes  # nobody watching: the journal skips building anything
    one, two = changes.watch(), changes.watch()
    changes.publish([("task", "t1", object())])
    changes.publish([])  # an empty round is not sent
    assert (await one.next()) == (await two.next())
    assert one.queue.empty() and two.queue.empty()
    changes.unwatch(one)
    assert len(changes) == 1


async def test_a_watcher_that_falls_behind_is_dropped_not_waited_for() -> None:
    changes = Changes()
    slow, quick = changes.watch(), changes.watch()
    for n in range(QUEUE_ROUNDS + 1):
        changes.publish([("task", f"t{n}", None)])
        await quick.next()
    assert slow.dropped and not quick.dropped
    assert changes.dropped == 1 and len(changes) == 1
    assert await slow.next() is None  # its stream ends; the page reconnects and reloads
