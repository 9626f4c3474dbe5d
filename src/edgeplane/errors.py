"""One error root for the whole project.

Every error a user can see derives from :class:`EdgeplaneError`. The API maps them to
RFC 9457 problem+json in one place (``edgeplane.api.problems``); the CLI maps them to exit
codes. ``transient`` tells retry logic whether trying again may help; ``reason``, when
set, is a short code a task that fails of it carries (``artifact_not_found``, …).
"""

from __future__ import annotations


class EdgeplaneError(Exception):
    """Root of every edgeplane error."""

    status: int = 500
    title: str = "Internal error"
    transient: bool = False
    reason: str | None = None

    def __init__(self, detail: str, *, field: str | None = None, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        if reason is not None:
            self.reason = reason


class Invalid(EdgeplaneError):
    """The input is malformed; ``field`` names the offending part."""

    status = 422
    title = "Invalid input"


class NotFound(EdgeplaneError):
    status = 404
    title = "Not found"


class Conflict(EdgeplaneError):
    status = 409
    title = "Conflict"


class Unauthorized(EdgeplaneError):
    status = 401
    title = "Unauthorized"


class Forbidden(EdgeplaneError):
    status = 403
    title = "Forbidden"


class TooManyRequests(EdgeplaneError):
    """Too many attempts (failed logins); ``retry_after`` seconds until the next is taken."""

    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: float, field: str | None = None) -> None:
        super().__init__(detail, field=field)
        self.retry_after = retry_after


class Unavailable(EdgeplaneError):
    """A dependency (broker, store, worker) cannot be reached right now."""

    status = 503
    title = "Unavailable"
    transient = True


class Busy(Unavailable):
    """Too many answers held open at once (``manager/holds.py``); ``retry_after`` seconds
    until asking again may be taken."""

    title = "Busy"

    def __init__(self, detail: str, *, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Fenced(Unavailable):
    """A write by a process that no longer leads: another took the lease (a later term).
    Never retried by the process that got it; it stops acting and stands by."""

    title = "Not the leader"
    transient = False


class TaskFailure(EdgeplaneError):
    """A task ran and failed (trap, limit, non-zero exit): permanent for that attempt."""

    status = 500
    title = "Task failed"


class TransientTaskFailure(TaskFailure):
    """A task could not run for a reason that another attempt may not meet."""

    transient = True
