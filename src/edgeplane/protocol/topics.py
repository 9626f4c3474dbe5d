"""MQTT topic names (DESIGN §4). The only place that spells a topic.

Both levels use the same leaves under a different prefix: a cluster's workers live under
``{d}/{c}/workers/{w}/…`` on the cluster broker, the clusters of a root under
``{d}/clusters/{c}/…`` on the root broker. A cluster may therefore not be named
``clusters``.
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT_SEGMENT = "clusters"


@dataclass(frozen=True)
class Topics:
    """Topics between a parent and its members: a manager's workers (the default) or,
    with :meth:`for_root`, a root's clusters."""

    domain: str = "edgeplane"
    cluster: str = "local"
    root: bool = False

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
