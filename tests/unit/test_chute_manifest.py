"""The chute manifest: every bound checked, unknown fields named, YAML through the safe
loader."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.chutes.manifest import Manifest, load, parse, parse_config, start_order, valid_name
from edgeplane.errors import Invalid
from edgeplane.monitoring import Monitoring

EXAMPLE = """
name: hello
version: "1.0"
description: a tiny web page
services:
  - name: web
    image: busybox
    command: ["sh", "-c", "httpd -f -p 8080"]
    env: {GREETING: hi}
    ports: [{host: 18080, chute: 8080, protocol: tcp}]
    healthcheck: {http: {port: 8080, path: /}, interval_s: 2, timeout_s: 1, retries: 3}
    depends_on: []
resources: {cpu_shares: 1024, memory_mb: 64, pids: 64, disk_mb: 1024,
            bandwidth_kbit: {egress: 10000, ingress: 10000}}
web: {service: web, port: 8080}
config: {}
"""


def base(**changes: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        "name": "c",
        "version": "1",
        "services": [{"name": "s", "image": "busybox"}],
    }
    found.update(changes)
    return found


def field_of(data: Any) -> str:
    with pytest.raises(Invalid) as caught:
        parse(data)
    assert caught.value.field is not None
    return caught.value.field


def test_the_documented_example_loads_with_defaults() -> None:
    found = load(EXAMPLE)
    assert found.name == "hello" and found.services[0].ports[0].host == 18080
    assert parse(base()).resources.cpu_shares == 1024
    assert parse(base()).resources.disk_mb == 1024


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (base(extra=1), "extra"),
        (base(resources={"disk": 5}), "resources.disk"),
        (base(services=[{"name": "s", "image": "b", "limits": {}}]), "services.0.limits"),
        (base(name="Hello"), "name"),
        (base(name="a" * 41), "name"),
        (base(services=[]), "services"),
        (
            base(services=[{"name": "s", "image": "b", "ports": [{"host": 0, "chute": 1}]}]),
            "services.0.ports.0.host",
        ),
        (
            base(services=[{"name": "s", "image": "b", "ports": [{"host": 1, "chute": 65536}]}]),
            "services.0.ports.0.chute",
        ),
        (
            base(services=[{"name": "s", "image": "b", "env": {"../x": "y"}}]),
            "services.0.env.../x.[key]",
        ),
        (base(resources={"memory_mb": 1}), "resources.memory_mb"),
        (base(web={"service": "nope", "port": 80}), "web"),
        (base(services=[{"name": "a", "image": "b", "depends_on": ["zz"]}]), "services"),
        (base(services=[{"name": "s", "image": "oci://h:5000/Box:1"}]), "services.0.image"),
        (base(services=[{"name": "s", "image": "oci://h:99999/box"}]), "services.0.image"),
        (base(services=[{"name": "s", "image": "oci://h/box@sha256:12"}]), "services.0.image"),
    ],
)
def test_bad_fields_are_named(data: dict[str, Any], field: str) -> None:
    assert field_of(data) == field


def test_a_chutes_monitoring_profile_defaults_to_daemon_and_is_checked() -> None:
    assert parse(base()).profile() == Monitoring(interval_s=120, history=500)
    assert parse(base(monitoring="standard")).profile() == Monitoring(interval_s=10, history=100)
    assert parse(base(monitoring="off")).profile() is None
    custom = {"interval_s": 0.5, "history": 20}
    assert parse(base(monitoring=custom)).profile() == Monitoring(**custom)
    assert load("name: c\nversion: '1'\nmonitoring: standard\n"
                "services: [{name: s, image: busybox}]\n").monitoring == "standard"  # fmt: skip
    for bad, field in (
        ("sometimes", "monitoring.name"),
        (5, "monitoring.name"),
        ({"interval_s": 0.01, "history": 5}, "monitoring.custom.interval_s"),
        ({"interval_s": 1, "history": 10**6}, "monitoring.custom.history"),
        ({"interval_s": 1}, "monitoring.custom.history"),
        ({"interval_s": 1, "history": 5, "every": 2}, "monitoring.custom.every"),
    ):
        assert field_of(base(monitoring=bad)) == field, bad


def test_registry_references_follow_the_grammar() -> None:
    pinned = "oci://registry.local:5000/demo/box:1@sha256:" + "a" * 64
    for image in ("oci://registry.local:5000/demo/box:1", pinned, "busybox:1"):
        assert parse(base(services=[{"name": "s", "image": image}])).services[0].image == image
    with pytest.raises(Invalid, match="repository"):
        parse(base(services=[{"name": "s", "image": "oci://h:5000/Box:1"}]))


def test_cross_field_rules() -> None:
    two = [{"name": "a", "image": "b", "ports": [{"host": 80, "chute": 80}]},
           {"name": "b", "image": "b", "ports": [{"host": 80, "chute": 81}]}]  # fmt: skip
    with pytest.raises(Invalid, match="mapped twice"):
        parse(base(services=two))
    two[1]["ports"][0]["protocol"] = "udp"
    parse(base(services=two))  # the same number over udp is another port
    cycle = [{"name": "a", "image": "b", "depends_on": ["b"]},
             {"name": "b", "image": "b", "depends_on": ["a"]}]  # fmt: skip
    with pytest.raises(Invalid, match="cycle"):
        parse(base(services=cycle))
    with pytest.raises(Invalid, match="unknown"):
        parse(base(services=[{"name": "a", "image": "b", "depends_on": ["zz"]}]))
    with pytest.raises(Invalid, match="two services share"):
        parse(base(services=[{"name": "a", "image": "b"}, {"name": "a", "image": "b"}]))


def test_yaml_goes_through_the_safe_loader() -> None:
    with pytest.raises(Invalid):
        load("name: !!python/object:os.system x\n")
    bomb = "a: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    with pytest.raises(Invalid):
        load(bomb)


def test_config_keys_are_never_paths() -> None:
    assert parse_config({"a.b": 1, "c": "x", "d": None}) == {"a.b": 1, "c": "x", "d": None}
    for bad in ({"../etc": 1}, {"a/b": 1}, {"x": {"nested": 1}}, {"": 1}):
        with pytest.raises(Invalid):
            parse_config(bad)


names = st.from_regex(r"[a-z0-9][a-z0-9-]{0,39}", fullmatch=True)


@settings(max_examples=200)
@given(st.text(max_size=50))
def test_names_match_the_pattern_and_nothing_else(text: str) -> None:
    import re

    assert valid_name(text) == (re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", text) is not None)


@settings(max_examples=100, deadline=None)
@given(
    services=st.lists(names, min_size=1, max_size=8, unique=True),
    data=st.data(),
)
def test_acyclic_depends_on_is_accepted_and_ordered(services: list[str], data: Any) -> None:
    # each service may depend only on earlier ones: acyclic by construction
    specs = []
    for i, name in enumerate(services):
        deps = data.draw(st.lists(st.sampled_from(services[:i]), unique=True)) if i else []
        specs.append({"name": name, "image": "busybox", "depends_on": deps})
    found = parse(base(services=specs))
    order = start_order(list(found.services))
    assert sorted(order) == sorted(services)
    for spec in specs:
        assert all(order.index(dep) < order.index(spec["name"]) for dep in spec["depends_on"])


@settings(max_examples=100, deadline=None)
@given(ports=st.lists(st.integers(-5, 70000), min_size=1, max_size=6))
def test_ports_in_range_and_unique_or_invalid(ports: list[int]) -> None:
    spec = {"name": "s", "image": "b", "ports": [{"host": p, "chute": 80} for p in ports]}
    ok = all(1 <= p <= 65535 for p in ports) and len(set(ports)) == len(ports)
    if ok:
        assert isinstance(parse(base(services=[spec])), Manifest)
    else:
        with pytest.raises(Invalid):
            parse(base(services=[spec]))
