"""Keep an application's services at their replica counts: a pure plan, no I/O, no clock.

The root calls :func:`reconcile` whenever an application or one of its instances changes
(and again at ``next_check_at``), then an applier creates the daemon tasks, stops the
ones named and drops the forgotten instances. Calling it again before anything changed
returns the same plan, so a repeated call is harmless.

Rules. An instance is *live* while its state is pending, scheduled or running and
*ended* otherwise (completed, failed, cancelled, skipped). *Running* means healthy: the
worker of an instance whose service has a ``healthcheck`` reports it running only once
the check has passed, and ends it ``failed`` (an ``unhealthy`` reason) when it does not
pass (docs/services.md); so a rollout, which waits for ``running``, waits for health.
Every service must end up with exactly one live instance of its current revision at each
index ``0..replicas-1``. Per (service, index):

- **Live current instance.** One is kept (running first, then fewest restarts, then
  lowest id) and any other live current one is stopped: a duplicate left by a cluster
  that came back. Every ended instance there is superseded and forgotten.
- **Lost.** An ended instance is *lost* when its state is ``failed`` and its ``reason``
  (the applier copies the task's ``error`` into it) contains ``worker_lost``: its worker
  or cluster went away, not the service. A lost instance is replaced at once, whatever
  the restart policy.
- **Restart.** With no live current instance, the latest ended one of the current
  revision (by ``ended_at``) decides: lost → replace now; else by policy, ``always``
  restarts, ``on-failure`` restarts only a ``failed`` one, ``never`` leaves it ended
  (shown, not forgotten). A restart waits ``min(backoff_max_s, backoff_base_s *
  2**restarts)`` after ``ended_at`` (no ``ended_at``: no wait); the earliest wait still
  running is ``next_check_at``. The replacement has ``restarts + 1``, names the old one
  in ``replaces``, and the old one is forgotten in the same plan. Older ended instances
  there are history and are forgotten.
- **Nothing there.** A new instance with ``restarts = 0``. An index whose only instances
  are ended ones of an older revision is a new deployment, not a restart: a current
  instance starts at once (``restarts = 0``, replacing the latest of them), whatever the
  policy, and they are forgotten.
- **Rolling update.** Live instances of an older revision are replaced one index per
  service at a time, new up before old down. An index is *in rollout* while it has a live
  old instance and a current one (live, or ended and waiting for, or refused, a restart).
  There, once the kept current instance is ``running`` every live old one is stopped;
  until then they wait. When no index of the service is in rollout, the lowest index
  with only live old instances gets a new one (``restarts = 0``, replacing the preferred
  old one). A new revision whose instance ends and is not restarted (``never``) halts the
  rollout with the old instance still serving, until the next ``PUT``. Several live old
  instances at an index with no live current one are de-duplicated like current ones.
- **Make room.** A kept current instance that waits ``pending`` because required
  anti-affinity leaves it nowhere (its ``reason`` starts with ``anti-affinity
  required``: every worker already runs a replica) does not wait for itself to run:
  the live old instances at its index are stopped at once, and it takes the worker
  they free. Without this, a service with as many replicas as workers never rolled.
- **Gone.** At an index ``>= replicas`` (all of them when replicas is 0) and in a
  service no longer desired, live instances are stopped and ended ones forgotten, old
  revisions included: there is nothing to roll to.

Stopping is idempotent from here: an instance asked to stop stays live until its task
ends, so the next plan names it again (and an index mid-stop stays in rollout). The
applier de-duplicates stop requests, e.g. by skipping tasks it already asked to stop.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edgeplane.errors import Invalid
from edgeplane.model import ApplicationSpec, Instance, RestartPolicy

#: the error a task ends with when its worker (or cluster) is lost; the manager's
#: ``edgeplane.manager.lifecycle.WORKER_LOST`` (not imported: the root stays light)
LOSS_REASON = "worker_lost"
#: how the schedulers' wait reasons for required anti-affinity begin (both levels)
ANTI_AFFINITY_REASON = "anti-affinity required"

_LIVE_STATES = frozenset({"pending", "scheduled", "running"})
#: the largest exponent a float power of two holds (a long crash loop must not overflow)
_MAX_EXPONENT = 1023


@dataclass(frozen=True)
class Desired:
    """One service as the reconciler needs it."""

    service: str
    replicas: int
    restart: RestartPolicy
    revision: str

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise Invalid(f"replicas of {self.service!r} is negative", field="replicas")


@dataclass(frozen=True)
class Create:
    """Start a new instance (a new daemon task) for (service, index)."""

    service: str
    index: int
    revision: str
    #: restarts of the instance it replaces + 1, or 0 (new, or a rollout)
    restarts: int
    #: the ended or old instance it replaces, if any
    replaces: str | None


@dataclass(frozen=True)
class Actions:
    """The plan, in a stable order: desired services first, then by service and index."""

    create: tuple[Create, ...]
    #: instance ids whose tasks must be stopped (repeated until they end)
    stop: tuple[str, ...]
    #: ended instance ids to drop from the application
    forget: tuple[str, ...]
    #: earliest time a restart backoff ends (None: nothing waits)
    next_check_at: float | None

    @property
    def empty(self) -> bool:
        """Nothing to do now (there may still be a restart waiting)."""
        return not (self.create or self.stop or self.forget)


def desired_of(spec: ApplicationSpec) -> list[Desired]:
    """The services of ``spec`` in the reconciler's terms."""
    return [
        Desired(
            service=service.name,
            replicas=service.replicas,
            restart=service.restart,
            revision=service.revision(),
        )
        for service in spec.services
    ]


def is_live(instance: Instance) -> bool:
    return instance.state in _LIVE_STATES


def is_lost(instance: Instance) -> bool:
    """Ended because its worker or cluster went away, not because of the service."""
    return instance.state == "failed" and LOSS_REASON in (instance.reason or "")


def is_kept_out(instance: Instance) -> bool:
    """Waiting because required anti-affinity leaves it no worker (or cluster)."""
    return instance.state == "pending" and (instance.reason or "").startswith(ANTI_AFFINITY_REASON)


def backoff_s(restarts: int, base_s: float, max_s: float) -> float:
    """How long a restart waits after an instance restarted ``restarts`` times ended."""
    return min(max_s, base_s * 2.0 ** min(max(0, restarts), _MAX_EXPONENT))


def reconcile(
    desired: Sequence[Desired],
    instances: Sequence[Instance],
    now: float,
    *,
    backoff_base_s: float = 1.0,
    backoff_max_s: float = 60.0,
) -> Actions:
    """The plan that moves ``instances`` toward ``desired`` (rules in the module doc)."""
    by_service = {d.service: d for d in desired}
    if len(by_service) != len(desired):
        raise Invalid("a service is desired twice", field="services")
    grouped: dict[str, dict[int, list[Instance]]] = defaultdict(lambda: defaultdict(list))
    for instance in instances:
        grouped[instance.service][instance.index].append(instance)
    plan = _Plan(now, backoff_base_s, backoff_max_s)
    for want in desired:
        _service(plan, want, grouped.pop(want.service, {}))
    for service in sorted(grouped):
        for index in sorted(grouped[service]):
            plan.remove(grouped[service][index])
    return Actions(
        create=tuple(plan.create),
        stop=tuple(plan.stop),
        forget=tuple(plan.forget),
        next_check_at=plan.next_check_at,
    )


class _Plan:
    """The plan being built: what to create, stop and forget, and the earliest wait."""

    def __init__(self, now: float, backoff_base_s: float, backoff_max_s: float) -> None:
        self.now = now
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.create: list[Create] = []
        self.stop: list[str] = []
        self.forget: list[str] = []
        self.next_check_at: float | None = None

    def remove(self, instances: Iterable[Instance]) -> None:
        for instance in sorted(instances, key=lambda i: i.id):
            (self.stop if is_live(instance) else self.forget).append(instance.id)

    def wait_until(self, at: float) -> None:
        if self.next_check_at is None or at < self.next_check_at:
            self.next_check_at = at


def _service(plan: _Plan, want: Desired, slots: dict[int, list[Instance]]) -> None:
    """Plan one desired service; ``slots`` are its instances by index."""
    in_rollout = False
    rollout_candidates: list[tuple[int, Instance]] = []
    creates: list[Create] = []
    for index in sorted(set(slots) | set(range(want.replicas))):
        here = slots.get(index, [])
        if not 0 <= index < want.replicas:
            plan.remove(here)
            continue
        live_current = [i for i in here if is_live(i) and i.revision == want.revision]
        live_old = [i for i in here if is_live(i) and i.revision != want.revision]
        ended = [i for i in here if not is_live(i)]
        ended_current = [i for i in ended if i.revision == want.revision]
        if live_current:
            keep = _dedup(plan, live_current)
            plan.remove(ended)
            if live_old:
                in_rollout = True
                if keep.state == "running" or is_kept_out(keep):
                    plan.remove(live_old)
        elif ended_current:
            latest = max(ended_current, key=_recency)
            plan.remove(i for i in ended if i is not latest)
            restart = _restart(plan, want, index, latest)
            if restart is not None:
                creates.append(restart)
            if live_old:
                in_rollout = True
                _dedup(plan, live_old)
        elif live_old:
            plan.remove(ended)
            rollout_candidates.append((index, _dedup(plan, live_old)))
        elif ended:
            latest = max(ended, key=_recency)
            plan.remove(ended)
            creates.append(Create(want.service, index, want.revision, 0, latest.id))
        else:
            creates.append(Create(want.service, index, want.revision, 0, None))
    if rollout_candidates and not in_rollout:
        index, old = rollout_candidates[0]
        creates.append(Create(want.service, index, want.revision, 0, old.id))
    plan.create.extend(sorted(creates, key=lambda c: c.index))


def _restart(plan: _Plan, want: Desired, index: int, ended: Instance) -> Create | None:
    """Replace the ended current instance ``ended`` now, later (None) or never (None)."""
    lost = is_lost(ended)
    if not lost and not _policy_restarts(want.restart, ended):
        return None
    if not lost and ended.ended_at is not None:
        due = ended.ended_at + backoff_s(ended.restarts, plan.backoff_base_s, plan.backoff_max_s)
        if due > plan.now:
            plan.wait_until(due)
            return None
    plan.forget.append(ended.id)
    return Create(want.service, index, want.revision, ended.restarts + 1, ended.id)


def _policy_restarts(policy: RestartPolicy, ended: Instance) -> bool:
    return policy == "always" or (policy == "on-failure" and ended.state == "failed")


def _dedup(plan: _Plan, live: Sequence[Instance]) -> Instance:
    """Keep the preferred live instance of one index and stop the others."""
    keep = _preferred(live)
    plan.remove(i for i in live if i is not keep)
    return keep


def _preferred(live: Sequence[Instance]) -> Instance:
    return min(live, key=lambda i: (i.state != "running", i.restarts, i.id))


def _recency(instance: Instance) -> tuple[float, int, str]:
    return (instance.ended_at or 0.0, instance.restarts, instance.id)
