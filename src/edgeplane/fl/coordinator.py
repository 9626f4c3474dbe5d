"""The coordinator: runs experiments round by round over the manager's task machinery.

Each round it picks ``k`` of the eligible online workers (by the experiment's labels),
starts one training task pinned to each (the client workload with the FL env and a
credential of its own), takes their updates (``offer``), and closes the round as
``rounds.Round`` says: it aggregates the accepted updates into the next global model
version, scores it on the held-out test set, and opens the next round. Everything it
needs to go on is in the stored experiment (and the blob directory), written at each
step: a manager that restarts picks up the round where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson

from edgeplane import clock as clocks
from edgeplane.errors import EdgeplaneError, Invalid, NotFound, Unauthorized
from edgeplane.fl import aggregate, datastore, model, tokens, updates
from edgeplane.fl.registry import Blobs
from edgeplane.fl.rounds import Round
from edgeplane.fl.spec import ExperimentSpec
from edgeplane.fl.state import TERMINAL, Experiment, RoundRecord
from edgeplane.manager.facade import Facade
from edgeplane.model import TaskSpec
from edgeplane.model.task import TERMINAL_STATES

log = logging.getLogger(__name__)

#: Longest wait between passes, so a deadline or a worker that came online is seen soon.
TICK_S = 0.5
API = "/api/v1/fl/experiments"


class Coordinator:
    def __init__(self, manager: Facade, blob_dir: Path) -> None:
        self.manager = manager
        self.clock: clocks.Clock = manager.clock
        self.blobs = Blobs(blob_dir)
        self.store = manager.fl_store
        #: the API's URL as workers dial it (set when the API serves)
        self.api_url = ""
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

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._run_loop(), name="fl")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    # the API's calls

    async def create(self, spec: ExperimentSpec, *, project: str = "default") -> Experiment:
        # the workload is a task body: refused here, not at the first round
        await self.manager.admit([self._task_spec(spec, {}, {}, None)], batch=False)
        now = self.clock.now()
        first = self.blobs.put(updates.encode_raw(model.initial()))
        exp = Experiment(
            id=clocks.new_id(),
            name=spec.name,
            project=project,
            spec=spec,
            versions=[first],
            secret=secrets.token_hex(32),
            created_at=now,
            updated_at=now,
        )
        await self._save(exp)
        self._wake.set()
        return exp

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
        async with self._lock:
            exp = await self.get(experiment_id)
            if exp.state in TERMINAL:
                return exp
            await self._end(exp, "stopped", "stopped by a user")
            return exp

    def model_bytes(self, exp: Experiment, version: int | None) -> tuple[int, bytes]:
        """Version ``version`` (the newest: None) of ``exp``, which the caller read to
        check who asks (versions are only ever added: it has every one it names)."""
        v = exp.model_version if version is None else version
        if not 0 <= v <= exp.model_version:
            raise NotFound(f"experiment {exp.id} has no model version {v}", field="version")
        return v, self.blobs.get(exp.versions[v])

    # the clients' calls (a client credential: tokens.Grant)

    async def client(self, experiment_id: str, token: str) -> tuple[Experiment, tokens.Grant]:
        """The experiment and grant of a live training task's credential."""
        exp = await self.get(experiment_id)
        grant = tokens.verify(bytes.fromhex(exp.secret), token)
        if grant.experiment != exp.id:
            raise Unauthorized("the credential is for another experiment")
        try:
            task = await self.manager.get(grant.task)
        except NotFound:
            raise Unauthorized("the credential's task is gone") from None
        if task.state in TERMINAL_STATES:
            raise Unauthorized("the credential expired with its task")
        return exp, grant

    async def shard(self, experiment_id: str, token: str) -> bytes:
        exp, grant = await self.client(experiment_id, token)
        record = _record(exp, grant.round)
        if record is None or grant.worker not in record.clients:
            raise Unauthorized("the credential's round is not this experiment's")
        data = exp.spec.data
        part = datastore.shard(
            record.clients.index(grant.worker),
            len(record.clients),
            split=data.split,
            seed=data.seed,
        )
        buf = io.BytesIO()
        np.savez(buf, x=part.x, y=part.y)
        return buf.getvalue()

    async def offer(
        self, experiment_id: str, round_no: int, token: str, body: bytes, content_type: str
    ) -> dict[str, object]:
        """Take a client's update for ``round_no``; updates.Rejected says why not."""
        async with self._lock:
            # the credential checked on the document read under the lock: one read of it
            # per update, not two (each read parses the whole experiment; bench/fl.py)
            exp, grant = await self.client(experiment_id, token)
            if grant.round != round_no:
                raise Unauthorized(f"the credential is for round {grant.round}, not {round_no}")
            record = _record(exp, round_no)
            if record is None or exp.round != round_no or exp.state != "running":
                raise updates.Rejected(
                    "closed", f"round {round_no} is not open; the update is dropped"
                )
            machine = _machine(exp, record, self.clock.now())
            try:
                machine.admit(grant.worker, self.clock.now())  # counts its own rejections
                try:
                    update = updates.decode(body, content_type)
                    full = updates.check(update, self._model(exp, exp.model_version))
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
            record.update_refs[grant.worker] = self.blobs.put(updates.encode_raw(full))
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
            await self._save(exp)
        if state != "open":
            # the loop closes the round now; an update that leaves it open changes nothing
            # the loop acts on (its deadline is on its own tick): every update woke a pass
            # over every experiment, 49 wasted of 50 a round with 50 clients (bench/fl.py)
            self._wake.set()
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

    def _forget_running(self, experiment_id: str) -> None:
        self._running = {k: v for k, v in self._running.items() if k[0] != experiment_id}

    # the rounds

    async def step(self) -> None:
        """One pass over the running experiments."""
        running, _ = await self.store.list_fl_experiments(limit=100_000)
        for exp in running:
            if exp.state in TERMINAL:
                continue
            async with self._lock:
                fresh = await self.store.get_fl_experiment(exp.id)
                if fresh is not None and fresh.state not in TERMINAL:
                    try:
                        await self._advance(fresh)
                    except EdgeplaneError as exc:
                        log.warning(
                            "an experiment's round did not advance",
                            extra={"experiment_id": exp.id, "error": exc.detail},
                        )

    async def _advance(self, exp: Experiment) -> None:
        now = self.clock.now()
        record = _record(exp, exp.round)
        if record is None or record.state == "closed":
            await self._next(exp)
            return
        machine = _machine(exp, record, now)
        state = machine.tick(now)
        if state == "closed":
            await self._close(exp, record)
            # the next round in this same pass (another pass first reads every experiment
            # back from the store: 2 to 80 ms under load, of a 30 to 90 ms turnaround),
            # and only then the closed round's leftover tasks stopped (a call per client)
            try:
                await self._next(exp)
            finally:
                await self._stop_tasks(record)
        elif state == "retry":
            await self._stop_tasks(record)
            record.state = "retry"
            await self._open(exp, record.round, record.attempt + 1)
        elif state == "failed":
            record.state = "failed"
            await self._stop_tasks(record)
            await self._end(
                exp,
                "failed",
                f"round {record.round} had {len(record.updates)} updates, fewer than min_clients",
            )

    async def _next(self, exp: Experiment) -> None:
        """After a closed round (or none yet): the next round, or the experiment ends."""
        if exp.round >= exp.spec.rounds:
            await self._end(exp, "completed", None)
        else:
            await self._open(exp, exp.round + 1, 0)

    async def _open(self, exp: Experiment, round_no: int, attempt: int) -> None:
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
            return  # waits for workers (checked again at the next pass)
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
        secret = bytes.fromhex(exp.secret)
        task_specs = []
        ids = []
        for worker in chosen:
            task_id = clocks.new_id()
            base = f"{self.api_url}{API}/{exp.id}"
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
            task_specs.append(self._task_spec(spec, env, {"FL_TOKEN": token}, worker))
            ids.append(task_id)
            record.tasks[worker] = task_id
        # persisted before the tasks start: a restart finds the round and its tasks
        await self._save(exp)
        await self.manager.submit_specs(task_specs, ids=ids, origin="fl")
        # the moment the clients were handed their work (the tasks stored, the scheduler told)
        record.opened_at = self.clock.now()
        await self._save(exp)

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
        workers = sorted(record.update_refs)
        running = self._running.pop((exp.id, record.round, record.attempt), None)
        if exp.spec.strategy == "fedavg" and running is not None and running[1] == set(workers):
            merged = running[0].mean()
        else:
            # one stored update decoded at a time, as FedAvg adds it (aggregate.fedavg)
            ups = (updates.decode(self.blobs.get(record.update_refs[w])).arrays for w in workers)
            merged = aggregate.combine(exp.spec.strategy, ups, [record.updates[w] for w in workers])
        exp.versions.append(self.blobs.put(updates.encode_raw(merged)))
        test = datastore.test_set(exp.spec.data.seed)
        record.metrics = model.evaluate(merged, test.x, test.y)
        record.state = "closed"
        record.closed_at = self.clock.now()
        await self._save(exp)
        log.info(
            "a round closed",
            extra={
                "experiment_id": exp.id,
                "round": record.round,
                "accuracy": record.metrics["accuracy"],
            },
        )

    async def _stop_tasks(self, record: RoundRecord) -> None:
        for task_id in record.tasks.values():
            with contextlib.suppress(EdgeplaneError):
                await self.manager.stop_task(task_id)

    async def _end(self, exp: Experiment, state: str, reason: str | None) -> None:
        self._forget_running(exp.id)
        record = _record(exp, exp.round)
        if record is not None and record.state == "open":
            await self._stop_tasks(record)
        exp.state = state  # type: ignore[assignment]
        exp.reason = reason
        await self._save(exp)

    def _model(self, exp: Experiment, version: int) -> dict[str, np.ndarray]:
        return updates.decode(self.blobs.get(exp.versions[version])).arrays

    async def _save(self, exp: Experiment) -> None:
        exp.updated_at = self.clock.now()
        self.manager.journal.check()  # a process that no longer leads writes nothing
        await self.store.save_fl_experiment(exp)

    async def _run_loop(self) -> None:
        while True:
            # cleared before the pass, not after it: a wake set during the pass (an update
            # that completes a round, taken while the pass ran) starts the next pass at
            # once. Cleared after, it was lost, and rounds waited out TICK_S between their
            # close and the next round's tasks (510 of 515 ms of turnaround, bench/fl.py)
            self._wake.clear()
            try:
                await self.step()
            except EdgeplaneError as exc:
                log.warning("federated learning waits", extra={"error": exc.detail})
            except Exception:
                log.exception("a federated learning pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)


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
