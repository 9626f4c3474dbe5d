"""Helper processes that must not outlive the role that started them.

``up``, ``root`` and ``manager`` start helpers (their Mosquitto). Stopped normally, a role
stops them; killed with SIGKILL it cannot, and the helper would run on, holding its port,
until someone finds it. On Linux the helper asks the kernel to kill it when its parent
dies: ``prctl(PR_SET_PDEATHSIG)`` between fork and exec (a ``preexec_fn``; there is no
wrapper program for it that is sure to be installed, and Python's own start-up would make
one cost ~20 MB and 50 ms).

Three things to know. The kernel's "parent" is the *thread* that forked the helper: start
helpers from a thread that lives as long as the process (the event loop's), never from an
executor's. The kernel forgets the tie when the helper's credentials change (a set-user-id
program, or one that drops root for a user of its own, as Mosquitto does unless told
otherwise: ``broker.py`` tells it). And a worker's task processes are deliberately not tied
this way: they outlive a crashed worker, which re-attaches to them (``worker/recovery.py``).
Where the kernel offers no such tie, the next start on the data dir stops a broker left
behind (``MosquittoProcess.reclaim``: its pid file, checked against its command line).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

#: from <linux/prctl.h>
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child sent ``sig`` when this process dies (None where
    the kernel offers no such thing). Everything it calls is looked up here, before the
    fork: between fork and exec the child runs only a foreign call and two syscalls."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    number = int(sig)

    def tie() -> None:
        if prctl(PR_SET_PDEATHSIG, number, 0, 0, 0) != 0:
            os._exit(126)  # not tied: better not to run than to outlive the role
        if os.getppid() != parent:  # the parent died before the tie was made
            os._exit(0)

    return tie
