"""The coordinator: runs experiments round by round over the manager's task machinery.

Each round it picks ``k`` of the eligible online workers (by the experiment's labels),
starts one training task pinned to each (the client workload with the FL env and a
credential of its own), takes their updates (``offer``), and closes the round as
``rounds.Round`` says: it aggregates the accepted updates into the next global model
version, scores it on the held-out test set, and opens the next round. Everything it
needs to go on is in the store (the experiment, and its blobs: ``registry``), written at
each step: a manager that restarts, or another that takes over, picks up the round where
it was.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import logging
import secrets
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Protocol

import numpy as np
import orjson

from edgeplane import clock as clocks
from edgeplane.errors import Conflict, EdgeplaneError, Invalid, NotFound, Unauthorized
from edgeplane.fl import aggregate, assign, datastore, model, prune, tokens, updates
from edgeplane.fl import mqtt as fl_mqtt
from edgeplane.fl.registry import Blobs
from edgeplane.fl.rounds import Round
from edgeplane.fl.spec import ExperimentSpec, InitialModel
from edgeplane.fl.state import TERMINAL, Experiment, RoundRecord
from edgeplane.manager.facade import Facade
from edgeplane.model import Task, TaskSpec
from edgeplane.model.task import TERMINAL_STATES
from edgeplane.protocol import Topics
from edgeplane.security.broker_auth import Credentials
from edgeplane.store.base import MAX_FL_BLOB
from edgeplane.transport import MqttLink
from edgeplane.transport.link import MessageHandler

log = logging.getLogger(__name__)

#: Longest wait between passes, so a deadline or a worker that came online is seen soon.
TICK_S = 0.5
#: how often the loop looks when no experiment runs
IDLE_TICK_S = 10.0
#: How long a long-lived client (``client_tasks: persistent``) is given to end on its own
#: once its experiment completed (it is told at its next ask, within milliseconds): a
#: client that has not by then is stopped.
CLIENT_EXIT_S = 30.0
#: The largest model handed out inside an assignment (``inline``), raw bytes: a download
#: the less per client and round (the digits model is 2.6 kB); a larger one is fetched
INLINE_MODEL_MAX = 256 * 2**10
API = "/api/v1/fl/experiments"


class Resent(updates.Rejected):
    """An update sent again over MQTT whose first send is on record."""

    def __init__(self, detail: str) -> None:
        super().__init__("duplicate", detail)


#: refusals of an update over MQTT that are not answered: another manager's experiment
#: on a broker they share, and an error of this manager's (the store down, say), which
#: the client's next send may not meet
UNANSWERED = frozenset({"unknown", "error"})


class Identities(Protocol):
    """The broker identities of training tasks (``BrokerAuth``'s, when edgeplane starts
    the broker): each may publish its own round's update and nothing else."""

    def add_fl_clients(self, topics: Mapping[str, str]) -> dict[str, Credentials]: ...
    def remove_fl_clients(self, task_ids: Iterable[str]) -> None: ...
    def keep_fl_clients(self, task_ids: Iterable[str]) -> None: ...


class Coordinator:
    def __init__(
        self, manager: Facade, blob_dir: Path, *, identities: Identities | None = None
    ) -> None:
        """``identities``: None on a broker edgeplane did not start (the operator's to
        secure): training tasks then dial it with no credentials of their own."""
        self.manager = manager
        self.clock: clocks.Clock = manager.clock
        self.store = manager.fl_store
        #: model versions and updates, in the store (``blob_dir``: where managers before
        #: kept them, read and copied into the store)
        self.blobs = Blobs(self.store, blob_dir)
        self.topics = Topics(manager.settings.domain, manager.settings.cluster_id)
        self.identities = identities
        #: the API's URL as workers dial it (set when the API serves)
        self.api_url = ""
        #: the link the MQTT fallback's updates arrive on (``listen``); None: no fallback
        self.link: MqttLink | None = None
        #: MQTT updates by outcome: ``accepted`` or the reason they were refused
        self.mqtt_updates: Counter[str] = Counter()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        #: FedAvg's running sums of the rounds open here, by (experiment, round, attempt),
        #: with the workers whose updates they hold: the close averages them instead of
        #: reading every stored update back (50 updates of 1M parameters: 200 MB read and
        #: decoded while the experiment waits; bench/fl.py). The stored updates stay the
        #: truth: a sum that does not hold exactly the record's updates (a restart, an
        #: update whose save failed) is dropped and the close reads them back.
        self._running: dict[tuple[str, int, int], tuple[aggregate.WeightedSum, set[str]]] = {}
        #: (experiment, round, attempt) -> the long-lived client tasks started for it that
        #: have not asked for it yet (``_handed``)
        self._unready: dict[tuple[str, int, int], set[str]] = {}
        #: what each running experiment with long-lived clients hands them (``assignment``),
        #: made from the experiment as just stored, so nothing is handed out that a restart
        #: would not find; and the event its waiting clients wake on when it changes
        self._handouts: dict[str, assign.Handout] = {}
        self._changed: dict[str, asyncio.Event] = {}
        #: long-lived client tasks known here, and those of them that ended: a worker whose
        #: client ended gets a new one the next round it is selected for
        self._client_ids: set[str] = set()
        self._ended: set[str] = set()
        #: clients of completed experiments that did not end on their own yet
        self._reapers: set[asyncio.Task[None]] = set()
        #: the API stops serving: waiting clients are answered at once
        self._closing = False
        #: each experiment's credential key, and a running one's versions as last stored
        #: (only ever added to): what a client's ask and model download need of it
        self._secrets: dict[str, bytes] = {}
        self._versions: dict[str, tuple[str, ...]] = {}
        #: training tasks seen live, until the manager tells their end (``_task_ended``):
        #: a client's every ask and update read its task back from the store to check
        #: its credential is live; and how many tasks ended, so a task that ended while
        #: it was being read is not taken as live
        self._alive: set[str] = set()
        self._ends = 0
        self._told = False
        #: the model version last decoded (``_model``), by its content address
        self._decoded: tuple[str, dict[str, np.ndarray]] | None = None
        #: each running experiment's document as this process last stored it (``_save``):
        #: an update changes and stores it under the lock without reading it back. Only
        #: the leading process writes experiments (a fenced one writes nothing more), so
        #: what it stored last is what is stored; whatever fails while it holds the lock
        #: drops it (``_holding``), and the next update reads it back
        self._docs: dict[str, Experiment] = {}
        #: the version last handed out inline, by its content address, base64
        self._inlined: tuple[str, str] | None = None
        #: updates of rounds closed here since the last prune (``_prune``); None: prune
        #: every experiment's (the first pass after a start: what a killed manager left)
        self._garbage: set[str] | None = None
        self._prune_lock = asyncio.Lock()

    def listen(self, make_link: Callable[[MessageHandler], MqttLink]) -> None:
        """Take updates over MQTT too, on the link ``make_link`` makes (with a persistent
        session: what clients publish while this manager restarts waits at the broker)."""
        self.link = make_link(self.on_mqtt)

    async def start(self) -> None:
        running = [
            exp
            for exp_id in await self.store.live_fl_experiment_ids()
            if (exp := await self.store.get_fl_experiment(exp_id)) is not None
        ]
        self._client_ids = {
            t for exp in running if exp.state not in TERMINAL for t in exp.client_tasks.values()
        }
        if self.identities is not None:
            # what a killed manager left: identities of tasks no open round has any more
            live = [
                task_id
                for exp in running
                if exp.state not in TERMINAL
                for r in exp.rounds
                if r.state == "open"
                for task_id in r.tasks.values()
            ]
            self.identities.keep_fl_clients([*live, *self._client_ids])
        self.manager.on_task_end(self._task_ended)
        self._told = True
        await self._resume(running)
        for exp in running:
            self._publish(exp)
        self.blobs.start()
        if self.link is not None:
            await self.link.start()
        self._loop = asyncio.create_task(self._run_loop(), name="fl")

    def close(self) -> None:
        """The API stops serving: answer the clients waiting for a round now (they ask
        again, and wait until it serves again)."""
        self._closing = True
        for event in self._changed.values():
            event.set()
        self._changed.clear()

    async def stop(self) -> None:
        self.close()
        for reaper in list(self._reapers):
            reaper.cancel()
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        await self.blobs.stop()
        if self.link is not None:
            await self.link.stop()

    def _task_ended(self, task: Task) -> None:
        """A training task's broker identity ends with it (a no-op for other tasks); a
        long-lived client that ended is replaced the next round its worker is selected for."""
        self._ends += 1
        self._alive.discard(task.id)
        if task.id in self._client_ids:
            self._ended.add(task.id)
        if self.identities is not None:
            self.identities.remove_fl_clients([task.id])

    # the API's calls

    async def create(self, spec: ExperimentSpec, *, project: str = "default") -> Experiment:
        # the workload is a task body: refused here, not at the first round
        await self.manager.admit([self._task_spec(spec, {}, {}, None)], batch=False)
        async with self._lock:  # the put and the write that references it, as a prune waits
            return await self._create(spec, project)

    async def _create(self, spec: ExperimentSpec, project: str) -> Experiment:
        now = self.clock.now()
        first, origin = await self._initial(spec.initial_model)
        exp = Experiment(
            id=clocks.new_id(),
            name=spec.name,
            project=project,
            # the model's bytes are version 0's blob, not part of the stored document
            spec=spec.model_copy(update={"initial_model": None}),
            versions=[first],
            initial_model=origin,
            secret=secrets.token_hex(32),
            created_at=now,
            updated_at=now,
        )
        await self._save(exp)
        self._wake.set()
        return exp

    async def _initial(self, given: InitialModel | None) -> tuple[str, dict[str, str | int]]:
        """Version 0's content address, and where it came from."""
        if given is None:
            ref = await self.blobs.put(updates.encode_raw(model.initial()), keep=True)
            return ref, {"source": "zeros"}
        if given.experiment is not None:
            other = await self.store.get_fl_experiment(given.experiment)
            if other is None:
                raise Invalid(
                    f"experiment {given.experiment} not found", field="initial_model.experiment"
                )
            v = other.model_version if given.version is None else given.version
            if v > other.model_version:
                raise Invalid(
                    f"experiment {other.id} has no model version {v} "
                    f"(its newest is {other.model_version})",
                    field="initial_model.version",
                )
            return other.versions[v], {"source": "experiment", "experiment": other.id, "version": v}
        assert given.data is not None  # InitialModel holds one or the other
        try:
            body = base64.b64decode(given.data, validate=True)
            arrays = updates.model_of(body)
        except (binascii.Error, updates.Rejected) as exc:
            detail = exc.detail if isinstance(exc, updates.Rejected) else "not base64"
            raise Invalid(f"the initial model: {detail}", field="initial_model.data") from None
        raw = updates.encode_raw(arrays)
        if len(raw) > MAX_FL_BLOB:
            raise Invalid(
                f"the initial model is {len(raw)} bytes as float32, over the {MAX_FL_BLOB} "
                "a model may have",
                field="initial_model.data",
            )
        ref = await self.blobs.put(raw, keep=True)
        return ref, {"source": "upload", "bytes": len(body)}

    async def get(self, experiment_id: str) -> Experiment:
        found = await self.store.get_fl_experiment(experiment_id)
        if found is None:
            raise NotFound(f"experiment {experiment_id} not found", field="id")
        exp: Experiment = found
        return exp

    async def list(
        self, *, limit: int, offset: int, projects: Sequence[str] | None = None
    ) -> tuple[list[Experiment], int]:
        """A page (oldest first) of the experiments of ``projects`` (None: all)."""
        if projects is None:
            found: tuple[list[Experiment], int] = await self.store.list_fl_experiments(
                limit=limit, offset=offset
            )
            return found
        # experiments are few: filtered here rather than by a column of the store
        every, _ = await self.store.list_fl_experiments(limit=1_000_000)
        seen = [e for e in every if e.project in projects]
        return seen[offset : offset + limit], len(seen)

    async def stop_experiment(self, experiment_id: str) -> Experiment:
        async with self._holding(experiment_id):
            exp = await self.get(experiment_id)
            if exp.state in TERMINAL:
                return exp
            await self._end(exp, "stopped", "stopped by a user")
            return exp

    async def delete_experiment(self, experiment_id: str) -> None:
        """Delete an ended experiment and every blob of it no other experiment references;
        Conflict naming ``state`` while it runs. The document goes first: a manager killed
        between the two leaves blobs nothing references (space, until deleted by hand),
        never an experiment whose versions are gone."""
        async with self._lock:
            exp = await self.get(experiment_id)
            if exp.state not in TERMINAL:
                raise Conflict(f"experiment {exp.id} is {exp.state}: stop it first", field="state")
            self.manager.journal.check()  # a process that no longer leads writes nothing
            await self.store.delete_fl_experiment(exp.id)
            self._secrets.pop(exp.id, None)
            self._versions.pop(exp.id, None)
            self._docs.pop(exp.id, None)
            theirs = {*exp.versions, *(r for rec in exp.rounds for r in rec.update_refs.values())}
        await self._prune(theirs)

    async def model_bytes(self, exp: Experiment, version: int | None) -> tuple[int, bytes]:
        """Version ``version`` (the newest: None) of ``exp``, which the caller read to
        check who asks (versions are only ever added: it has every one it names)."""
        v = exp.model_version if version is None else version
        if not 0 <= v <= exp.model_version:
            raise NotFound(f"experiment {exp.id} has no model version {v}", field="version")
        return v, await self.blobs.get(exp.versions[v])

    # the clients' calls (a client credential: tokens.Grant)

    async def client(
        self, experiment_id: str, token: str, *, live: bool = True, held: bool = False
    ) -> tuple[Experiment, tokens.Grant]:
        """The experiment and grant of a training task's credential; with ``live``, only
        while its task has not ended. ``held`` (under ``_holding``, to change and store
        it): the document as this process last stored it, if it holds it."""
        exp = self._docs.get(experiment_id) if held else None
        if exp is None:
            exp = await self.get(experiment_id)
        grant = tokens.verify(bytes.fromhex(exp.secret), token)
        if grant.experiment != exp.id:
            raise Unauthorized("the credential is for another experiment")
        if live:
            await self._live(grant)
        return exp, grant

    async def _grant(self, experiment_id: str, token: str) -> tokens.Grant:
        """A live credential's grant, checked with the experiment's key as this process
        knows it (a key never changes): without reading the experiment, which a client's
        every ask and model download did (a read and a parse of the whole document)."""
        secret = self._secrets.get(experiment_id)
        if secret is None:
            exp = await self.get(experiment_id)
            secret = self._secrets[exp.id] = bytes.fromhex(exp.secret)
        grant = tokens.verify(secret, token)
        if grant.experiment != experiment_id:
            raise Unauthorized("the credential is for another experiment")
        await self._live(grant)
        return grant

    async def client_model(
        self, experiment_id: str, token: str, version: int | None
    ) -> tuple[int, bytes]:
        """Version ``version`` (None: the newest) for a client's credential."""
        grant = await self._grant(experiment_id, token)
        refs = self._versions.get(grant.experiment, ())
        if version is not None and version < len(refs):
            return version, await self.blobs.get(refs[version])
        return await self.model_bytes(await self.get(experiment_id), version)

    async def _live(self, grant: tokens.Grant) -> None:
        if grant.task in self._alive:
            return
        ends = self._ends
        try:
            task = await self.manager.get(grant.task)
        except NotFound:
            raise Unauthorized("the credential's task is gone") from None
        if task.state in TERMINAL_STATES:
            raise Unauthorized("the credential expired with its task")
        # no task ended while it was read (and the manager tells this one's end): live
        if self._told and ends == self._ends:
            self._alive.add(grant.task)

    async def shard(self, experiment_id: str, round_no: int, token: str) -> bytes:
        """The client's shard in ``round_no`` (a per-round client's credential names its
        round; a long-lived client's, round 0, is good for any round it is selected for)."""
        # the document as last stored here: a read and parse of it from the store was
        # most of a shard's cost, each client's first round (py-spy under bench/fl.py)
        exp, grant = await self.client(experiment_id, token, held=True)
        if grant.round not in (0, round_no):
            raise Unauthorized(f"the credential is for round {grant.round}, not {round_no}")
        record = _record(exp, round_no)
        if record is None or grant.worker not in record.clients:
            raise Unauthorized("the credential's round is not this experiment's")
        data = exp.spec.data
        index = record.clients.index(grant.worker)
        return _shard_npz(index, len(record.clients), data.split, data.seed)

    async def offer(
        self,
        experiment_id: str,
        round_no: int,
        token: str,
        body: bytes,
        content_type: str,
        *,
        sender: str | None = None,
        attempt: int | None = None,
        resend: bool = False,
    ) -> dict[str, object]:
        """Take a client's update for ``round_no``; updates.Rejected says why not.

        ``attempt``: the attempt of the round it was trained for (a long-lived client's,
        whose one task serves every attempt); one that is not the round's current attempt
        is late (``closed``).

        ``sender``: the worker of the MQTT topic it came on (None: over HTTP). Such an
        update is not refused for its task having ended: the broker may deliver it after
        the client exited (unanswered within its wait, or kept for this manager's
        persistent session). Only its task's broker identity could publish it, and that
        identity is gone with the task.

        ``resend``: the client sent it before, unanswered (over MQTT). When its worker's
        update for the round is on record (the first send taken, the round maybe closed
        by it), it is ``duplicate`` and counted nowhere in the round: the client sends
        again until answered by design."""
        async with self._holding(experiment_id):
            # the credential checked on the document held under the lock, as last stored:
            # read back and parsed for each update, it was 6 % of the coordinator
            # process's samples with long-lived clients (py-spy under bench/fl.py)
            exp, grant = await self.client(experiment_id, token, live=sender is None, held=True)
            if sender is not None and grant.worker != sender:
                raise Unauthorized(f"the credential is worker {grant.worker}'s, not {sender}'s")
            # round 0: a long-lived client's, for any round it is selected for
            if grant.round not in (0, round_no):
                raise Unauthorized(f"the credential is for round {grant.round}, not {round_no}")
            record = _record(exp, round_no)
            if (
                resend
                and record is not None
                and grant.worker in record.updates
                and attempt in (None, record.attempt)
            ):
                raise Resent(f"worker {grant.worker!r}'s update for round {round_no} is on record")
            if record is None or exp.round != round_no or exp.state != "running":
                if record is not None:  # a late update: dropped, counted in its round
                    record.rejected["closed"] = record.rejected.get("closed", 0) + 1
                    await self._save(exp)
                raise updates.Rejected(
                    "closed", f"round {round_no} is not open; the update is dropped"
                )
            machine = _machine(exp, record, self.clock.now())
            try:
                machine.admit(grant.worker, self.clock.now())  # counts its own rejections
                try:
                    if record.tasks.get(grant.worker) != grant.task or (
                        attempt is not None and attempt != record.attempt
                    ):
                        raise updates.Rejected(
                            "closed",
                            f"the update is from an earlier attempt of round {round_no}; dropped",
                        )
                    update = updates.decode(body, content_type)
                    full = updates.check(update, await self._model(exp, exp.model_version))
                    if exp.spec.strategy == "fedavg" and update.num_samples <= 0:
                        raise updates.Rejected(
                            "malformed", "num_samples must be > 0", field="num_samples"
                        )
                except updates.Rejected as exc:
                    machine.reject(exc.reason or "malformed")
                    raise
            except updates.Rejected:
                record.rejected = dict(machine.rejected)
                await self._save(exp)
                raise
            # stored with the write that references it (below, or the close's)
            ref, unstored = await self.blobs.claim(updates.encode_raw(full))
            record.update_refs[grant.worker] = ref
            blobs = [] if unstored is None else [(ref, unstored)]
            # the record stays open until the loop aggregates it (_advance, _close)
            state = machine.accept(grant.worker, max(update.num_samples, 1), self.clock.now())
            record.updates = dict(machine.accepted)
            record.last_update_at = self.clock.now()
            if exp.spec.strategy == "fedavg":
                self._add_running(exp.id, record, grant.worker, full)
            for key, value in update.metrics.items():
                # a running mean of the clients' own metrics
                n = len(record.updates)
                record.client_metrics[key] = (
                    record.client_metrics.get(key, 0.0) * (n - 1) / n + value / n
                )
            if state == "open":
                # nothing the loop acts on (a deadline is on its own tick): every update woke
                # a pass over every experiment, 49 wasted of 50 a round with 50 clients
                await self._save(exp, blobs)
            else:
                # the update that completes the round closes it here, in the one write that
                # stores it, the new version and the next round: waking the loop for it
                # cost a pass (the live experiments read back from the store) and a write
                # more, 5 to 20 ms of a round's turnaround under load (bench/fl.py)
                for digest, data in blobs:  # (the close writes more than once)
                    await self.blobs.store_claimed(digest, data)
                await self._close(exp, record)
                await self._stop_tasks(exp, record, sent=False)
        return {"accepted": True, "round": round_no, "updates": len(record.updates)}

    def _add_running(
        self, experiment_id: str, record: RoundRecord, worker: str, full: updates.Arrays
    ) -> None:
        """Add ``worker``'s accepted update to its round's FedAvg sums."""
        key = (experiment_id, record.round, record.attempt)
        acc, held = self._running.get(key) or (aggregate.WeightedSum(), set())
        if held != set(record.updates) - {worker}:
            self._running.pop(key, None)  # out of step with the record: the close reads
            return
        acc.add(full, record.updates[worker])
        held.add(worker)
        self._running[key] = (acc, held)

    @contextlib.asynccontextmanager
    async def _holding(self, experiment_id: str) -> AsyncIterator[None]:
        """The lock, for changing and storing ``experiment_id``'s document; what raises
        under it drops the document held (``_docs``): it may hold changes not stored."""
        async with self._lock:
            try:
                yield
            except BaseException:
                self._docs.pop(experiment_id, None)
                raise

    def _forget_running(self, experiment_id: str) -> None:
        self._running = {k: v for k, v in self._running.items() if k[0] != experiment_id}
        self._unready = {k: v for k, v in self._unready.items() if k[0] != experiment_id}

    async def on_mqtt(self, topic: str, payload: bytes) -> None:
        """An update that came over MQTT: checked as over HTTP (and its topic's worker
        against its credential); a refused one is logged and counted, per reason, in
        ``mqtt_updates`` and, when its round is known, in the round's ``rejected``."""
        where = self.topics.fl_update_of(topic)
        if where is None:
            self._refused_mqtt("topic", topic, "not an update topic")
            return
        experiment_id, round_no, worker = where
        outcome, detail = await self._take_mqtt(topic, experiment_id, round_no, worker, payload)
        if outcome not in UNANSWERED and self.link is not None:
            # answered, so the client stops sending it again (docs/fl.md, "The MQTT
            # fallback")
            answer = orjson.dumps({"outcome": outcome, "detail": detail})
            await self.link.publish(
                self.topics.fl_ack(experiment_id, round_no, worker), answer, qos=1
            )

    async def _take_mqtt(
        self, topic: str, experiment_id: str, round_no: int, worker: str, payload: bytes
    ) -> tuple[str, str]:
        """Offer the update; ``(outcome, detail)``: ``accepted`` or the refusal's reason."""
        try:
            if len(payload) > fl_mqtt.MAX_UPDATE:
                raise updates.Rejected(
                    "oversize",
                    f"{len(payload)} bytes: over the {fl_mqtt.MAX_UPDATE} an update over MQTT "
                    "may have",
                )
            try:
                frame = fl_mqtt.unframe(payload)
            except updates.Rejected:
                await self._count(experiment_id, round_no, "malformed")
                raise
            await self.offer(
                experiment_id,
                round_no,
                frame.token,
                frame.body,
                frame.content_type,
                sender=worker,
                attempt=frame.attempt,
                resend=frame.resend > 0,
            )
        except Resent as exc:  # the client's own, as it was not answered yet: no warning
            self.mqtt_updates["resent"] += 1
            return "duplicate", exc.detail
        except updates.Rejected as exc:
            if exc.reason == "oversize":
                await self._count(experiment_id, round_no, "oversize")
            return self._refused_mqtt(exc.reason or "malformed", topic, exc.detail)
        except Unauthorized as exc:
            await self._count(experiment_id, round_no, "unauthorized")
            return self._refused_mqtt("unauthorized", topic, exc.detail)
        except NotFound as exc:  # another manager's experiment, on a broker they share
            return self._refused_mqtt("unknown", topic, exc.detail)
        except EdgeplaneError as exc:
            return self._refused_mqtt("error", topic, exc.detail)
        self.mqtt_updates["accepted"] += 1
        return "accepted", ""

    def _refused_mqtt(self, reason: str, topic: str, detail: str) -> tuple[str, str]:
        self.mqtt_updates[reason] += 1
        log.warning(
            "an update over MQTT was refused",
            extra={"topic": topic, "reason": reason, "error": detail},
        )
        return reason, detail

    async def _count(self, experiment_id: str, round_no: int, reason: str) -> None:
        """Count a refusal that ``offer`` did not (its round's, when it has one)."""
        async with self._holding(experiment_id):
            exp = await self.store.get_fl_experiment(experiment_id)
            record = None if exp is None else _record(exp, round_no)
            if exp is None or record is None:
                return
            record.rejected[reason] = record.rejected.get(reason, 0) + 1
            await self._save(exp)

    # the rounds

    async def step(self) -> bool:
        """One pass over the running experiments; True if there were any."""
        # Their ids only: reading every experiment ever run, twice a second, was 2.6 % of
        # the `up` process's samples under `make bench` with no experiment at all.
        live = await self.store.live_fl_experiment_ids()
        for exp_id in live:
            async with self._holding(exp_id):
                fresh = await self.store.get_fl_experiment(exp_id)
                if fresh is not None and fresh.state not in TERMINAL:
                    try:
                        await self._advance(fresh)
                    except EdgeplaneError as exc:
                        self._docs.pop(exp_id, None)  # it may hold changes not stored
                        log.warning(
                            "an experiment's round did not advance",
                            extra={"experiment_id": exp_id, "error": exc.detail},
                        )
        if self._garbage is None or self._garbage:
            pending, self._garbage = self._garbage, set()
            try:
                await self._prune(pending)
            except BaseException:
                self._garbage = None  # what was pending: found again by a full prune
                raise
        return bool(live)

    async def _prune(self, candidates: set[str] | None) -> None:
        """Delete the blobs of ``candidates`` (None: every experiment's garbage, and
        every stored blob) that no experiment references. Every experiment is read under
        the lock a put and the write that references it take, so each reference is
        either read here or written after, by a put this prune then leaves alone
        (``Blobs.pruning``); the deletes run outside the lock (offers wait for none of
        them). A full prune (at start, and after a failed one) also finds the blobs no
        document names: one put before a referencing write that then failed."""
        async with self._prune_lock, self.blobs.pruning():
            async with self._lock:
                every, _ = await self.store.list_fl_experiments(limit=1_000_000)
                wanted = candidates
                if wanted is None:
                    wanted = prune.garbage(every) | await self._stored_digests()
                gone = prune.prunable(every, wanted)
            deleted = await self.blobs.delete(gone) if gone else 0
        if deleted:
            log.info("federated learning blobs pruned", extra={"blobs": deleted})

    async def _stored_digests(self) -> set[str]:
        """Every blob digest in the store, a page at a time."""
        found: set[str] = set()
        after = ""
        while page := await self.store.fl_blob_digests(after):
            found.update(page)
            after = page[-1]
        return found

    async def _advance(self, exp: Experiment) -> None:
        now = self.clock.now()
        record = _record(exp, exp.round)
        if record is None or record.state == "closed":
            await self._next(exp)  # or waits for workers (checked again at the next pass)
            return
        machine = _machine(exp, record, now)
        state = machine.tick(now)
        if state == "closed":
            # the next round opened in this same pass, in the write that closes this one
            # (another pass first reads every experiment back from the store: 2 to 80 ms
            # under load, of a 30 to 90 ms turnaround), and only then the closed round's
            # leftover tasks stopped (a call per client)
            try:
                await self._close(exp, record)
            finally:
                await self._stop_tasks(exp, record, sent=False)
        elif state == "retry":
            await self._stop_tasks(exp, record)
            record.state = "retry"
            if await self._open(exp, record.round, record.attempt + 1):  # or waits
                self._forget(record)
        elif state == "failed":
            record.state = "failed"
            await self._stop_tasks(exp, record)
            await self._end(
                exp,
                "failed",
                f"round {record.round} had {len(record.updates)} updates, fewer than min_clients",
            )

    async def _next(self, exp: Experiment) -> bool:
        """After a closed round (or none yet): the next round, or the experiment ends;
        False when the next round waits for workers (nothing written)."""
        if exp.round >= exp.spec.rounds:
            await self._end(exp, "completed", None)
            return True
        return await self._open(exp, exp.round + 1, 0)

    async def _open(self, exp: Experiment, round_no: int, attempt: int) -> bool:
        """Open ``round_no``'s ``attempt``: stored with whatever else changed in ``exp``
        (the round that closed), in one write. False, writing nothing, while fewer than
        ``min_clients`` workers are eligible."""
        self._forget_running(exp.id)  # a round closed or given up: its sums are done with
        spec = exp.spec
        wanted = spec.select.labels
        eligible = [
            w
            for w in self.manager.schedulable()
            if all(w.labels.get(k) == v for k, v in wanted.items())
            and (spec.workload.get("runtime", "wasm") in w.runtimes)
        ]
        if len(eligible) < spec.min_clients:
            return False
        rng = np.random.default_rng(zlib.crc32(f"{exp.id}:{round_no}:{attempt}".encode()))
        picked = sorted(w.id for w in eligible)
        chosen = [
            picked[i]
            for i in sorted(
                rng.choice(len(picked), min(spec.clients_per_round, len(picked)), replace=False)
            )
        ]
        record = RoundRecord(
            round=round_no,
            attempt=attempt,
            clients=chosen,
            deadline=self.clock.now() + spec.round_timeout_s,
        )
        exp.rounds.append(record)
        exp.round = round_no
        if spec.client_tasks == "persistent":
            # a worker keeps its client while that task lives; one whose client ended (or
            # that has none yet) gets a new one
            fresh = [w for w in chosen if not self._client_live(exp, w)]
            for worker in fresh:
                exp.client_tasks[worker] = clocks.new_id()
                self._client_ids.add(exp.client_tasks[worker])
            record.tasks = {worker: exp.client_tasks[worker] for worker in chosen}
            specs = self._client_specs(exp, fresh)
            ids = [exp.client_tasks[w] for w in fresh]
            if not fresh:
                # the clients wait already: the write that stores the round hands it out
                # (``assignment``), with no task to submit; that is the moment it is out,
                # stamped as that write is made (a write of its own after it was one
                # more a round, with the score's: see _close)
                record.opened_at = record.ready_at = self.clock.now()
                await self._save(exp)
                return True
        else:
            record.tasks = {worker: clocks.new_id() for worker in chosen}
            ids = [record.tasks[w] for w in chosen]
            specs = self._round_specs(exp, record, chosen)
        # credentials made before the round is stored: a restart keeps those of its open
        # rounds (start); the round is stored before its tasks start: a restart finds it
        # and starts those that are missing (_resume)
        await self._save(exp)
        await self.manager.submit_specs(specs, ids=ids, origin="fl")
        # the moment the clients were handed their work (the tasks stored, the scheduler told)
        record.opened_at = self.clock.now()
        if spec.client_tasks == "persistent":  # ready once the new clients asked (_handed)
            self._unready[(exp.id, round_no, attempt)] = set(ids)
        await self._save(exp)
        return True

    def _client_live(self, exp: Experiment, worker: str) -> bool:
        task_id = exp.client_tasks.get(worker)
        return task_id is not None and task_id not in self._ended

    def _round_specs(
        self, exp: Experiment, record: RoundRecord, workers: Sequence[str]
    ) -> Sequence[TaskSpec]:
        """The training tasks of ``workers`` in ``record`` (their ids are in it), each with
        its env and credentials (new broker identities, replacing any they had)."""
        spec, round_no = exp.spec, record.round
        secret = bytes.fromhex(exp.secret)
        topics = {record.tasks[w]: self.topics.fl_update(exp.id, round_no, w) for w in workers}
        mqtt = {} if self.identities is None else self.identities.add_fl_clients(topics)
        base = f"{self.api_url}{API}/{exp.id}"
        specs: list[TaskSpec] = []
        for worker in workers:
            task_id = record.tasks[worker]
            env = {
                "ROUND_ID": str(round_no),
                "EXPERIMENT_ID": exp.id,
                "MODEL_URI": f"{base}/model?version={exp.model_version}",
                "MODEL_REGISTRY_URL": f"{base}/model",
                "DATA_STORE_URL": f"{base}/rounds/{round_no}/data",
                "COORDINATOR_URL": f"{base}/rounds/{round_no}/updates",
                "HYPERPARAMS": orjson.dumps(spec.hyperparams).decode(),
            }
            token = tokens.issue(secret, tokens.Grant(exp.id, round_no, worker, task_id))
            secret_env = {"FL_TOKEN": token}
            if self.link is not None:  # the MQTT fallback (docs/fl.md)
                env["FL_MQTT_URL"] = self.manager.broker_url
                env["FL_MQTT_TOPIC"] = topics[task_id]
                if task_id in mqtt:
                    env["FL_MQTT_USERNAME"] = mqtt[task_id].username
                    secret_env["FL_MQTT_PASSWORD"] = mqtt[task_id].password
            specs.append(self._task_spec(spec, env, secret_env, worker))
        return specs

    def _client_specs(self, exp: Experiment, workers: Sequence[str]) -> Sequence[TaskSpec]:
        """The long-lived client tasks of ``workers`` (their ids in ``exp.client_tasks``):
        a credential for round 0 (any round the worker is selected for), and a broker
        identity that may publish the worker's update of any round of the experiment."""
        spec = exp.spec
        secret = bytes.fromhex(exp.secret)
        ids = {w: exp.client_tasks[w] for w in workers}
        topics = {ids[w]: self.topics.fl_update(exp.id, "+", w) for w in workers}
        mqtt = {} if self.identities is None else self.identities.add_fl_clients(topics)
        base = f"{self.api_url}{API}/{exp.id}"
        specs: list[TaskSpec] = []
        for worker in workers:
            task_id = ids[worker]
            env = {
                "EXPERIMENT_ID": exp.id,
                "FL_ASSIGNMENT_URL": f"{base}/assignment",
                "MODEL_REGISTRY_URL": f"{base}/model",
                "HYPERPARAMS": orjson.dumps(spec.hyperparams).decode(),
            }
            token = tokens.issue(secret, tokens.Grant(exp.id, 0, worker, task_id))
            secret_env = {"FL_TOKEN": token}
            if self.link is not None:  # the MQTT fallback (docs/fl.md)
                env["FL_MQTT_URL"] = self.manager.broker_url
                if task_id in mqtt:
                    env["FL_MQTT_USERNAME"] = mqtt[task_id].username
                    secret_env["FL_MQTT_PASSWORD"] = mqtt[task_id].password
            specs.append(self._task_spec(spec, env, secret_env, worker))
        return specs

    async def assignment(
        self,
        experiment_id: str,
        token: str,
        after: assign.Cursor,
        wait_s: float,
        *,
        inline: bool = False,
    ) -> dict[str, object]:
        """What a long-lived client, last given ``after`` (round, attempt), is to do: the
        round it is selected for (``round`` and its URLs), the experiment's end
        (``state`` not ``running``: the client exits), or, after ``wait_s`` with neither,
        ``round`` null (it asks again). The credential is checked first, and live.
        ``inline``: with the round's model (``model``, base64 of the raw ``f32``
        encoding) when it is at most ``INLINE_MODEL_MAX`` bytes."""
        grant = await self._grant(experiment_id, token)
        if grant.round != 0:
            raise Unauthorized("a per-round client's credential has no assignments")
        deadline = self.clock.monotonic() + wait_s
        handout = self._handouts.get(grant.experiment) or _handout(await self.get(experiment_id))
        while True:
            work = assign.for_client(handout, grant.worker, grant.task, after)
            if isinstance(work, str):
                return {"state": work, "round": None}
            if work is not None:
                await self._handed(grant.experiment, grant.task, work)
                answer = self._work(grant.experiment, grant.worker, work)
                if inline:
                    refs = self._versions.get(grant.experiment, ())
                    if work.model_version < len(refs):
                        encoded = await self._inline(refs[work.model_version])
                        if encoded is not None:
                            answer["model"] = encoded
                return answer
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0 or self._closing:
                return {"state": "running", "round": None}
            changed = self._changed.setdefault(grant.experiment, asyncio.Event())
            with self.manager.holds.hold(), contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
            handout = self._handouts.get(grant.experiment, handout)

    async def _handed(self, experiment_id: str, task: str, work: assign.Work) -> None:
        """``task``, a long-lived client started for this round, was handed it: the
        last of them to be makes the round ready (``ready_at``), its deadline from then.
        Like Flower's server, which starts round 1 once its clients are connected, a
        round does not spend its ``round_timeout_s`` on their processes' start."""
        key = (experiment_id, work.round, work.attempt)
        waiting = self._unready.get(key)
        if waiting is None or task not in waiting:
            return
        waiting.discard(task)
        if waiting:
            return
        del self._unready[key]
        try:
            async with self._holding(experiment_id):
                exp = self._docs.get(experiment_id) or await self.get(experiment_id)
                record = _record(exp, work.round)
                if record is None or record.attempt != work.attempt or record.state != "open":
                    return
                now = self.clock.now()
                record.ready_at = now
                record.deadline = max(record.deadline, now + exp.spec.round_timeout_s)
                await self._save(exp)
        except EdgeplaneError as exc:  # the round goes on from when it was stored
            log.warning(
                "a round's start was not stored",
                extra={"experiment_id": experiment_id, "error": exc.detail},
            )

    async def _inline(self, ref: str) -> str | None:
        """A version's bytes, base64, if small enough to hand out inline: read and encoded
        once, for every client of the round asks for the same one."""
        if self._inlined is not None and self._inlined[0] == ref:
            return self._inlined[1]
        path_size = await self.blobs.size(ref)
        if path_size is None or path_size > INLINE_MODEL_MAX:
            return None
        encoded = base64.b64encode(await self.blobs.get(ref)).decode()
        self._inlined = (ref, encoded)
        return encoded

    def _work(self, experiment_id: str, worker: str, work: assign.Work) -> dict[str, object]:
        base = f"{self.api_url}{API}/{experiment_id}"
        r = work.round
        return {
            "state": "running",
            "round": r,
            "attempt": work.attempt,
            "model_version": work.model_version,
            "model_uri": f"{base}/model?version={work.model_version}",
            "data_url": f"{base}/rounds/{r}/data",
            "shard": [work.index, work.count],
            "update_url": f"{base}/rounds/{r}/updates?attempt={work.attempt}",
            "mqtt_topic": self.topics.fl_update(experiment_id, r, worker) if self.link else None,
        }

    def _publish(self, exp: Experiment) -> None:
        """Hand out what ``exp`` (as just stored) says to its long-lived clients; wake
        those waiting when it changed."""
        if exp.spec.client_tasks != "persistent":
            return
        handout = _handout(exp)
        if self._handouts.get(exp.id) == handout:
            return
        # an ended experiment's too (its state, a few bytes): a client asks once more
        self._handouts[exp.id] = handout
        changed = self._changed.pop(exp.id, None)
        if changed is not None:
            changed.set()

    async def _resume(self, running: Sequence[Experiment]) -> None:
        """Start the training tasks of open rounds (and the long-lived clients) that a
        manager killed between storing them and submitting them never started, and score
        a round it stored but did not score (once, when this process starts)."""
        for exp in running:
            if exp.state in TERMINAL:
                continue
            if await self._rescore(exp):
                with contextlib.suppress(EdgeplaneError):  # scored again at the next start
                    await self._save(exp)
            if exp.spec.client_tasks == "persistent":
                await self._resume_clients(exp)
                continue
            record = _record(exp, exp.round)
            if record is None or record.state != "open":
                continue
            missing = []
            for worker, task_id in record.tasks.items():
                try:
                    await self.manager.get(task_id)
                except NotFound:
                    missing.append(worker)
            if not missing:
                continue
            await self._start_missing(
                exp,
                "training tasks",
                partial(self._round_specs, exp, record, missing),
                [record.tasks[w] for w in missing],
            )

    async def _resume_clients(self, exp: Experiment) -> None:
        """The long-lived clients: those never submitted are; those that ended while this
        manager was down are replaced the next round their worker is selected for."""
        missing = []
        for worker, task_id in exp.client_tasks.items():
            try:
                task = await self.manager.get(task_id)
            except NotFound:
                missing.append(worker)
                continue
            if task.state in TERMINAL_STATES:
                self._ended.add(task_id)
        if not missing:
            return
        await self._start_missing(
            exp,
            "long-lived clients",
            partial(self._client_specs, exp, missing),
            [exp.client_tasks[w] for w in missing],
        )

    async def _start_missing(
        self,
        exp: Experiment,
        what: str,
        specs: Callable[[], Sequence[TaskSpec]],
        ids: Sequence[str],
    ) -> None:
        """Submit the tasks a restart found missing (never submitted before it)."""
        log.info(
            f"starting the {what} a restart found missing",
            extra={"experiment_id": exp.id, "round": exp.round, "tasks": len(ids)},
        )
        try:
            await self.manager.submit_specs(specs(), ids=ids, origin="fl")
        except EdgeplaneError as exc:  # the round then ends at its deadline, as it would
            log.warning(
                f"the missing {what} could not be started",
                extra={"experiment_id": exp.id, "error": exc.detail},
            )

    async def _rescore(self, exp: Experiment) -> bool:
        """Score the newest version if a killed manager stored it but not its score (the
        round is handed out before it is scored: ``_close``); whether it did."""
        closed = [r for r in exp.rounds if r.state == "closed"]
        if closed and not closed[-1].metrics and len(closed) == exp.model_version:
            self._score(exp, closed[-1], await self._model(exp, exp.model_version))
            return bool(closed[-1].metrics)
        return False

    def _task_spec(
        self,
        spec: ExperimentSpec,
        env: dict[str, str],
        secret_env: dict[str, str],
        worker: str | None,
    ) -> TaskSpec:
        body = dict(spec.workload)
        body["env"] = {**dict(body.get("env") or {}), **env}
        body["secret_env"] = {**dict(body.get("secret_env") or {}), **secret_env}
        body["name"] = body.get("name") or f"fl-{spec.name}"
        body["worker_id"] = worker
        body["start"] = True
        body["metadata"] = {**dict(body.get("metadata") or {}), "fl_experiment": spec.name}
        try:
            return TaskSpec.model_validate(body)
        except ValueError as exc:
            raise Invalid(f"workload is not a valid task body: {exc}", field="workload") from None

    async def _close(self, exp: Experiment, record: RoundRecord) -> None:
        """Aggregate the round, score it and store the result as the next version, in
        the write that opens the next round (or ends the experiment). The version's blob
        is written before that write, so no client is handed a version that is not
        there."""
        workers = sorted(record.update_refs)
        running = self._running.pop((exp.id, record.round, record.attempt), None)
        if exp.spec.strategy == "fedavg" and running is not None and running[1] == set(workers):
            merged = running[0].mean()
        else:
            # one stored update decoded at a time, as FedAvg adds it (aggregate.fedavg)
            ups = self.blobs.each(record.update_refs[w] for w in workers)
            merged = await aggregate.combine_each(
                exp.spec.strategy, ups, [record.updates[w] for w in workers]
            )
        exp.versions.append(await self.blobs.put(updates.encode_raw(merged), keep=True))
        record.state = "closed"
        record.closed_at = self.clock.now()
        # scored in the write that opens the next round: the digits model's score is
        # 0.07 ms, its write of its own after the round was out was a fifth of a round's
        # writes (bench/fl.py); a model of the user's own is not scored (_score)
        self._score(exp, record, merged)
        if exp.round >= exp.spec.rounds:
            await self._end(exp, "completed", None)
        elif not await self._open(exp, exp.round + 1, 0):
            await self._save(exp)  # the next round waits for workers
        self._forget(record)  # stored with its version: its updates are done with
        log.info(
            "a round closed",
            extra={
                "experiment_id": exp.id,
                "round": record.round,
                "accuracy": record.metrics.get("accuracy"),
            },
        )

    def _score(self, exp: Experiment, record: RoundRecord, merged: updates.Arrays) -> None:
        if model.fits(merged) is None:
            test = datastore.test_set(exp.spec.data.seed)
            record.metrics = model.evaluate(merged, test.x, test.y)
        # else: a model of the user's own (initial_model) that the held-out digits cannot
        # score; the clients' own metrics are all there is

    async def _stop_tasks(self, exp: Experiment, record: RoundRecord, *, sent: bool = True) -> None:
        """Revoke the round's broker identities and stop its tasks; without ``sent``, not
        those whose update was taken: they are ending on their own (stopped, a client
        that exits just after posting would end cancelled, without its output). Long-lived
        clients go on to the next round: they are stopped with the experiment (``_end``)."""
        if exp.spec.client_tasks == "persistent":
            return
        if self.identities is not None:
            self.identities.remove_fl_clients(record.tasks.values())
        for worker, task_id in record.tasks.items():
            if not sent and worker in record.updates:
                continue
            with contextlib.suppress(EdgeplaneError):
                await self.manager.stop_task(task_id)

    async def _end(self, exp: Experiment, state: str, reason: str | None) -> None:
        self._forget_running(exp.id)
        record = _record(exp, exp.round)
        if record is not None and record.state == "open":
            await self._stop_tasks(exp, record)
        exp.state = state  # type: ignore[assignment]
        exp.reason = reason
        await self._save(exp)  # the long-lived clients are told at once (``assignment``)
        if record is not None:
            self._forget(record)
        clients = list(exp.client_tasks.values())
        if not clients:
            return
        if state == "completed":
            # they end on their own, told within milliseconds; stopped, one still sending
            # its last output would end cancelled
            reaper = asyncio.create_task(self._stop_later(clients), name="fl-clients")
            self._reapers.add(reaper)
            reaper.add_done_callback(self._reapers.discard)
        else:
            await self._stop_clients(clients)

    def _forget(self, record: RoundRecord) -> None:
        """``record``'s updates, stored as no longer open, are pruned at the next pass."""
        if self._garbage is not None:
            self._garbage.update(record.update_refs.values())

    async def _stop_later(self, task_ids: Sequence[str]) -> None:
        await asyncio.sleep(CLIENT_EXIT_S)
        await self._stop_clients(task_ids)

    async def _stop_clients(self, task_ids: Sequence[str]) -> None:
        for task_id in task_ids:
            self._client_ids.discard(task_id)
            if task_id in self._ended:
                self._ended.discard(task_id)
                continue
            with contextlib.suppress(EdgeplaneError):
                task = await self.manager.get(task_id)
                if task.state not in TERMINAL_STATES:
                    await self.manager.stop_task(task_id)

    async def _model(self, exp: Experiment, version: int) -> dict[str, np.ndarray]:
        """A version's arrays, read only; the last one read is kept: each update is
        checked against the round's model, which was read and decoded once per update."""
        ref = exp.versions[version]
        if self._decoded is not None and self._decoded[0] == ref:
            return self._decoded[1]
        arrays = updates.decode(await self.blobs.get(ref)).arrays
        for array in arrays.values():
            array.setflags(write=False)
        self._decoded = (ref, arrays)
        return arrays

    async def _save(self, exp: Experiment, blobs: Sequence[tuple[str, bytes]] = ()) -> None:
        """Store ``exp`` (and ``blobs`` it references, in the same write)."""
        # held once stored: after a write that fails, the store is the one truth
        self._docs.pop(exp.id, None)
        exp.updated_at = self.clock.now()
        self.manager.journal.check()  # a process that no longer leads writes nothing
        await self.store.save_fl_experiment(exp, blobs)
        if exp.state not in TERMINAL:
            self._docs[exp.id] = exp
        if exp.state in TERMINAL:
            self._versions.pop(exp.id, None)
        elif len(self._versions.get(exp.id, ())) != len(exp.versions):
            self._versions[exp.id] = tuple(exp.versions)
        self._publish(exp)

    async def _run_loop(self) -> None:
        while True:
            busy = True
            # cleared before the pass, not after it: a wake set during the pass (an update
            # that completes a round, taken while the pass ran) starts the next pass at
            # once. Cleared after, it was lost, and rounds waited out TICK_S between their
            # close and the next round's tasks (510 of 515 ms of turnaround, bench/fl.py)
            self._wake.clear()
            try:
                busy = await self.step()
            except EdgeplaneError as exc:
                log.warning("federated learning waits", extra={"error": exc.detail})
            except Exception:
                log.exception("a federated learning pass failed")
            # Nothing running: only a new experiment (create wakes the loop) starts one;
            # the slow tick is a backstop, not a need.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S if busy else IDLE_TICK_S)


@lru_cache(maxsize=32)
def _shard_npz(index: int, count: int, split: str, seed: int) -> bytes:
    """A shard as ``.npz``: the same bytes for every round its selection stays the same
    (a digits shard is at most 370 kB, 1,437 samples: 32 of them at most 12 MB)."""
    part = datastore.shard(index, count, split=split, seed=seed)
    buf = io.BytesIO()
    np.savez(buf, x=part.x, y=part.y)
    return buf.getvalue()


def _record(exp: Experiment, round_no: int) -> RoundRecord | None:
    """The round's current attempt."""
    for record in reversed(exp.rounds):
        if record.round == round_no:
            return record
    return None


def _machine(exp: Experiment, record: RoundRecord, now: float) -> Round:
    """The round's state machine, rebuilt from its record (wall clock: deadlines survive a
    restart)."""
    spec = exp.spec
    machine = Round(
        number=record.round,
        selected=frozenset(record.clients),
        k=min(spec.clients_per_round, len(record.clients)),
        min_clients=spec.min_clients,
        deadline=record.deadline,
        retries_left=spec.round_retries - record.attempt if spec.on_short == "retry" else 0,
        state=record.state if record.state in ("open", "closed") else "open",
        accepted=dict(record.updates),
    )
    machine.rejected.update(record.rejected)
    return machine


def _handout(exp: Experiment) -> assign.Handout:
    """What ``exp`` hands its long-lived clients: its open round's attempt, if any."""
    if exp.state != "running":
        return assign.Handout(exp.state)
    record = _record(exp, exp.round)
    if record is None or record.state != "open":
        return assign.Handout("running")
    return assign.Handout(
        "running",
        round=record.round,
        attempt=record.attempt,
        clients=tuple(record.clients),
        tasks=dict(record.tasks),
        model_version=exp.model_version,
    )
