"""``oci://`` references: the distribution spec's grammar with bounds, errors naming the
field and the part, and Docker's plain-HTTP rule."""

from __future__ import annotations

import pytest

from edgeplane.artifacts.reference import (
    MAX_REFERENCE,
    Reference,
    is_loopback,
    parse,
    plain_http_allowed,
)
from edgeplane.errors import Invalid

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci://localhost:5000/demo/add:1", Reference("localhost:5000", "demo/add", "1")),
        ("oci://reg.example.com/a", Reference("reg.example.com", "a")),
        (
            f"oci://r.io/a/b_c/d__e/f-g.h@{DIGEST}",
            Reference("r.io", "a/b_c/d__e/f-g.h", None, DIGEST),
        ),
        (
            f"oci://10.0.0.5:5000/x:v1.2_3-rc@{DIGEST}",
            Reference("10.0.0.5:5000", "x", "v1.2_3-rc", DIGEST),
        ),
        ("oci://[::1]:5000/x:latest", Reference("[::1]:5000", "x", "latest")),
    ],
)
def test_valid_references_parse_and_print_back(text: str, expected: Reference) -> None:
    parsed = parse(text)
    assert parsed == expected
    assert str(parsed) == text


def test_ref_is_the_digest_first_then_the_tag_then_latest() -> None:
    assert parse(f"oci://r/a:1@{DIGEST}").ref == DIGEST
    assert parse("oci://r/a:1").ref == "1"
    assert parse("oci://r/a").ref == "latest"
    assert parse("oci://[::1]:5000/a").host == "::1"
    assert parse("oci://r.io:443/a").host == "r.io"


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("docker://r/a:1", "oci://"),
        ("oci://r", "no repository"),
        ("oci://r/", "no repository"),
        ("oci://R_bad/a", "registry"),
        ("oci://r:0/a", "registry"),
        ("oci://r:70000/a", "registry"),
        ("oci://r:/a", "registry"),
        ("oci://[zz]:5000/a", "registry"),
        ("oci://r/A", "repository"),
        ("oci://r/a//b", "repository"),
        ("oci://r/a/", "repository"),
        ("oci://r/-a", "repository"),
        ("oci://r/" + "a" * 256, "repository"),
        ("oci://r/a:", "tag"),
        ("oci://r/a:.x", "tag"),
        ("oci://r/a:" + "t" * 129, "tag"),
        ("oci://r/a:b:c", "tag"),
        ("oci://r/a@sha256:abc", "digest"),
        ("oci://r/a@sha512:" + "a" * 128, "digest"),
        ("oci://r/a@sha256:" + "A" * 64, "digest"),
        ("oci://r/" + "a/" * 400 + "a", "longer than"),
    ],
)
def test_bad_references_name_the_field_and_part(text: str, part: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse(text, field="image")
    assert caught.value.field == "image"
    assert part in caught.value.detail
    assert len(caught.value.detail) < MAX_REFERENCE + 200  # a long input is not echoed whole


def test_plain_http_only_on_loopback_or_when_listed() -> None:
    assert is_loopback("localhost") and is_loopback("127.0.0.9") and is_loopback("::1")
    assert not is_loopback("10.0.0.5") and not is_loopback("example.com")
    assert plain_http_allowed(parse("oci://127.0.0.1:5000/a"))
    assert plain_http_allowed(parse("oci://localhost/a"))
    assert not plain_http_allowed(parse("oci://10.0.0.5:5000/a"))
    assert plain_http_allowed(parse("oci://10.0.0.5:5000/a"), ["10.0.0.5:5000"])
    assert plain_http_allowed(parse("oci://10.0.0.5:5000/a"), ["10.0.0.5"])  # every port
    assert not plain_http_allowed(parse("oci://10.0.0.5:5000/a"), ["10.0.0.5:5001"])
