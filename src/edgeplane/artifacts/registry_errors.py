"""What can go wrong talking to a registry, each with the ``reason`` a task fails with.

Kept apart from the client so the control plane can name these reasons without importing
httpx.
"""

from __future__ import annotations

from edgeplane.errors import EdgeplaneError, Invalid, NotFound, Unavailable


class ArtifactNotFound(NotFound):
    """The registry does not know the repository, tag or digest (named in the detail)."""

    reason = "artifact_not_found"


class RegistryUnreachable(Unavailable):
    """No answer from the registry (connection, timeout, 5xx, 429): worth a retry."""

    title = "Registry unreachable"
    reason = "registry_unreachable"


class RegistryDenied(EdgeplaneError):
    """The registry refused the credentials (or asked for some and none were given)."""

    status = 401
    title = "Registry denied access"
    reason = "registry_denied"


class DigestMismatch(EdgeplaneError):
    """What the registry sent does not hash to the digest it was asked for: nothing kept."""

    status = 502
    title = "Digest mismatch"
    reason = "digest_mismatch"


class ArtifactTooBig(EdgeplaneError):
    """An artifact (or a manifest) over the configured maximum: refused before or while
    downloading, nothing kept."""

    status = 413
    title = "Artifact too big"
    reason = "artifact_too_big"


class RegistryProtocolError(EdgeplaneError):
    """The registry answered something the distribution spec does not allow."""

    status = 502
    title = "Bad registry answer"
    reason = "registry_error"


__all__ = [
    "ArtifactNotFound",
    "ArtifactTooBig",
    "DigestMismatch",
    "Invalid",
    "RegistryDenied",
    "RegistryProtocolError",
    "RegistryUnreachable",
]
