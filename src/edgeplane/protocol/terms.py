"""Members refuse a deposed leader's commands.

Every command a manager (or root) sends carries its leadership term in the envelope
(``manager/leadership.py``). A member keeps the highest term it has seen; a command with
a lower one comes from a process that has since lost the lease (paused past it, cut off
from the store) and is dropped, logged and counted. The store's fence already keeps such
a process from committing anything; this keeps it from commanding anyone either.
"""

from __future__ import annotations


class TermGate:
    def __init__(self) -> None:
        #: the highest term seen (0: none yet)
        self.term = 0
        #: commands refused for an older term
        self.stale = 0

    def admit(self, term: int) -> bool:
        """Whether a command of ``term`` may be acted on (and remember it)."""
        if term < self.term:
            self.stale += 1
            return False
        self.term = term
        return True
