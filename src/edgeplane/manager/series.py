"""Usage series a manager keeps in memory (docs/metrics.md): per task (bounded by its
profile's ``history``), per member (node samples), per worker's chute service (bounded by
its chute's profile), and at the root per cluster's worker.

Memory, not the store: samples come every few seconds from every worker and are worth
little once old; writing them would put the store's commit path (the journal) under a
load that grows with the fleet, for data the dashboard wants only recent. Everything is
bounded: :data:`MAX_TASK_SERIES` task series (the least recently updated go first),
:data:`MEMBER_HISTORY` samples per member. A restarted manager starts empty.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

from edgeplane.errors import Invalid
from edgeplane.protocol import Metrics, Sample

MAX_TASK_SERIES = 10_000
#: node samples kept per member: a day at the workers' default 10 s would be 8,640
MEMBER_HISTORY = 2_000
MAX_MEMBERS = 10_000
#: chute service series kept (the least recently updated go first)
MAX_CHUTE_SERIES = 10_000
#: points a query returns at most (more samples in range are averaged into buckets)
MAX_POINTS = 1_000
DEFAULT_POINTS = 200

K = TypeVar("K", bound=Hashable)


class Series:
    def __init__(self) -> None:
        self._tasks: OrderedDict[str, deque[Sample]] = OrderedDict()
        self._members: OrderedDict[str, deque[Sample]] = OrderedDict()
        #: root only: (cluster, worker) → that worker's node samples, through its cluster
        self._workers: OrderedDict[tuple[str, str], deque[Sample]] = OrderedDict()
        #: not at a root: (worker, chute, service) → that service's samples
        self._chutes: OrderedDict[tuple[str, str, str], deque[Sample]] = OrderedDict()
        self.samples = 0

    def ingest(self, member_id: str, batch: Metrics, *, root: bool = False) -> None:
        """Keep a member's batch; ``workers`` only at a ``root`` (from a cluster)."""
        if batch.node:
            _append(self._members, member_id, batch.node, MEMBER_HISTORY, MAX_MEMBERS)
        for worker_id, samples in batch.workers.items() if root else ():
            key = (member_id, worker_id)
            _append(self._workers, key, samples, MEMBER_HISTORY, MAX_MEMBERS)
        for task in batch.tasks:
            _append(self._tasks, task.task_id, task.samples, task.history, MAX_TASK_SERIES)
            self.samples += len(task.samples)
        for chute in () if root else batch.chutes:
            service = (member_id, chute.chute, chute.service)
            _append(self._chutes, service, chute.samples, chute.history, MAX_CHUTE_SERIES)
            self.samples += len(chute.samples)
        self.samples += len(batch.node)

    def task(self, task_id: str) -> list[Sample]:
        return list(self._tasks.get(task_id, ()))

    def history(self, task_id: str) -> int:
        """Samples kept of the task (its profile's ``history``); 1 when none came."""
        kept = self._tasks.get(task_id)
        return 1 if kept is None or kept.maxlen is None else kept.maxlen

    def member(self, member_id: str) -> list[Sample]:
        return list(self._members.get(member_id, ()))

    def worker_of(self, cluster_id: str, worker_id: str) -> list[Sample]:
        return list(self._workers.get((cluster_id, worker_id), ()))

    def workers_of(self, cluster_id: str) -> list[str]:
        return [w for c, w in self._workers if c == cluster_id]

    def members(self) -> list[str]:
        return list(self._members)

    def forget_task(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)

    def chute(self, worker_id: str, chute: str, service: str) -> list[Sample]:
        return list(self._chutes.get((worker_id, chute, service), ()))

    def chute_services(self, worker_id: str, chute: str) -> list[str]:
        """The services of the worker's chute that have a series, by name."""
        return sorted(s for w, c, s in self._chutes if w == worker_id and c == chute)

    def forget_chute(self, worker_id: str, chute: str) -> None:
        """The chute was deleted: its series go (a new chute of that name starts afresh)."""
        for key in [k for k in self._chutes if k[:2] == (worker_id, chute)]:
            del self._chutes[key]


def _append(
    book: OrderedDict[K, deque[Sample]],
    key: K,
    samples: Iterable[Sample],
    history: int,
    most: int,
) -> None:
    kept = book.get(key)
    if kept is None or kept.maxlen != history:
        kept = deque(kept or (), maxlen=history)
        book[key] = kept
    kept.extend(samples)
    book.move_to_end(key)
    while len(book) > most:
        book.popitem(last=False)


def in_range(
    samples: Sequence[Sample], since: float | None, until: float | None, points: int
) -> tuple[list[Sample], bool]:
    """:func:`window`, and whether it averaged (more samples in range than ``points``);
    ``since`` after ``until`` is a 422 naming ``since``."""
    if since is not None and until is not None and since > until:
        raise Invalid("since must not be after until", field="since")
    chosen = window(samples, since, until, points)
    total = sum(
        1 for s in samples if (since is None or s.ts >= since) and (until is None or s.ts <= until)
    )
    return chosen, len(chosen) < total


def window(
    samples: Sequence[Sample], since: float | None, until: float | None, points: int
) -> list[Sample]:
    """The samples in ``[since, until]``, averaged into at most ``points`` equal time
    buckets when there are more (each value the mean of the bucket's, ``ts`` its
    middle): a week of samples comes back as a chart's worth, not as all of them."""
    chosen = [
        s for s in samples if (since is None or s.ts >= since) and (until is None or s.ts <= until)
    ]
    if len(chosen) <= points:
        return chosen
    start, end = chosen[0].ts, chosen[-1].ts
    width = (end - start) / points or 1.0
    buckets: list[list[Sample]] = [[] for _ in range(points)]
    for s in chosen:
        buckets[min(points - 1, int((s.ts - start) / width))].append(s)
    return [_mean(bucket, start + (i + 0.5) * width) for i, bucket in enumerate(buckets) if bucket]


def _mean(bucket: list[Sample], ts: float) -> Sample:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for s in bucket:
        for name, value in s.values.items():
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1
    return Sample(ts=ts, values={n: round(v / counts[n], 3) for n, v in sums.items()})


def aggregate(series: Iterable[Sequence[Sample]], points: int) -> list[Sample]:
    """One series of several members' (a cluster's from its workers'): per time bucket,
    each member's mean, then summed over members (cpu_percent and load averaged, since
    a sum of percentages over nodes means nothing)."""
    chosen = [s for s in series if s]
    if not chosen:
        return []
    start = min(s[0].ts for s in chosen)
    end = max(s[-1].ts for s in chosen)
    width = (end - start) / points or 1.0
    totals: dict[int, dict[str, float]] = {}
    members: dict[int, int] = {}
    for samples in chosen:
        buckets: dict[int, list[Sample]] = {}
        for s in samples:
            buckets.setdefault(min(points - 1, int((s.ts - start) / width)), []).append(s)
        for index, bucket in buckets.items():
            mean = _mean(bucket, 0.0).values
            total = totals.setdefault(index, {})
            for name, value in mean.items():
                total[name] = total.get(name, 0.0) + value
            members[index] = members.get(index, 0) + 1
    out = []
    for index in sorted(totals):
        values = totals[index]
        for name in _AVERAGED:
            if name in values:
                values[name] = round(values[name] / members[index], 3)
        values["members"] = members[index]
        out.append(Sample(ts=start + (index + 0.5) * width, values=values))
    return out


_AVERAGED = ("cpu_percent", "load1", "temperature_c")
