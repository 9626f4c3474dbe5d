"""Static eligibility: which workers could run a task at all, and why none could.

Tasks with the same :class:`Requirement` share one candidate list, so a batch of many
similar tasks filters the worker list once per distinct requirement, not once per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from edgeplane.scheduling.snapshot import TaskDemand, WorkerView

LabelItems = tuple[tuple[str, str], ...]


class Requirement(NamedTuple):
    """The part of a task that decides eligibility regardless of free capacity."""

    runtime: str
    labels: LabelItems
    tee: str
    worker_id: str | None
    #: needs a worker that can give it a bridge network
    bridge: bool = False

    @classmethod
    def of(cls, task: TaskDemand) -> Requirement:
        return cls(
            task.runtime, tuple(sorted(task.labels.items())), task.tee, task.worker_id, task.bridge
        )


def has_labels(worker: WorkerView, labels: LabelItems) -> bool:
    return all(worker.labels.get(key) == value for key, value in labels)


def tee_allows(worker: WorkerView, tee: str) -> bool:
    if tee == "required":
        return bool(worker.tee)
    if tee == "none":
        return not worker.tee
    return True


def matches(worker: WorkerView, req: Requirement) -> bool:
    """Whether ``worker`` could ever run a task with ``req`` (capacity aside)."""
    return (
        (req.worker_id is None or worker.id == req.worker_id)
        and req.runtime in worker.runtimes
        and has_labels(worker, req.labels)
        and tee_allows(worker, req.tee)
        and (worker.bridge or not req.bridge)
    )


def candidates(ring: Sequence[WorkerView], req: Requirement) -> list[int]:
    """Positions in ``ring`` of the workers that match an unpinned ``req``, in ring order."""
    runtime = req.runtime
    found = [pos for pos, w in enumerate(ring) if runtime in w.runtimes]
    for key, value in req.labels:
        found = [pos for pos in found if ring[pos].labels.get(key) == value]
    if req.tee == "required":
        found = [pos for pos in found if ring[pos].tee]
    elif req.tee == "none":
        found = [pos for pos in found if not ring[pos].tee]
    if req.bridge:
        found = [pos for pos in found if ring[pos].bridge]
    return found


def format_labels(labels: LabelItems) -> str:
    return ", ".join(f"{key}={value}" for key, value in labels)


def mismatch_reason(ring: Sequence[WorkerView], req: Requirement) -> str:
    """Why :func:`candidates` is empty for ``req``: the first filter that left nobody.

    A message names the earlier filters only when a worker outside them would have
    passed, so "no worker has labels site=a" is never said while one does.
    """
    if not ring:
        return "no worker online"
    pool = [w for w in ring if req.runtime in w.runtimes]
    if not pool:
        return f"no worker offers runtime '{req.runtime}'"
    scope = f"worker offering runtime '{req.runtime}'"
    if req.labels:
        labelled = [w for w in pool if has_labels(w, req.labels)]
        wanted = format_labels(req.labels)
        if not labelled:
            if any(has_labels(w, req.labels) for w in ring):
                return f"no {scope} has labels {wanted}"
            return f"no worker has labels {wanted}"
        scope += f" with labels {wanted}"
        pool = labelled
    if req.tee != "any":
        secure = [w for w in pool if tee_allows(w, req.tee)]
        if not secure:
            if req.tee == "required":
                if any(w.tee for w in ring):
                    return f"no {scope} has a TEE"
                return "no worker has a TEE"
            if any(not w.tee for w in ring):
                return f"every {scope} has a TEE"
            return "every worker has a TEE"
        scope += " with a TEE" if req.tee == "required" else " without a TEE"
    # what is left is the bridge (network: bridge); say where one would be found
    if any(w.bridge for w in ring):
        return f"no {scope} has a bridge network (the task has network: bridge)"
    return "no worker has a bridge network (the task has network: bridge)"


def pinned_reason(worker: WorkerView | None, req: Requirement) -> str:
    """Why the pinned ``worker`` (None when it is not online) does not match ``req``."""
    pinned = f"pinned worker {req.worker_id}"
    if worker is None:
        return f"{pinned} is not available"
    if req.runtime not in worker.runtimes:
        return f"{pinned} does not offer runtime '{req.runtime}'"
    if not has_labels(worker, req.labels):
        return f"{pinned} does not have labels {format_labels(req.labels)}"
    if not tee_allows(worker, req.tee):
        return f"{pinned} has no TEE" if req.tee == "required" else f"{pinned} has a TEE"
    return f"{pinned} has no bridge network (the task has network: bridge)"
