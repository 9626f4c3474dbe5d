"""The journal's watchers (manager/changes.py): fan-out, and a slow watcher dropped."""

from __future__ import annotations

from edgeplane.manager.changes import QUEUE_ROUNDS, Changes


async def test_every_watcher_gets_every_round() -> None:
    changes = Changes()
    assert not changes  # nobody watching: the journal skips building anything
    one, two = changes.watch(), changes.watch()
    changes.publish([("task", "t1", object())])
    changes.publish([])  # an empty round is not sent
    first, second = await one.next(), await two.next()
    assert first is second and first is not None
    assert first.changes[0][1] == "t1"
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


def test_the_stream_leaves_out_what_the_caller_may_not_see() -> None:
    from edgeplane.api.events import frames
    from edgeplane.model import Task
    from edgeplane.security.projects import visible
    from edgeplane.store import TokenRecord

    ours = Task(id="t1", project="ours", state="running", stdout="lots of output")
    theirs = Task(id="t2", project="theirs", state="running")
    vera = TokenRecord("k", "vera", "viewer", "hash", 0.0, projects=("ours",))
    changes = [("task", "t1", ours), ("task", "t2", theirs), ("task", "t3", None)]
    sent = frames(changes, visible(vera))
    assert b'"id":"t1"' in sent and b'"t2"' not in sent
    assert b"lots of output" not in sent  # output stays behind GET /tasks/{id}/logs
    assert b"deleted" not in sent  # a deletion names no project
    admin = TokenRecord("a", "root", "admin", "hash", 0.0)
    sent = frames(changes, visible(admin))
    assert b'"t2"' in sent
    assert b'event: deleted\ndata: {"kind":"task","id":"t3"}' in sent


async def test_closing_ends_every_watch_without_an_overflow() -> None:
    changes = Changes()
    watcher = changes.watch()
    changes.publish([("task", "t1", None)])
    changes.close()
    assert await watcher.next() is None and not watcher.dropped
    assert not changes and changes.dropped == 0


async def test_a_round_is_encoded_once_per_audience() -> None:
    """Every stream gets the same round; the first of an audience (the projects its
    caller sees) encodes it, the others reuse that, and another audience encodes its own."""
    changes = Changes()
    watchers = [changes.watch() for _ in range(3)]
    changes.publish([("task", "t1", None)])
    rounds = [await w.next() for w in watchers]
    made: list[object] = []

    def make(audience: object) -> bytes:
        made.append(audience)
        return repr(audience).encode()

    assert all(r is rounds[0] for r in rounds)
    encoded = [r.once(None, lambda: make(None)) for r in rounds if r is not None]
    assert encoded == [b"None"] * 3 and made == [None]
    assert rounds[0] is not None
    assert rounds[0].once(("ours",), lambda: make(("ours",))) == b"('ours',)"
    assert made == [None, ("ours",)]
