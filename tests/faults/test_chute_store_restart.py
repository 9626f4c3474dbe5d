"""The chute store outlives its manager: a real ``edgeplane manager`` killed with kill -9
and started again on the same store (SQLite, PostgreSQL) has every published version,
and still refuses other content under a version it had (immutability kept)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeplane.transport import free_port
from faults.procs import Lab

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120)]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


def chute(version: str, description: str = "") -> dict[str, object]:
    return {
        "name": "keep",
        "version": version,
        "description": description or f"keep {version}",
        "services": [{"name": "main", "image": "busybox"}],
    }


def test_the_store_survives_a_manager_kill(lab: Lab, store_url: str) -> None:
    port = free_port()
    manager = lab.manager(port).start()
    api = lab.api(port)
    api.wait_healthy(manager)
    made = [api.http.post("/store/chutes", json=chute(v)) for v in ("1", "2", "3")]
    assert [m.status_code for m in made] == [201, 201, 201], [m.text for m in made]
    assert api.http.delete("/store/chutes/keep/versions/3").status_code == 204
    before = api.http.get("/store/chutes/keep").json()

    manager.kill9()
    manager.start()
    api.wait_healthy(manager)
    assert api.http.get("/store/chutes/keep").json() == before
    read = api.http.get("/store/chutes/keep/versions/1").json()
    assert read["digest"] == made[0].json()["digest"] and read["manifest"] == chute("1")
    # immutable across the restart, the deleted version too
    for version in ("1", "3"):
        changed = api.http.post("/store/chutes", json=chute(version, "changed"))
        assert changed.status_code == 409 and changed.json()["field"] == "version", changed.text
    assert api.http.post("/store/chutes", json=chute("2")).status_code == 200
