"""When a member (worker, or cluster at the root) counts as lost: judged on what the
manager could actually hear. Pure apart from :meth:`Liveness.pause`; time comes from an
injected clock.

A member is lost when it has been silent for ``missed_beats`` heartbeats *while the manager
was listening*. Two things make the manager deaf without any member being at fault, so
their spans ("blind" spans) are not counted as anyone's silence:

- its own link to the broker is down (a broker restart, a network cut). When it comes
  back, the members are reconnecting too, each with its own backoff, so the blind span
  runs on for :data:`RECONNECT_ALLOWANCE_S` after the manager's reconnect;
- its event loop stalled (a busy manager: heartbeats wait unread in the socket). The sweep
  measures how late it woke (:meth:`Liveness.pause`) and that lag is blind;
- it is behind on what the broker delivers, its loop turning all the while: messages
  queued in its inbox, its socket or the broker's queue for it, or dropped by a broker
  over its queue limit. Every sweep it sends itself a probe through the broker (on
  ``Topics.probe``); from the oldest probe not back yet, it is blind
  (:meth:`Liveness.probe`, :meth:`Liveness.probe_back`). The path is first in, first
  out, so a probe back means every earlier one was dropped, not late. Without this, a
  batch of 10,000 tasks over 10,000 simulated workers put 16 s (p50) between a heartbeat
  and its handling, and both managers of ``bench.scale --hierarchy`` declared every
  worker lost, then lost their tasks.

A last will says a member's connection closed, but a broker that shuts down publishes the
will of every client just before it closes the manager's own connection (Mosquitto does):
so a will counts only once it has *settled*, that is the manager's link stayed up for a
sweep period after it and the member said nothing more (:meth:`Liveness.settled_wills`).
A will that arrives while the manager is catching up after its own reconnect (queued for
its session, or published as the broker came back) is left to the silence rule.

After its own reconnect the manager cannot tell which of its commands the broker dropped
(a member not yet subscribed again, or a broker that lost what it had queued), so every
member must say hello again (``resync``); until it does, a command it has not seen is not
taken as a task it dropped, and its hello gets every task it does not report sent again
(:func:`judge_hello`).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from edgeplane.clock import Clock
from edgeplane.manager.registry import Reservation
from edgeplane.protocol import Hello
from edgeplane.transport.link import MAX_BACKOFF_S

#: Seconds members get after the manager's reconnect before their silence counts again:
#: the longest backoff of a member's link between two attempts to reconnect.
RECONNECT_ALLOWANCE_S = MAX_BACKOFF_S
#: A sweep that woke this much later than asked counts the lag as a stall (blind). Below
#: it, the lag is noise the deadline's slack already covers.
STALL_S = 0.05
#: Blind spans kept (adjacent ones merge); older ones only matter to members silent for
#: far longer than the liveness window, which are lost either way.
BLIND_SPANS = 64
#: Probes awaited at once (one a sweep); past that the oldest is forgotten, so a manager
#: behind by more than this many sweeps judges silence from the oldest one it still awaits.
PROBES = 256


def sweep_period(heartbeat_s: float) -> float:
    """How often the liveness sweep runs: half a beat, within 0.05 to 1 s."""
    return max(0.05, min(1.0, heartbeat_s / 2))


class Liveness:
    def __init__(self, clock: Clock, *, heartbeat_s: float, missed_beats: int) -> None:
        self.clock = clock
        self.period = sweep_period(heartbeat_s)
        # A silent member is declared lost no later than `missed_beats` heartbeats after
        # its last message: the sweep's own period is taken off the deadline (at 5 s
        # beats: 14 to 15 s of silence; a live member is 1 beat behind at most).
        self.deadline = heartbeat_s * missed_beats - self.period
        #: (start, end) on the monotonic clock, in order, merged when they touch
        self._blind: deque[tuple[float, float]] = deque(maxlen=BLIND_SPANS)
        #: when the link went down; None while it is up
        self._down_since: float | None = None
        self._settling_until = -math.inf
        #: member id -> when its will arrived (not yet settled)
        self._wills: dict[str, float] = {}
        #: members that must say hello again since the manager's last reconnect
        self.resync: set[str] = set()
        #: probes sent and not back: (nonce, when sent), oldest first
        self._probes: deque[tuple[str, float]] = deque(maxlen=PROBES)
        self._probe_seq = 0

    # ------------------------------------------------------------------ the manager's ears
    def link_down(self) -> None:
        self._probes.clear()  # the outage is blind already; what was on its way is lost
        if self._down_since is None:
            self._down_since = self.clock.monotonic()
            self._add_blind(self._down_since, math.inf)  # open until the link is back
        # Wills that arrived just before are the broker shutting down, or cannot be told
        # from it: the members are judged by their silence instead.
        self._wills.clear()

    def link_up(self, members: Iterable[str]) -> None:
        """The link (re)connected; ``members`` are the online members to resync."""
        now = self.clock.monotonic()
        start = now
        if self._down_since is not None:
            start = self._blind.pop()[0]  # the open span, with all it merged
        self._down_since = None
        self._settling_until = now + RECONNECT_ALLOWANCE_S
        self._add_blind(start, self._settling_until)
        self.resync = set(members)

    def woke(self, late: float) -> None:
        """The sweep ran ``late`` seconds after it asked to: a stall of the loop, when
        large enough."""
        if late > STALL_S:
            now = self.clock.monotonic()
            self._add_blind(now - late, now)

    def probe(self, sender: str) -> str:
        """The nonce of a probe to send now; first, the span since the oldest probe still
        awaited (if any, and longer than a stall) is blind. ``sender`` tells this
        process's probes from another's (a standby's) on the same topic."""
        now = self.clock.monotonic()
        if self._probes:
            sent = self._probes[0][1]
            if now - sent > STALL_S:
                self._add_blind(sent, now)
        self._probe_seq += 1
        nonce = f"{sender}-{self._probe_seq}"
        self._probes.append((nonce, now))
        return nonce

    def probe_back(self, nonce: str) -> None:
        """A probe came back: the span since it left was blind if it took long, and the
        ones sent before it that are still awaited were dropped on the way."""
        if not any(n == nonce for n, _ in self._probes):
            return  # another process's, or one sent before the link last went down
        while True:
            sent_nonce, sent = self._probes.popleft()
            if sent_nonce == nonce:
                break
        now = self.clock.monotonic()
        if now - sent > STALL_S:
            self._add_blind(sent, now)

    async def pause(self) -> None:
        """Sleep one sweep period and count how late the loop woke as a stall."""
        asked = self.clock.monotonic() + self.period
        await asyncio.sleep(self.period)
        self.woke(self.clock.monotonic() - asked)

    @property
    def settling(self) -> bool:
        """The link is down, or came back so recently that members are still reconnecting."""
        return self._down_since is not None or self.clock.monotonic() < self._settling_until

    # ------------------------------------------------------------------ judging members
    def silence(self, last_seen: float) -> float:
        """Seconds since ``last_seen`` during which the manager could hear."""
        now = self.clock.monotonic()
        deaf = 0.0
        for start, end in reversed(self._blind):
            if end <= last_seen:
                break  # spans are in order: every earlier one ended before too
            deaf += max(0.0, min(end, now) - max(start, last_seen))
        return max(0.0, now - last_seen - deaf)

    def lost(self, last_seen: float) -> bool:
        return self.silence(last_seen) > self.deadline

    def will(self, member: str) -> None:
        """The broker published ``member``'s last will (for its current session)."""
        if not self.settling:
            self._wills.setdefault(member, self.clock.monotonic())

    def heard(self, member: str) -> None:
        """``member`` said something after its will: it is connected again."""
        self._wills.pop(member, None)

    def settled_wills(self) -> list[str]:
        """Members whose will has settled: offline now. Each is returned once."""
        now = self.clock.monotonic()
        settled = [m for m, at in self._wills.items() if now - at >= self.period]
        for member in settled:
            del self._wills[member]
        return settled

    def forget(self, member: str) -> None:
        """``member`` is offline or gone: nothing pending about it."""
        self._wills.pop(member, None)
        self.resync.discard(member)

    def _add_blind(self, start: float, end: float) -> None:
        while self._blind and self._blind[-1][1] >= start:
            last_start, last_end = self._blind.pop()
            start, end = min(start, last_start), max(end, last_end)
        self._blind.append((start, end))


@dataclass(frozen=True)
class HelloVerdict:
    """What a member's hello says about the tasks the manager placed on it."""

    #: gone with an earlier process of the member, or dropped by this one
    lost: list[str]
    #: sent, never received, and the member is the process they went to: send them again
    resend: list[str]


def judge_hello(
    tasks: Mapping[str, Reservation],
    known_session: str,
    hello: Hello,
    our_epoch: str,
    *,
    reported_running: Collection[str] = (),
) -> HelloVerdict:
    """Judge the tasks placed on a member that says hello, from what it reports.

    A task the member holds (``hello.active``) is fine. One it does not hold:

    - same session as known (it reconnected): it never got the command, which the broker
      dropped or which is still on its way (a member keeps a task it ran in ``active``
      until the manager acks the result, which the manager does after dropping the
      reservation). Sending it again is safe: a member runs a (task, attempt) once;
    - a new session: gone if it went to an older process (sent to another session), or
      if this process has seen the command that carried it (``seq`` ≤ the last one it
      reports). Sent while the manager did not know the session yet, after any command
      this process has seen: the member never reported it running, so it went to this
      process and was dropped (not yet subscribed) or is on its way: sent again. (A
      command the manager sent right after its own restart, before a new worker process
      subscribed, was otherwise never received and never judged: stuck ``scheduled``.)
      If it was reported running, an older process had it: gone;
    - recovered after the manager's own restart (``seq`` 0, session unknown): if the
      member's process predates this manager (it reports commands of an earlier manager
      process) and never reported the task running, the command never reached it (the
      manager died between storing ``scheduled`` and sending): sent again. Else it went
      to an earlier process of the member: gone.
    """
    active = set(hello.active)
    missing = [(tid, r) for tid, r in tasks.items() if tid not in active and r.seq is not None]
    if hello.session == known_session:
        return HelloVerdict(lost=[], resend=[tid for tid, _ in missing])
    received = hello.seq if hello.epoch == our_epoch else 0
    predates = hello.epoch not in ("", our_epoch)
    running = set(reported_running)
    lost: list[str] = []
    resend: list[str] = []
    for tid, r in missing:
        seq = r.seq or 0
        if seq == 0:
            (resend if predates and tid not in running else lost).append(tid)
        elif (r.session and r.session != hello.session) or seq <= received:
            lost.append(tid)
        else:
            (lost if tid in running else resend).append(tid)
    return HelloVerdict(lost=lost, resend=resend)
