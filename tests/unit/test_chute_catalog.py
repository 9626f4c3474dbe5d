"""The chute store's pure rules: references, a manifest's canonical form and digest (what
"the same content" is), and the order of versions (which one is the latest)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edgeplane.chutes import catalog
from edgeplane.chutes.catalog import Ref, canonical, digest, latest, parse_ref, version_key
from edgeplane.chutes.manifest import load, parse
from edgeplane.errors import Invalid

EXAMPLE = """
name: hello
version: "1.0"
description: a tiny web page
services:
  - name: web
    image: busybox
    command: ["sh", "-c", "httpd -f -p 8080"]
    env: {GREETING: hi}
    ports: [{host: 18080, chute: 8080}]
    healthcheck: {http: {port: 8080}}
resources: {memory_mb: 64}
web: {service: web, port: 8080}
"""
#: the same chute, its defaults spelt out, keys in another order, as JSON
SPELT_OUT = {
    "web": {"port": 8080, "service": "web"},
    "config": {},
    "resources": {"bandwidth_kbit": {}, "disk_mb": 1024, "memory_mb": 64, "cpu_shares": 1024},
    "services": [
        {
            "depends_on": [],
            "healthcheck": {"retries": 3, "http": {"path": "/", "port": 8080}, "interval_s": 2},
            "ports": [{"protocol": "tcp", "chute": 8080, "host": 18080}],
            "env": {"GREETING": "hi"},
            "command": ["sh", "-c", "httpd -f -p 8080"],
            "image": "busybox",
            "name": "web",
        }
    ],
    "description": "a tiny web page",
    "version": "1.0",
    "name": "hello",
}


def test_references_name_a_chute_and_maybe_a_version() -> None:
    assert parse_ref("hello") == Ref("hello")
    assert parse_ref("hello@1.0-rc.1+b7") == Ref("hello", "1.0-rc.1+b7")
    assert str(parse_ref("hello@2")) == "hello@2" and str(Ref("hello")) == "hello"


@pytest.mark.parametrize(
    "text", ["", "Hello", "a b", "hello@", "hello@-1", "@1", "hello@1@2", "x" * 41, 7, None,
             "hello@" + "1" * 65, "../etc@1", "hello\x00@1"],
)  # fmt: skip
def test_a_bad_reference_is_refused_naming_the_field(text: object) -> None:
    with pytest.raises(Invalid) as caught:
        parse_ref(text, field="store")
    assert caught.value.field == "store"
    assert "NAME@VERSION" in caught.value.detail


def test_one_manifest_in_yaml_or_json_any_order_defaults_or_not_has_one_digest() -> None:
    assert digest(load(EXAMPLE)) == digest(parse(SPELT_OUT))
    assert canonical(parse(SPELT_OUT)) == canonical(load(EXAMPLE))
    assert "cpu_shares" not in json.dumps(canonical(parse(SPELT_OUT)))  # defaults left out
    assert digest(load(EXAMPLE)).startswith("sha256:") and len(digest(load(EXAMPLE))) == 71


@pytest.mark.parametrize(
    "change",
    [
        {"description": "another page"},
        {"version": "1.1"},
        {"config": {"a": 1}},
        {"config": {"a": 1.0}},  # a float in the chute's config.json, not an int
        {"resources": {"cpu_shares": 512}},
    ],
)
def test_any_change_of_content_changes_the_digest(change: dict[str, Any]) -> None:
    assert digest(parse({**SPELT_OUT, **change})) != digest(parse(SPELT_OUT))


def test_a_changed_argument_changes_the_digest() -> None:
    services = [{**SPELT_OUT["services"][0], "command": ["sh", "-c", "httpd -f -p 8081"]}]
    assert digest(parse({**SPELT_OUT, "services": services})) != digest(parse(SPELT_OUT))


names = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
texts = st.text(max_size=20)
services = st.fixed_dictionaries(
    {"name": names, "image": st.from_regex(r"[a-z]{1,8}(:[a-z0-9]{1,4})?", fullmatch=True)},
    optional={
        "command": st.lists(texts, max_size=4),
        "env": st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True), texts,
                               max_size=3),
        "ports": st.lists(
            st.fixed_dictionaries({"host": st.integers(1, 65535), "chute": st.integers(1, 65535)},
                                  optional={"protocol": st.sampled_from(["tcp", "udp"])}),
            max_size=2,
        ),
    },
)  # fmt: skip
manifests = st.fixed_dictionaries(
    {
        "name": names,
        "version": st.from_regex(r"[0-9]{1,3}(\.[0-9a-z]{1,3}){0,2}", fullmatch=True),
        "services": st.lists(services, min_size=1, max_size=3, unique_by=lambda s: s["name"]),
    },
    optional={
        "description": texts,
        "config": st.dictionaries(
            st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True),
            st.none() | st.booleans() | st.integers(-(2**40), 2**40) | texts,
            max_size=3,
        ),
        "resources": st.fixed_dictionaries(
            {}, optional={"cpu_shares": st.integers(2, 262144), "memory_mb": st.integers(4, 4096)}
        ),
    },
)


def _shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON data, every object's keys in another order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


def _valid(data: dict[str, Any]) -> Any:
    try:
        return parse(data)
    except Invalid:
        assume(False)  # two ports on one host port: the manifest's own rule, not ours


@settings(max_examples=200, deadline=None)
@given(manifests, st.integers(0, 2**32))
def test_the_digest_is_of_the_content_alone(data: dict[str, Any], seed: int) -> None:
    found = _valid(data)
    shuffled = _shuffled(data, random.Random(seed))
    spelt = {**data, "config": data.get("config", {}), "resources": found.resources.model_dump()}
    assert digest(parse(shuffled)) == digest(found)
    assert digest(parse(spelt)) == digest(found)
    # what is stored is read back as the very same manifest
    assert parse(json.loads(catalog.encode(found))) == found


@settings(max_examples=200, deadline=None)
@given(manifests, manifests)
def test_two_manifests_share_a_digest_only_when_they_are_the_same(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    first, second = _valid(a), _valid(b)
    if digest(first) == digest(second):
        assert first == second
    if first != second:
        assert digest(first) != digest(second)


SEMVER = [  # semver.org's precedence example, lowest first, and more
    "0.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
    "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2", "1.9.0", "1.10.0", "2", "10",
]  # fmt: skip


def test_versions_order_as_semver_does() -> None:
    shuffled = list(SEMVER)
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=version_key) == SEMVER
    assert latest(shuffled) == "10"
    assert latest([]) is None
    # build metadata only breaks ties; words after numbers
    assert sorted(["1.0+b2", "1.0+b1", "1.0"], key=version_key) == ["1.0", "1.0+b1", "1.0+b2"]
    assert latest(["1.0", "1.x"]) == "1.x"


versions = st.from_regex(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,12}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(versions, min_size=1, max_size=8, unique=True), st.randoms())
def test_the_latest_is_one_whatever_the_order_of_publication(
    found: list[str], rng: random.Random
) -> None:
    again = list(found)
    rng.shuffle(again)
    assert latest(again) == latest(found) and latest(found) in found
    # a total order: no two different versions compare equal
    assert len({version_key(v) for v in found}) == len(found)


@settings(max_examples=300, deadline=None)
@given(st.tuples(*[st.integers(0, 10**6)] * 3), st.tuples(*[st.integers(0, 10**6)] * 3))
def test_numeric_versions_order_by_their_numbers(
    a: tuple[int, int, int], b: tuple[int, int, int]
) -> None:
    left, right = ".".join(map(str, a)), ".".join(map(str, b))
    assert (version_key(left) < version_key(right)) == (a < b)
    assert version_key(f"{left}-rc.1") < version_key(left)
