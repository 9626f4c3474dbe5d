"""The chute store of a manager (or the root): chute manifests published by name and
version, read back, resolved for an install (docs/chutes.md, "The chute store").

A published version is immutable: publishing ``name@version`` again with the same
content (the same digest, ``edgeplane.chutes.catalog``) is a no-op, with other content a
conflict, even once the version was deleted. A chute's name belongs to one project, that
of its first version; who may read and publish it follows the projects of
docs/security.md (another project's chute is "not found").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from edgeplane.chutes import catalog
from edgeplane.chutes import manifest as manifests
from edgeplane.chutes.catalog import (
    PublishedVersion,
    Ref,
    StoreChute,
    StoreChuteSummary,
    StoreManifest,
)
from edgeplane.clock import Clock
from edgeplane.errors import Conflict, Invalid, NotFound
from edgeplane.model import Page
from edgeplane.security import projects
from edgeplane.store import ChuteVersionRecord, StoreChuteRecord, TokenRecord

DEFAULT_PROJECT = "default"


class ChuteCatalog(Protocol):
    """The store's calls of the chute store."""

    async def publish_chute(
        self, record: ChuteVersionRecord, manifest: str, *, max_versions: int
    ) -> tuple[ChuteVersionRecord, bool]: ...
    async def get_store_chute(self, name: str) -> StoreChuteRecord | None: ...
    async def list_store_chutes(
        self, *, limit: int = 100, offset: int = 0, projects: Sequence[str] | None = None
    ) -> tuple[list[StoreChuteRecord], int]: ...
    async def get_chute_version(
        self, name: str, version: str
    ) -> tuple[ChuteVersionRecord, str] | None: ...
    async def delete_chute_version(self, name: str, version: str) -> bool: ...


@dataclass(frozen=True)
class Resolved:
    """A store reference resolved: the version, its manifest as JSON data."""

    version: PublishedVersion
    manifest: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.version.name}@{self.version.version}"


def _view(record: ChuteVersionRecord) -> PublishedVersion:
    return PublishedVersion(
        name=record.name,
        version=record.version,
        project=record.project,
        description=record.description,
        digest=record.digest,
        published_at=record.published_at,
        published_by=record.published_by,
    )


def _newest_first(chute: StoreChuteRecord) -> list[ChuteVersionRecord]:
    return sorted(chute.versions, key=lambda v: catalog.version_key(v.version), reverse=True)


def summary(chute: StoreChuteRecord) -> StoreChuteSummary:
    """A chute with at least one live version, as a list shows it."""
    versions = _newest_first(chute)
    return StoreChuteSummary(
        name=chute.name,
        project=chute.project,
        latest=versions[0].version,
        description=versions[0].description,
        versions=len(versions),
        updated_at=max(v.published_at for v in versions),
    )


def check_name(name: str) -> str:
    if not manifests.valid_name(name):
        raise Invalid(f"{name!r} is not a chute name", field="name")
    return name


def check_version(version: str) -> str:
    if not manifests.valid_version(version):
        raise Invalid(f"{version!r} is not a chute version", field="version")
    return version


class ChuteStore:
    def __init__(self, store: ChuteCatalog, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def publish(
        self, caller: TokenRecord, body: Any, project: str | None = None
    ) -> tuple[PublishedVersion, bool]:
        """Publish the manifest ``body`` (JSON data); the version and whether it is new.
        ``project`` None: the chute's own when it exists (and the caller sees it), else
        ``default``."""
        manifest = manifests.parse(body)
        text = catalog.encode(manifest)
        if len(text) > catalog.MAX_MANIFEST_BYTES:
            raise Invalid(
                f"the manifest is over {catalog.MAX_MANIFEST_BYTES // 1024} KiB", field="body"
            )
        existing = await self.store.get_store_chute(manifest.name)
        seen = existing is not None and projects.sees(caller, existing.project)
        if project is None:
            project = existing.project if existing is not None and seen else DEFAULT_PROJECT
        projects.check_new(caller, project)
        if existing is not None and existing.project != project:
            if seen:
                raise Conflict(
                    f"chute {manifest.name!r} is in project {existing.project!r}", field="project"
                )
            raise Conflict(
                f"the chute name {manifest.name!r} is taken by another project", field="name"
            )
        record = ChuteVersionRecord(
            name=manifest.name,
            version=manifest.version,
            project=project,
            description=manifest.description,
            digest=catalog.digest_of(text),
            published_at=self.clock.now(),
            published_by=caller.user,
        )
        stored, written = await self.store.publish_chute(
            record, text, max_versions=catalog.MAX_VERSIONS
        )
        if not written and stored.digest != record.digest:
            ref = f"{manifest.name}@{manifest.version}"
            if stored.deleted:
                raise Conflict(
                    f"{ref} was published with other content and deleted since: a version "
                    "is never published again with other content; give it a new version",
                    field="version",
                )
            raise Conflict(
                f"{ref} is published already, with other content: a published version "
                "never changes; give it a new version",
                field="version",
            )
        return _view(stored), written

    async def _visible(self, caller: TokenRecord, name: str) -> StoreChuteRecord:
        chute = await self.store.get_store_chute(check_name(name))
        if chute is None or not chute.versions or not projects.sees(caller, chute.project):
            raise NotFound(f"no chute {name!r} in the store", field="name")
        return chute

    async def listing(
        self, caller: TokenRecord, *, limit: int = 100, offset: int = 0
    ) -> Page[StoreChuteSummary]:
        found, total = await self.store.list_store_chutes(
            limit=limit, offset=offset, projects=projects.visible(caller)
        )
        return Page[StoreChuteSummary](items=[summary(c) for c in found], total=total)

    async def show(self, caller: TokenRecord, name: str) -> StoreChute:
        chute = await self._visible(caller, name)
        versions = _newest_first(chute)
        return StoreChute(
            name=chute.name,
            project=chute.project,
            latest=versions[0].version,
            description=versions[0].description,
            versions=[_view(v) for v in versions],
        )

    async def version(self, caller: TokenRecord, name: str, version: str) -> StoreManifest:
        ref = Ref(check_name(name), check_version(version))
        found = await self.resolve(caller, ref, field="version")
        return StoreManifest(**found.version.model_dump(), manifest=found.manifest)

    async def resolve(self, caller: TokenRecord, ref: Ref, field: str = "name") -> Resolved:
        """The version ``ref`` names (its latest when it names none), as the caller
        sees it: :class:`NotFound` naming ``field`` otherwise."""
        chute = await self.store.get_store_chute(ref.name)
        visible = chute is not None and projects.sees(caller, chute.project)
        wanted = ref.version
        if wanted is None and chute is not None:
            wanted = catalog.latest([v.version for v in chute.versions])
        found = None
        if visible and wanted is not None:
            found = await self.store.get_chute_version(ref.name, wanted)
        if found is None:
            raise NotFound(f"no chute {str(ref)!r} in the store", field=field)
        record, text = found
        try:
            manifest = orjson.loads(text)
        except orjson.JSONDecodeError:  # a store edited by hand: "not found", not a 500
            raise NotFound(
                f"chute {str(ref)!r} cannot be read from the store", field=field
            ) from None
        return Resolved(_view(record), manifest)

    async def delete(self, caller: TokenRecord, name: str, version: str) -> None:
        """Delete a version: it can no longer be read or installed; its name and version
        are never published again with other content."""
        chute = await self.store.get_store_chute(check_name(name))
        ref = f"{name}@{check_version(version)}"
        if chute is None or not projects.sees(caller, chute.project):
            raise NotFound(f"no chute {ref!r} in the store", field="version")
        if not await self.store.delete_chute_version(name, version):
            raise NotFound(f"no chute {ref!r} in the store", field="version")
