"""A new task's document as JSON, made once for its store row and its API answer.

Shortcut: ``POST /tasks`` and ``/tasks/batch`` dumped every new task twice, once for its
row (``model_dump_json(context=REVEAL)``, at the commit) and once for the answer, right
after: 4.3 µs a no-op task each time (``docs/benchmarks.md``). A task without secret env
dumps to the same text either way, so the row's text is kept (by the object's identity,
the last :data:`KEPT` inserted) and the answer takes it. Task documents are never
changed in place (a change is a new version, ``model_copy``), so the text stays true.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

from edgeplane.model.secrets import REVEAL
from edgeplane.model.task import Task

#: Texts kept for answers: the largest batch (``client.BATCH_LIMIT``, 1,000) and some. A
#: text the answer does not take (``?wait=`` answers with a later version) stays until
#: pushed out: at most ~1 MB (a no-op task's is ~1 KB); the task itself is not held.
KEPT = 1024
_kept: dict[int, tuple[weakref.ref[Task], str]] = {}


def stored(task: Task) -> str:
    """The text of a new task's row (secret env in the clear), kept for its answer when
    it has none."""
    doc = task.model_dump_json(context=REVEAL)
    if not task.secret_env:
        if len(_kept) >= KEPT:
            del _kept[next(iter(_kept))]
        _kept[id(task)] = (weakref.ref(task), doc)
    return doc


def shown(task: Task) -> str:
    """The task as every read shows it (secret env as ``***``): the row's text when this
    very object was just stored, else a dump."""
    found = _kept.pop(id(task), None)
    if found is not None and found[0]() is task:
        return found[1]
    return task.model_dump_json()


def items(tasks: Iterable[Task]) -> str:
    """``{"items": [...]}`` of ``tasks``, as ``TaskItems(items=tasks).model_dump_json()``."""
    return '{"items":[' + ",".join(shown(t) for t in tasks) + "]}"
