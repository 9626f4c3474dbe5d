"""A sliding-window limiter of failed logins, per key (user, client address).

Pure apart from the injected clock: a key may fail ``attempts`` times per ``window``
seconds; past that it is refused until its oldest failure leaves the window.
"""

from __future__ import annotations

from collections import deque

from edgeplane.clock import Clock


class RateLimiter:
    def __init__(self, clock: Clock, attempts: int = 5, window: float = 60.0) -> None:
        self._clock = clock
        self._attempts = attempts
        self._window = window
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, *keys: str) -> float:
        """Seconds until every key may try again (0: may try now)."""
        now = self._clock.monotonic()
        wait = 0.0
        for key in keys:
            failures = self._trimmed(key, now)
            if failures is not None and len(failures) >= self._attempts:
                wait = max(wait, failures[0] + self._window - now)
        return wait

    def failed(self, *keys: str) -> None:
        now = self._clock.monotonic()
        for key in keys:
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)

    def _trimmed(self, key: str, now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] + self._window <= now:
            failures.popleft()
        if not failures:  # nothing to remember: the table stays as small as the attackers
            del self._failures[key]
            return None
        return failures
