"""How long a lost worker's tasks wait for it to come back before they are placed again.

Host and container tasks outlive their worker's process: a worker restarted after a crash
re-attaches to them and reports them in its hello (``worker/recovery.py``), so the manager
leaves them with it. Re-placing them at the first sign of loss would run them twice.
After a worker's last will or missed heartbeats, those tasks are therefore held for a grace
period (``lost_grace_s``, by default the liveness window, ``heartbeat_s * missed_beats``);
only then are they lost (retried elsewhere, or failed ``worker_lost``). A wasm call dies
with its worker's process, and a worker that left on purpose stopped its tasks: those are
lost at once. What the worker reports once it is back settles the rest (the manager's
hello handling: held tasks it does not report are lost, tasks it runs that are no longer
its own are stopped).

Pure bookkeeping on the manager's monotonic clock; the manager calls it from its
offline path and its liveness sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from edgeplane.config import Settings
from edgeplane.model import Task

#: Runtimes whose attempts outlive the worker process (``Runtime.recoverable``; the
#: control plane does not import the runtimes, a unit test keeps the two in step).
REATTACHABLE = frozenset({"host", "container"})


def grace_s(settings: Settings) -> float:
    """The configured grace period, or the liveness window when none is set."""
    if settings.lost_grace_s is not None:
        return settings.lost_grace_s
    return settings.heartbeat_s * settings.missed_beats


@dataclass
class Held:
    """A lost member whose re-attachable tasks wait for it."""

    #: when the member was lost (the manager's monotonic clock)
    since: float
    reason: str


@dataclass
class Grace:
    """Lost members whose tasks are held, by member id.

    ``hold_all`` is True at the root: a cluster whose manager died or lost the network
    still has its workers running every kind of task (wasm included), and its manager
    reports them when it is back; re-placing them at once ran them twice, or failed
    them at the root while they completed in the cluster. A period of 0 holds nothing.
    """

    period_s: float
    hold_all: bool = False
    #: what a member is called in reasons ("worker", "cluster")
    member: str = "worker"
    _held: dict[str, Held] = field(default_factory=dict)

    def lose_now(
        self,
        member_id: str,
        task_ids: Iterable[str],
        tasks: Mapping[str, Task],
        *,
        reason: str,
        now: float,
        leaving: bool = False,
    ) -> list[str]:
        """``member_id`` went offline holding ``task_ids``: the ids to lose at once. The
        rest wait ``period_s`` from ``now`` (see :meth:`expired`)."""
        ids = list(task_ids)
        if leaving or self.period_s <= 0:
            self._held.pop(member_id, None)
            return ids
        if self.hold_all:
            lost = [tid for tid in ids if tid not in tasks]
        else:
            lost = [tid for tid in ids if not reattachable(tasks.get(tid))]
        self._held[member_id] = Held(since=now, reason=reason)
        return lost

    def expired(
        self,
        members: Iterable[tuple[str, bool, bool]],
        now: float,
        heard: Callable[[float], float] | None = None,
    ) -> dict[str, str]:
        """Members whose grace is over, with the reason to lose their tasks with.

        ``heard(since)`` says how many seconds since ``since`` the manager could hear its
        members (``Liveness.silence``): time its own link was down or its loop stalled
        does not use up a grace period. Without it, the plain time since.

        ``members`` are ``(id, online, holds tasks)``, every member there is. A member back
        online is forgotten (its hello or heartbeat settled its tasks), and so is one that
        is gone (deleted). An offline member holding tasks without a grace running, as after
        a manager restart, gets one from ``now``.
        """
        over = {}
        left = set(self._held)
        for member_id, online, holds in members:
            left.discard(member_id)
            if online or not holds:
                self._held.pop(member_id, None)
                continue
            held = self._held.get(member_id)
            if held is None:
                reason = f"{self.member} {member_id} was offline when the manager started"
                self._held[member_id] = Held(since=now, reason=reason)
            elif (now - held.since if heard is None else heard(held.since)) >= self.period_s:
                del self._held[member_id]
                over[member_id] = f"{held.reason}; not back within {self.period_s:g} s"
        for member_id in left:
            del self._held[member_id]
        return over


def reattachable(task: Task | None) -> bool:
    return task is not None and task.runtime in REATTACHABLE


def surplus(reported: Iterable[str], own: Iterable[str]) -> list[str]:
    """Tasks a member reports running that are not its own any more (lost while it was
    away and placed again, or stopped): it must stop them."""
    mine = set(own)
    return [tid for tid in reported if tid not in mine]
