"""Turn user task specs into task documents, rejecting bad input before anything is stored."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from edgeplane.errors import Invalid
from edgeplane.model import Task, TaskSpec
from edgeplane.runtimes.images import NAME_RULE, split_ref
from edgeplane.runtimes.modules import FuncSig, ModuleCache, check_call

_modules: ModuleCache | None = None


def _signatures() -> ModuleCache:
    """The process-wide cache of modules seen at admission (compiled once per digest)."""
    global _modules
    if _modules is None:
        _modules = ModuleCache(capacity=256)
    return _modules


#: Spec fields that are not copied onto the task document as they are.
_NOT_STORED = {"file", "start", "worker_id", "cluster_id", "schedule", "timezone"}


@dataclass(frozen=True)
class Admitted:
    task: Task
    artifact: bytes | None


@dataclass(frozen=True)
class _Module:
    data: bytes
    digest: str
    signatures: dict[str, FuncSig]


def _module(file: str, seen: dict[str, _Module]) -> _Module:
    """Decode, hash and inspect a module once per distinct ``file`` in a batch: a batch of
    1,000 tasks usually carries one module 1,000 times."""
    found = seen.get(file)
    if found is not None:
        return found
    try:
        data = base64.b64decode(file, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("file is not valid base64", field="file") from None
    if not data:
        raise Invalid("file is empty", field="file")
    digest = hashlib.sha256(data).hexdigest()
    found = seen[file] = _Module(data, digest, _signatures().signatures(digest, data))
    return found


def admit(
    spec: TaskSpec,
    *,
    task_id: str,
    now: float,
    cluster_id: str | None,
    modules: dict[str, _Module] | None = None,
) -> Admitted:
    """Validate one spec and build its task document (started if the spec says ``start``).

    ``cluster_id`` is the manager's cluster; None at the root, where a ``cluster_id`` in the
    spec pins the task to that cluster instead."""
    if spec.runtime == "wasm":
        if spec.file is None and spec.image_url is None:
            raise Invalid("a wasm task needs 'file' (base64 .wasm) or 'image_url'", field="file")
        if spec.image_url is not None and spec.file is None:
            raise Invalid(
                "image_url artifacts are not supported yet; send 'file'", field="image_url"
            )
    elif spec.runtime == "host":
        if not spec.command:
            raise Invalid("a host task needs 'command' (a non-empty list)", field="command")
    elif spec.runtime == "container":
        if not spec.image:
            raise Invalid("a container task needs 'image' (NAME[:TAG])", field="image")
        if split_ref(spec.image) is None:
            raise Invalid(f"image {spec.image!r} is not allowed: {NAME_RULE}", field="image")
    else:
        raise Invalid(f"runtime {spec.runtime!r} is not available yet", field="runtime")
    if cluster_id is not None and spec.cluster_id is not None and spec.cluster_id != cluster_id:
        raise Invalid(f"unknown cluster {spec.cluster_id!r}", field="cluster_id")
    module = None if spec.file is None else _module(spec.file, {} if modules is None else modules)
    data = None if module is None else module.data
    digest = None if module is None else module.digest
    if spec.runtime == "wasm" and module is not None:
        # Inputs taken from dependencies arrive at start; count them with a stand-in.
        inputs = [*spec.inputs, *([0] * len(spec.inputs_from))]
        check_call(module.signatures, spec.export or spec.name, inputs, spec.mode)
    # The spec's fields as they are (nested models are taken over, not dumped and rebuilt:
    # half the cost of admitting a task).
    fields = {name: value for name, value in spec.__dict__.items() if name not in _NOT_STORED}
    task = Task.model_validate(
        {
            **fields,
            "id": task_id,
            "started": spec.start,
            "artifact": digest,
            "pinned_worker": spec.worker_id,
            "pinned_cluster": spec.cluster_id if cluster_id is None else None,
            "cluster_id": cluster_id,
            "reason": None if spec.start else "not started",
            "created_at": now,
            "updated_at": now,
        }
    )
    return Admitted(task=task, artifact=data)


def admit_many(
    specs: Sequence[TaskSpec],
    *,
    ids: Sequence[str],
    now: float,
    cluster_id: str | None,
    batch: bool = True,
) -> list[Admitted]:
    """All or nothing: the first bad spec raises; in a batch its field reads ``tasks[i].…``."""
    admitted = []
    modules: dict[str, _Module] = {}
    for index, (spec, task_id) in enumerate(zip(specs, ids, strict=True)):
        try:
            admitted.append(
                admit(spec, task_id=task_id, now=now, cluster_id=cluster_id, modules=modules)
            )
        except Invalid as exc:
            if not batch:
                raise
            field = f"tasks[{index}].{exc.field}" if exc.field else f"tasks[{index}]"
            raise Invalid(exc.detail, field=field) from None
    return admitted
