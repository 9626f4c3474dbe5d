"""Identity and endpoints, the pure parts: who may take a member's id, what a listen
address is, how client ids and data dir locks keep processes apart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeplane.config import parse_listen
from edgeplane.errors import Invalid
from edgeplane.manager.membership import Membership, succeeds
from edgeplane.manager.registry import WorkerEntry
from edgeplane.model import Worker
from edgeplane.model.worker import Capabilities
from edgeplane.protocol import Hello
from edgeplane.roles.lock import hold_data_dir
from edgeplane.transport import kept_client_id, unique_client_id

CAPS = Capabilities(cpus=1, memory_mb=64)


def member(
    session: str,
    *,
    state: str = "online",
    will_heard: bool = False,
    lineage: str = "",
    term: int = 0,
) -> WorkerEntry:
    worker = Worker(id="w", capabilities=CAPS, state=state)  # type: ignore[arg-type]
    return WorkerEntry(
        worker=worker, session=session, will_heard=will_heard, lineage=lineage, term=term
    )


def hello(session: str, *, lineage: str = "", term: int = 0) -> Hello:
    return Hello(worker_id="w", session=session, capabilities=CAPS, lineage=lineage, term=term)


def test_a_new_session_is_refused_while_the_known_one_is_alive() -> None:
    assert Membership.held_by_another(member("s1"), hello("s2"))


@pytest.mark.parametrize(
    "entry",
    [
        member("s1", will_heard=True),  # its will came: the old process is gone
        member("s1", state="offline"),  # it left, or missed its beats
        member(""),  # unknown after the manager's restart: first come
    ],
    ids=["will", "offline", "unknown"],
)
def test_a_new_session_takes_the_id_once_the_old_one_is_gone(entry: WorkerEntry) -> None:
    assert not Membership.held_by_another(entry, hello("s2"))


def test_the_same_session_is_never_refused() -> None:
    assert not Membership.held_by_another(member("s1"), hello("s1"))


def test_a_clusters_later_leader_takes_over_its_live_session() -> None:
    """Same lease lineage (one store), a later term: the live one was deposed."""
    live = member("s1", lineage="L", term=3)
    assert not Membership.held_by_another(live, hello("s2", lineage="L", term=4))


@pytest.mark.parametrize(
    ("lineage", "term"),
    [
        ("M", 9),  # another store's lease: another cluster, whatever its term
        ("", 9),  # no lease said
        ("L", 3),  # the same term: not a later leader
        ("L", 2),  # an earlier one: deposed itself
    ],
    ids=["other-store", "no-lineage", "same-term", "earlier-term"],
)
def test_another_process_with_a_live_clusters_id_is_refused(lineage: str, term: int) -> None:
    live = member("s1", lineage="L", term=3)
    assert Membership.held_by_another(live, hello("s2", lineage=lineage, term=term))


@given(
    lineages=st.tuples(st.sampled_from(["", "L", "M"]), st.sampled_from(["", "L", "M"])),
    terms=st.tuples(st.integers(0, 5), st.integers(0, 5)),
)
def test_of_two_leaders_at_most_one_supersedes_the_other(
    lineages: tuple[str, str], terms: tuple[int, int]
) -> None:
    (a, b), (ta, tb) = lineages, terms
    later, earlier = succeeds(a, ta, b, tb), succeeds(b, tb, a, ta)
    assert not (later and earlier)
    assert later == (a == b != "" and ta > tb)


@given(
    host=st.sampled_from(["127.0.0.1", "0.0.0.0", "localhost", "edge.example", "::"]),
    port=st.integers(0, 65535),
)
def test_listen_addresses_parse(host: str, port: int) -> None:
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert parse_listen(text) == (host, port)


@pytest.mark.parametrize("bad", ["", "host", "host:", ":80", "h:-1", "h:65536", "h:x"])
def test_bad_listen_addresses_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(bad)


def test_client_ids_differ_between_links() -> None:
    assert len({unique_client_id("edgeplane-worker-d-c-w1") for _ in range(100)}) == 100


def test_a_kept_client_id_is_one_per_data_dir(tmp_path: Path) -> None:
    first = kept_client_id("edgeplane-manager-d-c", tmp_path / "a")
    assert kept_client_id("edgeplane-manager-d-c", tmp_path / "a") == first
    assert kept_client_id("edgeplane-manager-d-c", tmp_path / "b") != first
    (tmp_path / "a" / "mqtt-client-id").write_text("garbage\n")  # made anew, never fatal
    assert kept_client_id("edgeplane-manager-d-c", tmp_path / "a").startswith("edgeplane-")


def test_a_data_dir_is_held_by_one_process(tmp_path: Path) -> None:
    script = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0)\n"
        "print('held', flush=True); sys.stdin.read()"
    )
    command = [sys.executable, "-c", script, str(tmp_path / "lock")]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
            with (
                pytest.raises(Invalid, match=rf"in use by another worker \(pid {holder.pid}\)"),
                hold_data_dir(tmp_path, "worker"),
            ):
                pass
        finally:
            holder.kill()
    with hold_data_dir(tmp_path, "worker"):  # the holder died: free again
        assert (tmp_path / "lock").read_text() == f"{os.getpid()}\n"
