"""An experiment as stored: its spec, where it is, each round's outcome, its model versions.

The coordinator writes it after every change that matters (a round opened, an update
taken, a round closed), so a manager that restarts reads it back and resumes the round it
was in. No numpy here: the store reads these documents without the fl extra.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Literal

from pydantic import BaseModel, Field

from edgeplane.fl.spec import ExperimentSpec
from edgeplane.model.secrets import REVEAL

ExperimentState = Literal["running", "completed", "failed", "stopped"]
TERMINAL = frozenset({"completed", "failed", "stopped"})


class RoundRecord(BaseModel):
    round: int
    attempt: int = 0
    state: Literal["open", "closed", "retry", "failed"] = "open"
    #: the selected workers, and the training task each runs
    clients: list[str] = Field(default_factory=list)
    tasks: dict[str, str] = Field(default_factory=dict)
    #: accepted updates: worker → num_samples
    updates: dict[str, int] = Field(default_factory=dict)
    #: each accepted update's full weights, content addressed in the store (``registry``),
    #: so a restarted manager, or another on the store, still aggregates them
    update_refs: dict[str, str] = Field(default_factory=dict)
    rejected: dict[str, int] = Field(default_factory=dict)
    #: wall-clock deadline (seconds since the epoch), so it survives a restart
    deadline: float = 0.0
    #: when (seconds since the epoch) the round's training tasks were submitted, its last
    #: accepted update was taken, and its aggregate was stored as the next version: the
    #: coordinator's own share of a round is ``last_update_at`` → ``closed_at`` → the next
    #: round's ``opened_at`` (docs/fl.md)
    opened_at: float | None = None
    #: when every selected client had been handed the round: ``opened_at`` when they
    #: waited for it already; a long-lived client started for it has it at its first ask
    #: (its process's start is not the round's). ``deadline`` counts from then. None:
    #: not yet, or not known (a per-round client's task; a manager restarted meanwhile)
    ready_at: float | None = None
    last_update_at: float | None = None
    closed_at: float | None = None
    #: the global model's metrics on the held-out test set after this round
    metrics: dict[str, float] = Field(default_factory=dict)
    #: the clients' own mean metrics on their shards
    client_metrics: dict[str, float] = Field(default_factory=dict)


#: each ended round's JSON, by the record's identity (the coordinator writes the document
#: it holds again and again), with what of it may still change: a late update's count
#: (``rejected``) and its score after a restart (``metrics``); nothing else of a round
#: changes once it ended. A record read back from the store is dumped afresh once.
_ENDED: OrderedDict[int, tuple[weakref.ref[RoundRecord], tuple[object, ...], str]] = OrderedDict()
#: at most this many kept (~1 kB each for 4 clients)
ENDED_KEPT = 4096


def _ended_json(record: RoundRecord) -> str:
    mark = (record.state, tuple(record.rejected.items()), tuple(record.metrics.items()))
    found = _ENDED.get(id(record))
    if found is not None and found[0]() is record and found[1] == mark:
        _ENDED.move_to_end(id(record))
        return found[2]
    text = record.model_dump_json()
    _ENDED[id(record)] = (weakref.ref(record), mark, text)
    _ENDED.move_to_end(id(record))
    if len(_ENDED) > ENDED_KEPT:
        _ENDED.popitem(last=False)
    return text


def _zeros() -> dict[str, str | int]:
    return {"source": "zeros"}


class Experiment(BaseModel):
    id: str
    name: str
    project: str = "default"
    spec: ExperimentSpec
    state: ExperimentState = "running"
    reason: str | None = None
    round: int = 0
    rounds: list[RoundRecord] = Field(default_factory=list)
    #: version N's content address (``sha256:…``) at index N; version 0 is the initial model
    versions: list[str] = Field(default_factory=list)
    #: where version 0 came from: ``{"source": "zeros"}``, ``{"source": "upload", "bytes":
    #: N}`` or ``{"source": "experiment", "experiment": ID, "version": N}``
    initial_model: dict[str, str | int] = Field(default_factory=_zeros)
    #: with ``client_tasks: persistent``: each worker's long-lived client task (worker →
    #: task id), made the first round the worker is selected for and again after it ended
    client_tasks: dict[str, str] = Field(default_factory=dict)
    #: the key of its clients' credentials (edgeplane.fl.tokens); never shown
    secret: str = Field(default="", repr=False)
    created_at: float
    updated_at: float

    @property
    def model_version(self) -> int:
        return len(self.versions) - 1

    def stored_json(self) -> str:
        """The document as stored (``model_dump_json(context=REVEAL)``), each round that
        ended dumped once: the coordinator writes the whole document several times a
        round, and dumping every round again made each write cost more with each round
        (a store write 82 µs at round 1, 223 µs at round 60, 655 µs at round 200)."""
        head = self.model_dump_json(context=REVEAL, exclude={"rounds"})
        rounds = ",".join(
            r.model_dump_json() if r.state == "open" else _ended_json(r) for r in self.rounds
        )
        return f'{head[:-1]},"rounds":[{rounds}]}}'

    def public(self) -> dict[str, object]:
        """The API's view (``GET /api/v1/fl/experiments/{id}``)."""
        return {
            "id": self.id,
            "name": self.name,
            "project": self.project,
            "state": self.state,
            "reason": self.reason,
            "round": self.round,
            "rounds": [
                {
                    "round": r.round,
                    "attempt": r.attempt,
                    "state": r.state,
                    "clients": r.clients,
                    "tasks": r.tasks,
                    "updates": len(r.updates),
                    "rejected": r.rejected,
                    "metrics": r.metrics,
                    "client_metrics": r.client_metrics,
                    "opened_at": r.opened_at,
                    "ready_at": r.ready_at,
                    "last_update_at": r.last_update_at,
                    "closed_at": r.closed_at,
                }
                for r in self.rounds
            ],
            "model_version": self.model_version,
            "initial_model": self.initial_model,
            "spec": self.spec.model_dump(mode="json"),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
