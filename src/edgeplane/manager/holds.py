"""How many answers the API holds open at once (long polls: ``?wait=`` on a task or a
run, a federated learning client's next round), and their bound (docs/limits.md).

Each held answer is a connection and a waiter; past ``limit`` a new one is refused with
``Busy`` (503 and ``Retry-After``) before it is registered, and the clients wait that
long and ask again. The held ones go on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from edgeplane.errors import Busy
from edgeplane.limits import DEFAULT_HELD_ANSWERS

#: Seconds a refused client is asked to wait before it asks again.
RETRY_AFTER_S = 1.0


class Holds:
    def __init__(self, limit: int = DEFAULT_HELD_ANSWERS) -> None:
        self.limit = limit
        self.held = 0
        #: answers refused for the bound (``/metrics``)
        self.refused = 0

    @property
    def free(self) -> bool:
        return self.held < self.limit

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """One answer held for the block's life; ``Busy`` when ``limit`` are held."""
        if self.held >= self.limit:
            self.refused += 1
            raise Busy(
                f"{self.held} answers are held open already (max_held_answers): ask again",
                retry_after=RETRY_AFTER_S,
            )
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1
