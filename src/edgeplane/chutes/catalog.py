"""The chute store's rules (docs/chutes.md, "The chute store"), pure: references
(``NAME`` or ``NAME@VERSION``), what "the same content" of a manifest is (its canonical
form and digest), which version is the latest, and the shapes the API answers with.

A manifest's canonical form is its model dumped without the fields left at their
defaults, keys sorted: a YAML and a JSON file of one manifest, in any key order, with or
without ``cpu_shares: 1024`` spelt out, are the same content and have one digest. The
node computes the same digest from what it is sent, so a change records which store
version it installed and the two can be compared.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from edgeplane.chutes.manifest import Manifest, valid_name, valid_version
from edgeplane.errors import Invalid

#: Live (not deleted) versions one chute keeps at most: past it, delete old ones first.
MAX_VERSIONS = 256
#: A manifest's canonical JSON, at most (a generous chute is a few KiB).
MAX_MANIFEST_BYTES = 64 * 1024
#: ``NAME@VERSION``: 40 + 1 + 64 characters.
MAX_REF = 105


@dataclass(frozen=True)
class Ref:
    """A chute in the store: its name and a version (None: the latest)."""

    name: str
    version: str | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def parse_ref(text: object, field: str = "store") -> Ref:
    """``NAME`` or ``NAME@VERSION``; :class:`Invalid` naming ``field`` otherwise."""
    shape = "NAME or NAME@VERSION (a chute's name, and a version as in its chute.yaml)"
    if not isinstance(text, str) or not 0 < len(text) <= MAX_REF:
        raise Invalid(f"{field}: give {shape}", field=field)
    name, at, version = text.partition("@")
    if not valid_name(name) or (at and not valid_version(version)):
        raise Invalid(f"{field}: {text!r} is not {shape}", field=field)
    return Ref(name, version if at else None)


def canonical(manifest: Manifest) -> dict[str, Any]:
    """The manifest as JSON data, the fields at their defaults left out."""
    return manifest.model_dump(mode="json", exclude_defaults=True)


def encode(manifest: Manifest) -> str:
    """The canonical JSON text (ASCII: a lone surrogate a JSON body let in is escaped)."""
    return json.dumps(canonical(manifest), sort_keys=True, separators=(",", ":"))


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def digest(manifest: Manifest) -> str:
    """``sha256:…`` of the canonical JSON: equal exactly when the content is the same."""
    return digest_of(encode(manifest))


def _part(text: str) -> tuple[int, int, str]:
    # numbers by value and before words, as semver orders pre-release identifiers
    return (0, int(text), "") if text.isascii() and text.isdigit() else (1, 0, text)


def version_key(version: str) -> tuple[Any, ...]:
    """Orders versions as semver does, for any version string a manifest may have:
    dot-separated parts compared one by one (numbers by value: ``1.10`` after ``1.9``),
    a pre-release (``-rc.1``) before its release, build metadata (``+…``) only to break
    a tie; the string itself last, so the order is total."""
    core, _, build = version.partition("+")
    release, dash, pre = core.partition("-")
    return (
        tuple(_part(p) for p in release.split(".")),
        0 if dash else 1,
        tuple(_part(p) for p in pre.split(".")) if dash else (),
        build,
        version,
    )


def latest(versions: list[str]) -> str | None:
    """The highest version by :func:`version_key` (None: none)."""
    return max(versions, key=version_key, default=None)


# --- what the API answers -------------------------------------------------------------------


class PublishedVersion(BaseModel):
    """One published version of a chute, without its manifest."""

    name: str
    version: str
    project: str
    description: str
    #: ``sha256:`` of the manifest's canonical JSON
    digest: str
    published_at: float
    published_by: str


class StoreManifest(PublishedVersion):
    """One published version and its manifest (canonical: fields at defaults left out)."""

    manifest: dict[str, Any]


class StoreChute(BaseModel):
    """A chute in the store: its project, its latest version and all its versions."""

    name: str
    project: str
    latest: str
    #: the latest version's
    description: str
    #: newest version first
    versions: list[PublishedVersion]


class StoreChuteSummary(BaseModel):
    """A chute in a list of the store."""

    name: str
    project: str
    latest: str
    description: str
    #: how many versions it has
    versions: int
    #: when its newest publication was made
    updated_at: float
