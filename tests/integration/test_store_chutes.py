"""The chute store's tables on every backend (memory, SQLite, PostgreSQL): a version is
written once, a name belongs to one project, deleted versions keep their digest, lists
page by name, and concurrent publications of one version leave exactly one."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from edgeplane.errors import Conflict
from edgeplane.store import ChuteVersionRecord, Store
from store_fixtures import BACKEND_PARAMS, StoreFactory

pytestmark = pytest.mark.timeout(60)
DURABLE = [p for p in BACKEND_PARAMS if p.values != ("memory",)]


def record(name: str = "hello", version: str = "1.0", **fields: object) -> ChuteVersionRecord:
    values: dict[str, object] = {
        "name": name,
        "version": version,
        "project": "default",
        "description": f"{name} {version}",
        "digest": "sha256:" + "a" * 64,
        "published_at": 100.0,
        "published_by": "ann",
    }
    values.update(fields)
    return ChuteVersionRecord(**values)  # type: ignore[arg-type]


DOC = '{"name":"hello"}'


async def test_a_version_is_written_once_and_read_back(store: Store) -> None:
    first = record()
    assert await store.publish_chute(first, DOC, max_versions=10) == (first, True)
    assert await store.get_chute_version("hello", "1.0") == (first, DOC)
    # again, the same: nothing written, the stored one returned (its time, its publisher)
    again = replace(first, published_at=200.0, published_by="bob")
    assert await store.publish_chute(again, DOC, max_versions=10) == (first, False)
    # other content: nothing written either; the caller sees the stored digest differ
    other = replace(first, digest="sha256:" + "b" * 64)
    stored, written = await store.publish_chute(other, '{"x":1}', max_versions=10)
    assert (stored, written) == (first, False)
    assert await store.get_chute_version("hello", "1.0") == (first, DOC)
    chute = await store.get_store_chute("hello")
    assert chute is not None and chute.project == "default" and chute.versions == (first,)
    assert await store.get_store_chute("nope") is None
    assert await store.get_chute_version("hello", "2.0") is None
    assert await store.get_chute_version("hel\x00lo", "1.0") is None  # never a driver error


async def test_a_name_belongs_to_the_project_of_its_first_version(store: Store) -> None:
    await store.publish_chute(record(), DOC, max_versions=10)
    with pytest.raises(Conflict) as caught:
        await store.publish_chute(record(version="2.0", project="lab"), DOC, max_versions=10)
    assert caught.value.field == "name"
    chute = await store.get_store_chute("hello")
    assert chute is not None and [v.version for v in chute.versions] == ["1.0"]


async def test_a_chute_keeps_at_most_so_many_live_versions(store: Store) -> None:
    for n in range(3):
        await store.publish_chute(record(version=f"{n}"), DOC, max_versions=3)
    with pytest.raises(Conflict) as caught:
        await store.publish_chute(record(version="3"), DOC, max_versions=3)
    assert caught.value.field == "version" and "3 versions" in caught.value.detail
    # the same content again is still a no-op, and a deleted version makes room
    assert (await store.publish_chute(record(version="0"), DOC, max_versions=3))[1] is False
    assert await store.delete_chute_version("hello", "0")
    assert (await store.publish_chute(record(version="3"), DOC, max_versions=3))[1] is True


async def test_a_deleted_version_keeps_its_digest_for_good(store: Store) -> None:
    first = record()
    await store.publish_chute(first, DOC, max_versions=10)
    assert await store.delete_chute_version("hello", "1.0")
    assert not await store.delete_chute_version("hello", "1.0")
    assert await store.get_chute_version("hello", "1.0") is None
    chute = await store.get_store_chute("hello")
    assert chute is not None and chute.versions == ()  # the name stays its project's
    assert await store.list_store_chutes() == ([], 0)
    # other content under the deleted version: refused (the deleted one is returned)
    other = replace(first, digest="sha256:" + "c" * 64, published_at=300.0)
    stored, written = await store.publish_chute(other, "{}", max_versions=10)
    assert not written and stored.deleted and stored.digest == first.digest
    # the same content: published again
    again = replace(first, published_at=400.0)
    assert await store.publish_chute(again, DOC, max_versions=10) == (again, True)
    assert await store.get_chute_version("hello", "1.0") == (again, DOC)


async def test_lists_page_by_name_and_keep_to_the_callers_projects(store: Store) -> None:
    for name, project in (("c", "lab"), ("a", "default"), ("b", "default"), ("d", "lab")):
        await store.publish_chute(record(name, project=project), DOC, max_versions=10)
        await store.publish_chute(
            record(name, "2.0", project=project, published_at=150.0), DOC, max_versions=10
        )
    await store.publish_chute(record("e"), DOC, max_versions=10)
    await store.delete_chute_version("e", "1.0")  # no live version: not listed
    page, total = await store.list_store_chutes(limit=2, offset=1)
    assert [c.name for c in page] == ["b", "c"] and total == 4
    assert sorted(v.version for v in page[1].versions) == ["1.0", "2.0"]
    assert {v.project for v in page[1].versions} == {"lab"}
    page, total = await store.list_store_chutes(projects=["lab"])
    assert [c.name for c in page] == ["c", "d"] and total == 2
    assert await store.list_store_chutes(projects=[]) == ([], 0)


async def test_concurrent_publications_of_one_version_leave_exactly_one(store: Store) -> None:
    tries = [record(digest=f"sha256:{n:064d}", published_at=float(n)) for n in range(12)]
    results = await asyncio.gather(
        *(store.publish_chute(r, f'{{"n":{n}}}', max_versions=10) for n, r in enumerate(tries))
    )
    winners = [stored for stored, written in results if written]
    assert len(winners) == 1
    assert all(stored == winners[0] for stored, _ in results)
    found = await store.get_chute_version("hello", "1.0")
    assert found is not None and found[0] == winners[0]


@pytest.mark.parametrize("backend", DURABLE)
async def test_the_store_outlives_its_process(make_store: StoreFactory, backend: str) -> None:
    first = await make_store(backend)
    await first.publish_chute(record(), DOC, max_versions=10)
    await first.publish_chute(record(version="2.0"), DOC, max_versions=10)
    await first.delete_chute_version("hello", "2.0")
    await first.close()
    again = await make_store(backend)
    assert await again.get_chute_version("hello", "1.0") == (record(), DOC)
    assert await again.get_chute_version("hello", "2.0") is None
    stored, written = await again.publish_chute(
        record(version="2.0", digest="sha256:" + "d" * 64), DOC, max_versions=10
    )
    assert not written and stored.deleted  # still remembered as deleted, digest kept
