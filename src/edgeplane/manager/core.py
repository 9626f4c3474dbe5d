"""The state the manager's parts share, and the few calls they make on each other.

State lives in two places on purpose: the store is the truth that survives a crash, and
``pending`` / ``active`` hold the started, unfinished tasks in memory so the hot path
(schedule → dispatch → event) never reads the store. Every change is written through the
journal before anything depends on it (a dispatch, an ack to a member, a reply).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from edgeplane import clock as clocks
from edgeplane.config import Settings
from edgeplane.manager.holds import Holds
from edgeplane.manager.journal import Journal
from edgeplane.manager.levels import Level
from edgeplane.manager.queue import PendingQueue
from edgeplane.manager.registry import Registry
from edgeplane.manager.series import Series
from edgeplane.model import Task, Worker
from edgeplane.protocol import encode
from edgeplane.store import Store
from edgeplane.telemetry import LIFE_BUCKETS, Histogram
from edgeplane.transport import MqttLink

if TYPE_CHECKING:
    from edgeplane.otel import Tracer


@dataclass
class ManagerStats:
    bad_messages: int = 0
    #: events about a task another member holds (forged, or from a member the task was
    #: taken from): refused, counted apart so a returning lost worker is not "bad input"
    foreign_events: int = 0
    #: chute events applied, and those refused for naming another worker than the one
    #: whose leaf they came on
    chute_events: int = 0
    foreign_chute_events: int = 0
    dispatched: int = 0
    events: int = 0
    lost_workers: int = 0
    #: processes refused because a live member holds the id they claimed
    refused_members: int = 0
    #: tasks that ended since the manager started, by final state
    finished: Counter[str] = field(default_factory=Counter)
    #: tasks submitted since the manager started, by origin (api, workflow, schedule...)
    submitted: Counter[str] = field(default_factory=Counter)
    #: seconds from a task's being ready (created, or its retry due) to its task.start
    dispatch_latency: Histogram = field(default_factory=Histogram)
    #: seconds from a task's creation to its end, of tasks ended since the manager started
    end_to_end: Histogram = field(default_factory=lambda: Histogram(LIFE_BUCKETS))


@dataclass
class Core:
    settings: Settings
    store: Store
    clock: clocks.Clock
    level: Level
    journal: Journal
    link: MqttLink
    registry: Registry = field(default_factory=Registry)
    pending: PendingQueue = field(default_factory=PendingQueue)
    #: usage samples of members and tasks (``series.py``)
    series: Series = field(default_factory=Series)
    active: dict[str, Task] = field(default_factory=dict)
    stats: ManagerStats = field(default_factory=ManagerStats)
    #: set to run a scheduling pass soon
    kick: asyncio.Event = field(default_factory=asyncio.Event)
    #: member documents waiting to be stored (membership batches them; dispatch stores
    #: those of members about to get tasks first)
    unsaved: dict[str, Worker] = field(default_factory=dict)
    #: tasks whose end is durable (the task service wakes waiters and listeners)
    resolve: Callable[[Iterable[Task]], None] = lambda tasks: None
    #: queues a pending task held back while its module is resolved, True if it did
    #: (the task service's resolver: a wasm task admitted while its registry was down)
    hold: Callable[[Task], bool] = lambda task: False
    #: adds the member's command MAC to a message (``BrokerAuth.sign``; none by default)
    sign: Callable[[str, bytes], bytes] = lambda member_id, message: message
    #: the key a member's secret env is sealed with (``BrokerAuth.sealing_key``; None:
    #: the member has none, and its secret env goes in the clear)
    sealing_key: Callable[[str], bytes | None] = lambda member_id: None
    #: the owner a member that registers gets: its join token's (``BrokerAuth.owner_of``;
    #: none by default)
    owner_at_join: Callable[[str], str | None] = lambda member_id: None
    #: the leadership term every command carries (``manager/leadership.py``; 0: none)
    term: int = 0
    #: traces of tasks' paths (``edgeplane.otel``; None: off, and nothing else is done)
    tracer: Tracer | None = None
    #: answers the API holds open (long polls) and their bound (``holds.py``)
    holds: Holds = field(default_factory=Holds)

    @property
    def member(self) -> str:
        """What members are called in messages and logs: ``worker`` or ``cluster``."""
        return self.level.member

    async def send(
        self,
        member_id: str,
        type_: str,
        body: BaseModel | dict[str, Any],
        *,
        topic: str | None = None,
        qos: int | None = None,
    ) -> None:
        topic = topic or self.level.topics.cmd(member_id)
        message = encode(type_, body, term=self.term)
        await self.link.publish(topic, self.sign(member_id, message), qos=qos)
