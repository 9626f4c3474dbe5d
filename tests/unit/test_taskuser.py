"""Who host tasks run as (``--host-user``): the rules of ``runtimes/taskuser.py``, with the
worker's uid and the passwd database swapped for fakes."""

from __future__ import annotations

import pwd

import pytest

from edgeplane.errors import Invalid
from edgeplane.runtimes import taskuser
from edgeplane.runtimes.taskuser import resolve

USERS = {
    "root": (0, 0, "/root"),
    "nobody": (65534, 65534, "/nonexistent"),
    "ann": (1000, 1000, "/home/ann"),
}


def entry(name: str, uid: int, gid: int, home: str) -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, gid, "", home, "/bin/sh"))


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, int, str]]:
    """A passwd database of ``USERS`` (tests add or remove users), the worker root."""
    users = dict(USERS)

    def getpwnam(name: str) -> pwd.struct_passwd:
        if name not in users:
            raise KeyError(name)
        return entry(name, *users[name])

    def getpwuid(uid: int) -> pwd.struct_passwd:
        for name, (found, gid, home) in users.items():
            if found == uid:
                return entry(name, found, gid, home)
        raise KeyError(uid)

    monkeypatch.setattr(taskuser.pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(taskuser.pwd, "getpwuid", getpwuid)
    monkeypatch.setattr(taskuser.os, "geteuid", lambda: 0)
    return users


def test_a_root_worker_runs_them_as_nobody_by_default(machine: dict[str, object]) -> None:
    user = resolve(None)
    assert (user.name, user.uid, user.gid, user.home) == ("nobody", 65534, 65534, "/nonexistent")
    assert user.switches
    assert user.environment() == {"HOME": "/nonexistent", "USER": "nobody", "LOGNAME": "nobody"}


def test_the_dedicated_user_comes_first(machine: dict[str, tuple[int, int, str]]) -> None:
    machine["edgeplane-task"] = (998, 997, "/var/lib/edgeplane-task")
    assert resolve(None).name == "edgeplane-task"
    assert resolve("").name == "edgeplane-task"


def test_root_only_when_named(machine: dict[str, object]) -> None:
    assert (resolve("root").uid, resolve("root").switches) == (0, False)
    assert resolve("0").name == "root"  # a uid names its user too
    assert resolve("ann").uid == 1000


def test_an_unknown_user_is_refused(machine: dict[str, object]) -> None:
    for name in ("ghost", "4242", "-1", "root\0"):
        with pytest.raises(Invalid) as refused:
            resolve(name)
        assert refused.value.field == "host_user"
        assert "no such user" in refused.value.detail


def test_no_unprivileged_user_at_all_is_refused(machine: dict[str, object]) -> None:
    del machine["nobody"]
    with pytest.raises(Invalid) as refused:
        resolve(None)
    assert refused.value.field == "host_user" and "--host-user" in refused.value.detail


def test_a_worker_that_is_not_root_runs_them_as_itself_only(
    machine: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(taskuser.os, "geteuid", lambda: 1000)
    assert (resolve(None).name, resolve(None).switches) == ("ann", False)
    assert resolve("ann").name == resolve("1000").name == "ann"
    for other in ("root", "nobody"):
        with pytest.raises(Invalid) as refused:
            resolve(other)
        assert refused.value.field == "host_user"
        assert "takes root" in refused.value.detail and "'ann'" in refused.value.detail
