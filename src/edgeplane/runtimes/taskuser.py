"""The user host tasks run as (``--host-user``): least privilege by default.

A worker running as root runs host tasks as an unprivileged user unless its operator
names root: ``edgeplane-task`` when that user exists (a dedicated system user, made with
``useradd --system --no-create-home --shell /usr/sbin/nologin edgeplane-task``), else
``nobody``. A worker that is not root can only run them as itself: naming another user is
refused at start, since switching user takes root.

Switching user means: the attempt's main process gets the user's uid and primary gid,
no supplementary groups, and ``HOME``, ``USER`` and ``LOGNAME`` of that user.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from edgeplane.errors import Invalid

#: The dedicated user a root worker runs host tasks as when it exists.
DEDICATED = "edgeplane-task"
#: Else this one, which every Unix has.
FALLBACK = "nobody"


@dataclass(frozen=True)
class TaskUser:
    name: str
    uid: int
    gid: int
    home: str

    @property
    def switches(self) -> bool:
        """Whether running as this user means changing user (else: the worker's own)."""
        return self.uid != os.geteuid()

    def environment(self) -> dict[str, str]:
        """The variables that say who the task runs as."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}


def _from(entry: pwd.struct_passwd) -> TaskUser:
    return TaskUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def lookup(name: str) -> TaskUser | None:
    """The user named ``name`` (or with that numeric uid), None when there is none."""
    try:
        return _from(pwd.getpwnam(name))
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        pass
    if name.isdigit():
        try:
            return _from(pwd.getpwuid(int(name)))
        except (KeyError, OverflowError):
            return None
    return None


def current() -> TaskUser:
    """The worker's own user (a uid without a passwd entry keeps the environment's HOME)."""
    uid = os.geteuid()
    try:
        return _from(pwd.getpwuid(uid))
    except KeyError:
        home = os.environ.get("HOME", "/")
        return TaskUser(os.environ.get("USER", str(uid)), uid, os.getegid(), home)


def configured(allow_host: bool, requested: str | None) -> TaskUser | None:
    """The user a worker's host tasks run as (None: host tasks are not allowed and no user
    was named); a named user is checked even when host tasks are off, so that a bad
    setting is refused whatever else is set."""
    if not allow_host and not requested:
        return None
    return resolve(requested)


def resolve(requested: str | None) -> TaskUser:
    """The user host tasks run as for ``--host-user requested`` (None: not given).

    Raises :class:`~edgeplane.errors.Invalid` (field ``host_user``, exit 2 in the CLI)
    for a user that does not exist, one a worker that is not root cannot switch to, and a
    root worker on a machine with neither ``edgeplane-task`` nor ``nobody``.
    """
    me = current()
    if not requested:
        if me.uid != 0:
            return me
        for name in (DEDICATED, FALLBACK):
            found = lookup(name)
            if found is not None:
                return found
        raise Invalid(
            f"this worker runs as root and neither {DEDICATED!r} nor {FALLBACK!r} exists to "
            "run host tasks as: create one, or name a user with --host-user "
            "(--host-user root runs them as root)",
            field="host_user",
        )
    user = lookup(requested)
    if user is None:
        raise Invalid(f"no such user {requested!r} to run host tasks as", field="host_user")
    if me.uid != 0 and user.uid != me.uid:
        raise Invalid(
            f"running host tasks as {user.name!r} takes root: this worker runs as "
            f"{me.name!r}, so its host tasks can only run as {me.name!r}",
            field="host_user",
        )
    return user
