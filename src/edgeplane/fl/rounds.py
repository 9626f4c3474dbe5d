"""One round's state machine: who may send, when it closes, what it does when short.

Pure: the coordinator feeds it updates and the time (an injected clock's ``monotonic``),
and does what the returned outcome says. A round is ``open`` until it has ``k`` accepted
updates (``closed``), or its deadline passes: then ``closed`` with at least
``min_clients`` updates, else ``retry`` (the coordinator starts the round again, while
retries are left) or ``failed``. After that nothing more is taken: a late update is
rejected as ``closed``, counted, and dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from edgeplane.fl.updates import Rejected

State = Literal["open", "closed", "retry", "failed"]


@dataclass
class Round:
    number: int
    selected: frozenset[str]
    k: int
    min_clients: int
    deadline: float
    #: retries left after this attempt; 0: short of min_clients at the deadline fails
    retries_left: int = 0
    state: State = "open"
    accepted: dict[str, int] = field(default_factory=dict)  # worker → num_samples
    rejected: Counter[str] = field(default_factory=Counter)

    def admit(self, worker: str, now: float) -> None:
        """Whether ``worker`` may send now; else Rejected, counted by reason."""
        self.tick(now)
        if self.state != "open":
            self._reject("closed", f"round {self.number} is {self.state}; the update is dropped")
        if worker not in self.selected:
            self._reject(
                "unselected", f"worker {worker!r} was not selected for round {self.number}"
            )
        if worker in self.accepted:
            self._reject(
                "duplicate", f"worker {worker!r} already sent its update for round {self.number}"
            )

    def reject(self, reason: str) -> None:
        """Count an update rejected for its content (shape, nonfinite, malformed)."""
        self.rejected[reason] += 1

    def accept(self, worker: str, num_samples: int, now: float) -> State:
        """Take ``worker``'s checked update (call ``admit`` first); the new state."""
        self.admit(worker, now)
        self.accepted[worker] = num_samples
        if len(self.accepted) >= self.k:
            self.state = "closed"
        return self.state

    def tick(self, now: float) -> State:
        """The state at ``now``: closes (or gives up on) the round once its deadline passed."""
        if self.state == "open" and len(self.accepted) >= self.k:
            self.state = "closed"
        elif self.state == "open" and now >= self.deadline:
            if len(self.accepted) >= self.min_clients:
                self.state = "closed"
            elif self.retries_left > 0:
                self.state = "retry"
            else:
                self.state = "failed"
        return self.state

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        raise Rejected(reason, detail, field="worker")
