"""MQTT topic names (DESIGN §4). The only place that spells a topic.

Both levels use the same leaves under a different prefix: a cluster's workers live under
``{d}/{c}/workers/{w}/…`` on the cluster broker, the clusters of a root under
``{d}/clusters/{c}/…`` on the root broker. A cluster may therefore not be named
``clusters``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeplane.errors import Invalid

ROOT_SEGMENT = "clusters"
#: The member level of a parent's probe topic (:attr:`Topics.probe`)
PROBE_MEMBER = "_probe"

#: An id that becomes one topic level (a worker's, a cluster's): letters, digits, '_' and
#: '-'. Not '.': NATS turns MQTT levels into subject tokens and drops the connection of a
#: client that publishes to a topic with '.' or ' ' in it (docs/brokers.md), so an id with
#: one would work on Mosquitto and fail on NATS. Nor '+', '#', '/': MQTT's own.
SEGMENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
#: The domain: one or more such levels separated by '/' (``acme``, ``acme/edge``).
DOMAIN_PATTERN = r"^[A-Za-z0-9_-]{1,63}(/[A-Za-z0-9_-]{1,63}){0,7}$"
SEGMENT_RULE = "1-63 letters, digits, '_' or '-', starting with a letter or digit"
DOMAIN_RULE = "up to 8 levels separated by '/', each 1-63 letters, digits, '_' or '-'"

_SEGMENT = re.compile(SEGMENT_PATTERN)
_ROUND = re.compile(r"[1-9][0-9]{0,8}")
_DOMAIN = re.compile(DOMAIN_PATTERN)


def check_segment(value: str, field: str, what: str = "an id") -> str:
    """``value`` if it may be one topic level, else ``Invalid`` naming ``field``."""
    if not _SEGMENT.match(value):
        raise Invalid(f"{what} is {SEGMENT_RULE}: not {value!r}", field=field)
    return value


def check_domain(value: str) -> str:
    """``value`` if it may prefix every topic, else ``Invalid`` (field ``domain``)."""
    if not _DOMAIN.match(value):
        raise Invalid(f"the domain is {DOMAIN_RULE}: not {value!r}", field="domain")
    return value


def fl_ack_of(update_topic: str) -> str:
    """The answer topic of an update topic (:meth:`Topics.fl_update`, wildcards kept):
    its ``updates`` level read as ``acks``."""
    head, sep, worker = update_topic.rpartition("/updates/")
    if not sep or "/" in worker:
        raise Invalid(f"{update_topic!r} is not an update topic", field="topic")
    return f"{head}/acks/{worker}"


@dataclass(frozen=True)
class Topics:
    """Topics between a parent and its members: a manager's workers (the default) or,
    with :meth:`for_root`, a root's clusters."""

    domain: str = "edgeplane"
    cluster: str = "local"
    root: bool = False

    def __post_init__(self) -> None:
        check_domain(self.domain)
        if not self.root:
            check_segment(self.cluster, "cluster_id", "a cluster id")

    @classmethod
    def for_root(cls, domain: str = "edgeplane") -> Topics:
        return cls(domain, ROOT_SEGMENT, root=True)

    @property
    def prefix(self) -> str:
        if self.root:
            return f"{self.domain}/{ROOT_SEGMENT}"
        return f"{self.domain}/{self.cluster}/workers"

    def _member(self, member_id: str, leaf: str) -> str:
        return f"{self.prefix}/{member_id}/{leaf}"

    def hello(self, member_id: str) -> str:
        return self._member(member_id, "hello")

    @property
    def probe(self) -> str:
        """Where a parent sends itself probes through the broker (manager/liveness.py):
        an ``alive`` leaf every parent already reads, of a member id no member can have
        (ids start with a letter or digit)."""
        return self._member(PROBE_MEMBER, "alive")

    def welcome(self, member_id: str) -> str:
        return self._member(member_id, "welcome")

    def alive(self, member_id: str) -> str:
        return self._member(member_id, "alive")

    def cmd(self, member_id: str) -> str:
        return self._member(member_id, "cmd")

    def events(self, member_id: str) -> str:
        return self._member(member_id, "events")

    def metrics(self, member_id: str) -> str:
        return self._member(member_id, "metrics")

    def aggregate(self, member_id: str) -> str:
        return self._member(member_id, "aggregate")

    def fetch(self, member_id: str) -> str:
        """Where a worker asks the proxy for an artifact it lacks (``artifacts/proxy.py``)."""
        return self._member(member_id, "fetch")

    def chunks(self, member_id: str) -> str:
        """Where the proxy sends that worker an artifact's binary chunks (only the proxy
        may publish here on a broker edgeplane secures)."""
        return self._member(member_id, "chunks")

    def fl_update(self, experiment: str, round_no: int | str, worker: str) -> str:
        """Where a training task posts its round's update over MQTT when the coordinator's
        HTTP is unreachable (docs/fl.md): ``{d}/fl/{experiment}/rounds/{round}/updates/
        {worker}``. Under the domain, not a cluster: an experiment id is unique."""
        return f"{self.domain}/fl/{experiment}/rounds/{round_no}/updates/{worker}"

    def fl_ack(self, experiment: str, round_no: int | str, worker: str) -> str:
        """Where the coordinator answers an update that came over MQTT (docs/fl.md):
        ``{d}/fl/{experiment}/rounds/{round}/acks/{worker}``; the client sends it again
        until it is answered."""
        return fl_ack_of(self.fl_update(experiment, round_no, worker))

    def fl_updates(self) -> str:
        """Wildcard subscription for every experiment's updates."""
        return self.fl_update("+", "+", "+")

    def fl_update_of(self, topic: str) -> tuple[str, int, str] | None:
        """``(experiment, round, worker)`` of a :meth:`fl_update` topic, else None."""
        head = f"{self.domain}/fl/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 5 or parts[1] != "rounds" or parts[3] != "updates":
            return None
        experiment, _, round_text, _, worker = parts
        if not (experiment and worker and _ROUND.fullmatch(round_text)):
            return None
        return experiment, int(round_text), worker

    def join(self, nonce: str) -> str:
        """Where a joining member (anonymous, MQTT client id ``nonce``) asks to join.

        At a root it is one level deeper, ``{d}/clusters/join/{nonce}/ask``: a member
        topic is ``{d}/clusters/{c}/{leaf}``, so ``…/join/{nonce}`` would be cluster
        ``join``'s leaf ``{nonce}``, and an anonymous client named ``hello`` could say
        hello for it."""
        if self.root:
            return f"{self.prefix}/join/{nonce}/ask"
        return f"{self.domain}/{self.cluster}/join/{nonce}"

    def join_answer(self, nonce: str) -> str:
        """Where the parent answers that member (only client ``nonce`` may read it)."""
        if self.root:
            return f"{self.prefix}/join/{nonce}/welcome"
        return f"{self.join(nonce)}/welcome"

    def join_nonce(self, topic: str) -> str | None:
        """The nonce of a :meth:`join` topic, else None."""
        head, _, tail = self.join("\0").partition("\0")
        if not (topic.startswith(head) and topic.endswith(tail)):
            return None
        nonce = topic[len(head) : len(topic) - len(tail)]
        return nonce if nonce and "/" not in nonce else None

    def all_members(self, leaf: str) -> str:
        """Wildcard subscription for one leaf of every member."""
        return self._member("+", leaf)

    def member_of(self, topic: str) -> tuple[str, str] | None:
        """``(member_id, leaf)`` of a member topic at this level, else None."""
        prefix = self.prefix + "/"
        if not topic.startswith(prefix):
            return None
        rest = topic[len(prefix) :].split("/")
        if len(rest) == 2 and rest[0] and rest[1]:
            return rest[0], rest[1]
        return None
