"""Leases and fenced writes on every store backend (edgeplane.store.leases)."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from edgeplane.errors import Fenced, Invalid
from edgeplane.model import Task
from edgeplane.store import Batch, Claim, Store
from store_fixtures import BACKEND_PARAMS, StoreFactory, make_store, pg_schema, store, store_backend

__all__ = ["make_store", "pg_schema", "store", "store_backend"]  # fixtures used by name

NAME = "edgeplane/local"
DURABLE = [p for p in BACKEND_PARAMS if p.values != ("memory",)]


def claim(holder: str) -> Claim:
    return Claim(holder, f"home-{holder}", f"http://{holder}:7070", 3.0)


def task(task_id: str) -> Task:
    return Task.model_validate({"id": task_id, "created_at": 1.0})


async def test_claim_renew_release(store: Store) -> None:
    assert await store.get_lease(NAME) is None
    first = await store.claim_lease(NAME, claim("a"), 10.0)
    assert (first.holder, first.term, first.url) == ("a", 1, "http://a:7070")
    assert (await store.claim_lease(NAME, claim("b"), 11.0)).holder == "a"
    assert await store.renew_lease(NAME, "a", 1, 12.0, 3.0)
    assert not await store.renew_lease(NAME, "b", 1, 12.0, 3.0)
    assert (await store.claim_lease(NAME, claim("b"), 14.5)).holder == "a"  # renewed to 15
    await store.release_lease(NAME, "a", 1)
    second = await store.claim_lease(NAME, claim("b"), 14.6)
    assert (second.holder, second.term) == ("b", 2)
    assert await store.get_lease(NAME) == second
    assert not await store.renew_lease(NAME, "a", 1, 15.0, 3.0)


async def test_a_fenced_write_is_refused_once_the_term_moved_on(store: Store) -> None:
    lease = await store.claim_lease(NAME, claim("a"), 10.0)
    store.fence(NAME, lease.term)
    await store.apply(Batch(new_tasks=[task("t1")]))
    await store.claim_lease(NAME, claim("b"), 20.0)  # a expired: b leads in term 2
    with pytest.raises(Fenced):
        await store.apply(Batch(new_tasks=[task("t2")]))
    with pytest.raises(Fenced):  # a big batch (not the inline path on SQLite) too
        await store.apply(Batch(new_tasks=[task(f"big-{n}") for n in range(50)]))
    assert await store.get_task("t1") is not None
    assert await store.get_task("t2") is None
    assert await store.get_task("big-0") is None


async def test_a_fenced_fl_experiment_write_is_refused_once_the_term_moved_on(
    store: Store,
) -> None:
    """A leader paused past its lease must not write its copy of an experiment over its
    successor's (the coordinator keeps the document it last wrote)."""
    from edgeplane.fl.spec import ExperimentSpec
    from edgeplane.fl.state import Experiment

    spec = ExperimentSpec.model_validate({"name": "digits", "workload": {"runtime": "host"}})
    exp = Experiment(id="e1", name="digits", spec=spec, created_at=1.0, updated_at=1.0)
    lease = await store.claim_lease(NAME, claim("a"), 10.0)
    store.fence(NAME, lease.term)
    await store.save_fl_experiment(exp)
    await store.claim_lease(NAME, claim("b"), 20.0)  # a expired: b leads in term 2
    with pytest.raises(Fenced):
        await store.save_fl_experiment(exp.model_copy(update={"state": "stopped"}))
    kept = await store.get_fl_experiment("e1")
    assert kept is not None and kept.state == exp.state
    # an update's blob goes with the write that references it: refused with it
    update = b"an update the paused leader took"
    ref = "sha256:" + hashlib.sha256(update).hexdigest()
    with pytest.raises(Fenced):
        await store.save_fl_experiment(exp, [(ref, update)])
    assert await store.get_fl_blob(ref) is None


async def test_blobs_are_stored_with_the_experiment_that_references_them(
    store: Store,
) -> None:
    from edgeplane.fl.spec import ExperimentSpec
    from edgeplane.fl.state import Experiment

    spec = ExperimentSpec.model_validate({"name": "digits", "workload": {"runtime": "host"}})
    exp = Experiment(id="e2", name="digits", spec=spec, created_at=1.0, updated_at=1.0)
    small, large = b"a digits update", os.urandom(300_000)  # inline, and on the thread
    refs = ["sha256:" + hashlib.sha256(d).hexdigest() for d in (small, large)]
    await store.save_fl_experiment(exp, list(zip(refs, (small, large), strict=True)))
    assert [await store.get_fl_blob(r) for r in refs] == [small, large]
    assert await store.get_fl_experiment("e2") == exp
    # a blob the store refuses (its digest is not well formed) writes nothing
    with pytest.raises(Invalid) as caught:
        await store.save_fl_experiment(exp.model_copy(update={"round": 3}), [("md5:x", small)])
    assert caught.value.field == "digest"
    stored = await store.get_fl_experiment("e2")
    assert stored is not None and stored.round == 0


@pytest.mark.parametrize("backend", DURABLE)
async def test_two_stores_on_one_database_claim_once(
    make_store: StoreFactory, backend: str
) -> None:
    """Two processes' stores racing for a free lease: exactly one holds term 1."""
    one, two = await make_store(backend), await make_store(backend)
    got = await asyncio.gather(
        one.claim_lease(NAME, claim("a"), 10.0),
        two.claim_lease(NAME, claim("b"), 10.0),
        return_exceptions=True,
    )
    leases = [g for g in got if not isinstance(g, BaseException)]
    assert leases, got
    final = await one.get_lease(NAME)
    assert final is not None and final.term == 1
    assert all(lease == final for lease in leases)
    # the loser's write, fenced to a term it never held, is refused by the winner's term
    loser = two if final.holder == "a" else one
    loser.fence(NAME, 2)
    with pytest.raises(Fenced):
        await loser.apply(Batch(new_tasks=[task("x")]))
