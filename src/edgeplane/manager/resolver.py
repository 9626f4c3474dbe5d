"""Wasm tasks admitted while their registry did not answer (issue 15: "registry down →
the task waits pending with a reason and retries with backoff, then fails clearly").

Admission stores such a task unpinned, without an artifact, its reason
``registry_unreachable: …``. Here it waits in the pending queue held back (``not_before``
far ahead, so no scheduling pass places it) while the reference is resolved again with
the manager's retry backoff; once the registry answers, the task is pinned to the digest,
its module stored, and it is released to the scheduler. When the attempts run out it
fails with reason ``registry_unreachable``.
"""

from __future__ import annotations

import asyncio
import logging

from edgeplane.artifacts import reference
from edgeplane.errors import Invalid
from edgeplane.manager import lifecycle
from edgeplane.manager.admission import REGISTRY_UNREACHABLE, Module, pull_module
from edgeplane.manager.core import Core
from edgeplane.manager.dispatch import Dispatcher
from edgeplane.model import Task
from edgeplane.modules import check_call

log = logging.getLogger(__name__)

#: resolutions tried after admission's before the task fails (with the default 0.5 s
#: backoff base: 0.5 + 1 + … + 16 s, about half a minute of registry outage)
ATTEMPTS = 6
#: ``not_before`` of a task held back while its reference is resolved
HELD = 1e15


def unresolved(task: Task) -> tuple[str, str] | None:
    """(field, reference) of a wasm task stored before its registry answered, else None."""
    if task.runtime != "wasm" or task.artifact is not None:
        return None
    for field in ("image_url", "image"):
        text = getattr(task, field)
        if isinstance(text, str) and reference.is_oci(text):
            return field, text
    return None


class Resolver:
    def __init__(self, core: Core, dispatcher: Dispatcher) -> None:
        self.core = core
        self._dispatcher = dispatcher
        self._running: dict[str, asyncio.Task[None]] = {}

    def hold(self, task: Task) -> bool:
        """Queue ``task`` held back and resolve it later when it needs it; False when it
        does not (it is queued as usual by the caller)."""
        source = unresolved(task)
        if source is None:
            return False
        self.core.pending.put(task.model_copy(update={"not_before": HELD}))
        if task.id not in self._running:
            job = asyncio.create_task(self._resolve(task.id, *source))
            self._running[task.id] = job
            job.add_done_callback(lambda _: self._running.pop(task.id, None))
        return True

    async def _resolve(self, task_id: str, field: str, text: str) -> None:
        core = self.core
        base = max(core.settings.retry_backoff_s, 0.01)
        last = ""
        for attempt in range(ATTEMPTS):
            await asyncio.sleep(min(60.0, base * 2**attempt))  # the registry's outage
            if core.pending.get(task_id) is None:
                return  # stopped or deleted meanwhile
            found = await pull_module(field, text)
            task = core.pending.get(task_id)
            if task is None:
                return
            now = core.clock.now()
            if isinstance(found, Module):
                await self._release(task, field, found)
                return
            if found.reason != REGISTRY_UNREACHABLE:
                self._fail(task, found.detail, found.reason or "invalid")
                return
            last = found.detail
            waiting = f"{REGISTRY_UNREACHABLE}: {last} (attempt {attempt + 2} of {ATTEMPTS + 1})"
            core.pending.put(lifecycle.wait_reason(task, waiting, now))
        task = core.pending.get(task_id)
        if task is not None:
            self._fail(task, last, REGISTRY_UNREACHABLE)

    async def _release(self, task: Task, field: str, module: Module) -> None:
        core = self.core
        try:
            inputs = [*task.inputs, *([0] * len(task.inputs_from))]
            check_call(module.signatures, task.export or task.name, inputs, task.mode)
        except Invalid as exc:
            self._fail(task, exc.detail, exc.reason or "invalid")
            return
        if not self._dispatcher.knows_artifact(module.digest):
            await core.store.put_artifact(module.digest, module.data)
            self._dispatcher.remember_artifact(module.digest, module.data)
        task = core.pending.get(task.id) or task  # (stopped while storing: checked below)
        if core.pending.get(task.id) is None:
            return
        now = core.clock.now()
        ready = task.model_copy(
            update={
                field: module.pinned,
                "artifact": module.digest,
                "reason": None,
                "not_before": now,
                "updated_at": now,
            }
        )
        core.pending.pop(task.id)  # its scheduler demand changes (the artifact)
        core.pending.put(ready)
        core.journal.write([ready])
        core.kick.set()
        log.info(
            "registry answered: task released", extra={"task": task.id, "image": module.pinned}
        )

    def _fail(self, task: Task, error: str, reason: str) -> None:
        core = self.core
        core.pending.pop(task.id)
        failed = lifecycle.fail(task, error, reason, core.clock.now())
        core.journal.write([failed], then=lambda: core.resolve([failed]))
        log.info(
            "task failed: its module could not be had", extra={"task": task.id, "reason": reason}
        )
