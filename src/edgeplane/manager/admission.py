"""Turn user task specs into task documents, rejecting bad input before anything is stored."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from edgeplane.artifacts import reference
from edgeplane.errors import EdgeplaneError, Invalid, Unavailable
from edgeplane.imageref import NAME_RULE, split_ref
from edgeplane.manager import oci_modules
from edgeplane.model import Task, TaskSpec
from edgeplane.modules import FuncSig, check_call, process_cache

#: A module whose base64 is at most this long is decoded and hashed right on the event
#: loop when it is compiled already: at most ~0.2 ms (measured at the limit), less than
#: a hop to a thread and back for the small modules most tasks carry. Anything longer,
#: and every compilation (up to seconds for a big module), runs in a thread.
INLINE_FILE_CHARS = 64 * 1024

#: The reason a wasm task waits when its registry did not answer at admission: it is
#: stored unpinned and the manager resolves it later (``resolver.py``).
REGISTRY_UNREACHABLE = "registry_unreachable"

#: Spec fields that are not copied onto the task document as they are.
_NOT_STORED = {"file", "start", "worker_id", "cluster_id", "schedule", "timezone"}


@dataclass(frozen=True)
class Admitted:
    task: Task
    artifact: bytes | None


@dataclass(frozen=True)
class Module:
    data: bytes
    digest: str
    signatures: dict[str, FuncSig]
    #: for a module named ``oci://…``: that reference pinned to its manifest digest
    pinned: str | None = None


#: Each distinct ``file`` (or ``oci://`` reference) of a batch: its module, or why it is
#: refused (field ``file``, or the field naming the reference).
Modules = Mapping[str, Module | EdgeplaneError]


def oci_source(spec: TaskSpec) -> tuple[str, str] | None:
    """(field, reference) of a wasm task whose module comes from a registry, else None."""
    if spec.runtime != "wasm" or spec.file is not None:
        return None
    if spec.image_url is not None:
        return "image_url", spec.image_url
    if spec.image is not None and reference.is_oci(spec.image):
        return "image", spec.image
    return None


def _decode(file: str) -> tuple[bytes, str]:
    try:
        data = base64.b64decode(file, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("file is not valid base64", field="file") from None
    if not data:
        raise Invalid("file is empty", field="file")
    return data, hashlib.sha256(data).hexdigest()


def _inspect(files: Sequence[str]) -> dict[str, Module | Invalid]:
    """Decode, hash and compile (once per digest, in the process's cache): in a thread."""
    found: dict[str, Module | Invalid] = {}
    for file in files:
        try:
            data, digest = _decode(file)
            found[file] = Module(data, digest, process_cache().signatures(digest, data))
        except Invalid as exc:
            found[file] = exc
    return found


async def pull_module(field: str, text: str) -> Module | EdgeplaneError:
    """The module an ``oci://`` reference names, pulled and compiled (oci_modules.py)."""
    try:
        if not reference.is_oci(text):
            raise Invalid(f"{field} must be oci://HOST[:PORT]/REPO[:TAG][@sha256:…]", field=field)
        pulled = await oci_modules.pull(text, field=field)
        digest = hashlib.sha256(pulled.data).hexdigest()
        signatures = await asyncio.to_thread(process_cache().signatures, digest, pulled.data)
    except Invalid as exc:
        return Invalid(exc.detail, field=exc.field or field, reason=exc.reason)
    except EdgeplaneError as exc:
        return exc
    return Module(pulled.data, digest, signatures, pinned=pulled.pinned)


async def inspect_modules(specs: Iterable[TaskSpec]) -> Modules:
    """The modules of ``specs``, each distinct ``file`` (or ``oci://`` reference) once (a
    batch of 1,000 tasks usually carries one module 1,000 times), compiled off the event
    loop."""
    found: dict[str, Module | EdgeplaneError] = {}
    seen: set[str] = set()
    later: list[str] = []
    for spec in specs:
        source = oci_source(spec)
        if source is not None:
            if source[1] not in found:
                found[source[1]] = await pull_module(*source)
            continue
        file = spec.file
        if file is None or file in seen:
            continue
        seen.add(file)
        if len(file) <= INLINE_FILE_CHARS:
            try:
                data, digest = _decode(file)
            except Invalid as exc:
                found[file] = exc
                continue
            compiled = process_cache().cached(digest)
            if compiled is not None:
                found[file] = Module(data, digest, dict(compiled.exports))
                continue
        later.append(file)
    if later:
        found.update(await asyncio.to_thread(_inspect, later))
    return found


def check_network(spec: TaskSpec) -> str:
    """The task's network (``bridge`` when it publishes ports and names none); Invalid
    naming the field when its network, ports or health check cannot be had."""
    if spec.network is None and not spec.ports and spec.healthcheck is None:
        return "none"  # the common case, any runtime: nothing to check
    network = spec.network or ("bridge" if spec.ports else "none")
    if spec.runtime != "container":
        for field, given in (
            ("network", spec.network == "bridge"),
            ("ports", bool(spec.ports)),
            ("healthcheck", spec.healthcheck is not None),
        ):
            if given:
                raise Invalid(f"{field}: only container tasks have one", field=field)
        return "none"
    if spec.ports and network != "bridge":
        raise Invalid("ports are published from network: bridge only", field="ports")
    seen: set[tuple[int, str]] = set()
    names: set[str] = set()
    for index, port in enumerate(spec.ports):
        if (port.port, port.protocol) in seen:
            raise Invalid(
                f"port {port.port}/{port.protocol} is listed twice", field=f"ports[{index}]"
            )
        seen.add((port.port, port.protocol))
        if port.name is not None:
            if port.name in names:
                raise Invalid(f"port name {port.name!r} is used twice", field=f"ports[{index}]")
            names.add(port.name)
    return network


def admit(
    spec: TaskSpec,
    *,
    task_id: str,
    now: float,
    cluster_id: str | None,
    modules: Modules,
    pins: Mapping[str, str] | None = None,
) -> Admitted:
    """Validate one spec and build its task document (started if the spec says ``start``).

    ``modules`` holds the spec's ``file`` inspected (:func:`inspect_modules`).
    ``pins`` maps container images named by tag to the same pinned to their digest
    (:func:`oci_modules.pin_images`). ``cluster_id`` is the manager's cluster; None at
    the root, where a ``cluster_id`` in the spec pins the task to that cluster instead."""
    source = oci_source(spec)
    if spec.runtime == "wasm":
        if spec.file is None and source is None:
            raise Invalid(
                "a wasm task needs 'file' (base64 .wasm) or 'image_url' (oci://…)", field="file"
            )
    elif spec.runtime == "host":
        if not spec.command:
            raise Invalid("a host task needs 'command' (a non-empty list)", field="command")
    elif spec.runtime == "container":
        if not spec.image:
            raise Invalid(
                "a container task needs 'image' (NAME[:TAG] or oci://HOST/REPO[:TAG])",
                field="image",
            )
        if reference.is_oci(spec.image):
            reference.parse(spec.image, field="image")  # Invalid naming the bad part
        elif split_ref(spec.image) is None:
            raise Invalid(f"image {spec.image!r} is not allowed: {NAME_RULE}", field="image")
    else:
        raise Invalid(f"runtime {spec.runtime!r} is not available yet", field="runtime")
    network = check_network(spec)
    if cluster_id is not None and spec.cluster_id is not None and spec.cluster_id != cluster_id:
        raise Invalid(f"unknown cluster {spec.cluster_id!r}", field="cluster_id")
    key = spec.file if source is None else source[1]
    module = None if key is None else modules[key]
    unreachable = None
    if isinstance(module, Unavailable) and module.reason == REGISTRY_UNREACHABLE:
        # Not the user's fault and maybe brief: store the task, resolve it later.
        unreachable, module = module, None
    if isinstance(module, Invalid):
        raise Invalid(module.detail, field=module.field, reason=module.reason)
    if isinstance(module, EdgeplaneError):
        raise module
    data = None if module is None else module.data
    digest = None if module is None else module.digest
    if spec.runtime == "wasm" and module is not None:
        # Inputs taken from dependencies arrive at start; count them with a stand-in.
        inputs = [*spec.inputs, *([0] * len(spec.inputs_from))]
        check_call(module.signatures, spec.export or spec.name, inputs, spec.mode)
    # The spec's fields as they are (nested models are taken over, not dumped and rebuilt:
    # half the cost of admitting a task).
    fields = {name: value for name, value in spec.__dict__.items() if name not in _NOT_STORED}
    fields["network"] = network
    if source is not None and module is not None:
        fields[source[0]] = module.pinned  # every attempt runs what the tag named now
    elif spec.runtime == "container" and pins and spec.image is not None and spec.image in pins:
        fields["image"] = pins[spec.image]
    task = Task.model_validate(
        {
            **fields,
            "id": task_id,
            "started": spec.start,
            "artifact": digest,
            "pinned_worker": spec.worker_id,
            "pinned_cluster": spec.cluster_id if cluster_id is None else None,
            "cluster_id": cluster_id,
            "reason": (
                "not started"
                if not spec.start
                else None
                if unreachable is None
                else f"{REGISTRY_UNREACHABLE}: {unreachable.detail}"
            ),
            "created_at": now,
            "updated_at": now,
        }
    )
    return Admitted(task=task, artifact=data)


async def admit_many(
    specs: Sequence[TaskSpec],
    *,
    ids: Sequence[str],
    now: float,
    cluster_id: str | None,
    batch: bool = True,
) -> list[Admitted]:
    """All or nothing: the first bad spec raises; in a batch its field reads ``tasks[i].…``."""
    admitted = []
    modules = await inspect_modules(specs)
    images = [s.image for s in specs if s.runtime == "container" and s.image]
    try:
        pins = await oci_modules.pin_images(images)
    except Invalid:
        pins = {}  # a bad reference: refused below, naming its task
    for index, (spec, task_id) in enumerate(zip(specs, ids, strict=True)):
        try:
            admitted.append(
                admit(
                    spec,
                    task_id=task_id,
                    now=now,
                    cluster_id=cluster_id,
                    modules=modules,
                    pins=pins,
                )
            )
        except Invalid as exc:
            if not batch:
                raise
            field = f"tasks[{index}].{exc.field}" if exc.field else f"tasks[{index}]"
            raise Invalid(exc.detail, field=field, reason=exc.reason) from None
    return admitted
