"""OCI artifact references as tasks and the CLI name them:
``oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]``.

The grammar is the distribution spec's (name components, tag, digest), with bounds on
every part, so a reference that parses here is one any registry accepts in a URL. Only
sha256 digests: it is what every registry and the worker's cache key on.

The insecure rule is Docker's: plain HTTP only for a registry on loopback or one listed
as insecure in the configuration; every other registry is HTTPS with verified
certificates.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from edgeplane.errors import Invalid

SCHEME = "oci://"
DEFAULT_TAG = "latest"
#: Longest reference taken at all (host 255 + name 255 + tag 128 + digest 71 and separators).
MAX_REFERENCE = 720
MAX_HOST = 255
#: The distribution spec lets registries refuse names over 255 characters; most do.
MAX_NAME = 255

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::([0-9]{{1,5}}))?")
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")

NAME_RULE = "lowercase path components of letters, digits and . _ __ - separators"
TAG_RULE = "1-128 of letters, digits, . _ - (not starting with . or -)"
DIGEST_RULE = "sha256: and 64 lowercase hex digits"


@dataclass(frozen=True)
class Reference:
    """A parsed reference. ``tag`` and ``digest`` may both be None (a repository, for
    listing); :attr:`ref` is what a manifest is fetched by."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str:
        """The manifest reference: the digest when given (it wins over a tag), else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def host(self) -> str:
        """The registry's host without the port (IPv6 without brackets)."""
        host = self.registry
        if host.startswith("["):
            return host[1 : host.index("]")]
        return host.rpartition(":")[0] if ":" in host else host

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag)

    def repo_only(self) -> Reference:
        return Reference(self.registry, self.repository)

    def __str__(self) -> str:
        text = f"{SCHEME}{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def is_oci(text: str) -> bool:
    return text.startswith(SCHEME)


def parse(text: str, *, field: str = "image") -> Reference:
    """``oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]`` → :class:`Reference`, or
    :class:`Invalid` naming ``field`` and the part that is wrong."""
    if not isinstance(text, str) or not text.startswith(SCHEME):
        raise Invalid(f"must be oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX], got {text!r:.80}",
                      field=field)  # fmt: skip
    if len(text) > MAX_REFERENCE:
        raise Invalid(f"reference longer than {MAX_REFERENCE} characters", field=field)
    rest = text[len(SCHEME) :]
    host, slash, path = rest.partition("/")
    if not slash or not path:
        raise Invalid(f"{text!r}: no repository after the registry host", field=field)
    _check_host(host, text, field)
    path, at, digest = path.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise Invalid(f"{text!r}: digest must be {DIGEST_RULE}", field=field)
    name, colon, tag = path.partition(":")
    if colon and not _TAG.fullmatch(tag):
        raise Invalid(f"{text!r}: tag must be {TAG_RULE}", field=field)
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise Invalid(
            f"{text!r}: repository must be {NAME_RULE}, at most {MAX_NAME} characters",
            field=field,
        )
    return Reference(host, name, tag if colon else None, digest if at else None)


def _check_host(host: str, text: str, field: str) -> None:
    match = _HOST.fullmatch(host) if len(host) <= MAX_HOST else None
    port = match.group(1) if match else None
    if match is None or (port is not None and not 0 < int(port) <= 65535):
        raise Invalid(f"{text!r}: registry must be HOST[:PORT] (port 1-65535)", field=field)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1 : host.index("]")])
        except ValueError:
            raise Invalid(
                f"{text!r}: registry {host} is not an IPv6 address", field=field
            ) from None


def is_loopback(host: str) -> bool:
    """``localhost`` (and ``*.localhost``) or a loopback address, as Docker counts it."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_allowed(reference: Reference, insecure: Iterable[str] = ()) -> bool:
    """Docker's rule: plain HTTP for a loopback registry or one listed as insecure
    (``HOST:PORT`` or ``HOST``, which covers every port of it)."""
    listed = set(insecure)
    return is_loopback(reference.host) or reference.registry in listed or reference.host in listed
