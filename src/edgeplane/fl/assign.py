"""What a long-lived client (``client_tasks: persistent``) is handed: the round attempt
it is selected for, each at most once, in order.

Pure. The coordinator keeps one :class:`Handout` per running experiment, made from the
experiment as last stored (so nothing is handed out that a restart would not find), and
each client asks with the last ``(round, attempt)`` it was given (its cursor):
:func:`for_client` says what it gets now, or None (it waits for the next change).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: a client's cursor: the last (round, attempt) it was given; (0, 0) before any
Cursor = tuple[int, int]


@dataclass(frozen=True)
class Handout:
    """An experiment's state and its open round's attempt (``round`` 0: none open)."""

    state: str
    round: int = 0
    attempt: int = 0
    #: the round's selected workers, in its shard order
    clients: tuple[str, ...] = ()
    #: each selected worker's client task: only that task is handed the round
    tasks: Mapping[str, str] = field(default_factory=dict)
    model_version: int = 0


@dataclass(frozen=True)
class Work:
    """One round attempt for one client: what it trains from and on."""

    round: int
    attempt: int
    model_version: int
    #: the client's shard: ``index`` of ``count`` (docs/fl.md; the same while the round's
    #: selection is, so a client keeps the shard it has)
    index: int
    count: int


def for_client(handout: Handout, worker: str, task: str, after: Cursor) -> Work | str | None:
    """What ``task`` on ``worker``, which was last given ``after``, gets now: Work; the
    experiment's final state (``completed``, ``failed``, ``stopped``): the client ends;
    None: nothing yet."""
    if handout.state != "running":
        return handout.state
    if handout.round < 1 or (handout.round, handout.attempt) <= after:
        return None
    if handout.tasks.get(worker) != task or worker not in handout.clients:
        return None
    return Work(
        round=handout.round,
        attempt=handout.attempt,
        model_version=handout.model_version,
        index=handout.clients.index(worker),
        count=len(handout.clients),
    )
