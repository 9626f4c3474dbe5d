"""The one YAML loader: alias expansion, nesting and size bounded before anything is built."""

from __future__ import annotations

import pytest

from edgeplane import safeyaml
from edgeplane.errors import Invalid
from edgeplane.limits import MAX_YAML_ALIASES, MAX_YAML_BYTES
from yaml_fixtures import LAUGHS

PARSERS = [pytest.param(True, id="libyaml"), pytest.param(False, id="pure-python")]


@pytest.mark.parametrize("libyaml", PARSERS)
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (LAUGHS, "values once aliases are expanded"),
        ("a: &a [1]\nb: [" + ", ".join(["*a"] * (MAX_YAML_ALIASES + 1)) + "]", "aliases"),
        ("a: &a [x, *a]", "alias *a inside its own anchor"),
        ("[" * 100_000, "nested deeper than"),
        ("a: *nowhere", "undefined alias"),
        ("a: !!python/object/apply:os.system [true]", "could not determine a constructor"),
        ("a: [1, 2", "bad YAML at line"),
        ("a: 1\n" + "b: " + "x" * MAX_YAML_BYTES, "over the 1024 KiB limit"),
    ],
)
def test_refused_with_where_and_why(libyaml: bool, text: str, message: str) -> None:
    with pytest.raises(Invalid) as exc:
        safeyaml.load(text, "app.yaml", libyaml=libyaml)
    assert exc.value.detail.startswith("app.yaml: ")
    assert message in exc.value.detail
    assert exc.value.field == "body"


@pytest.mark.parametrize("libyaml", PARSERS)
def test_a_string_that_is_not_unicode_is_refused(libyaml: bool) -> None:
    with pytest.raises(Invalid, match="Unicode"):
        safeyaml.load('a: "\\ud800"', libyaml=libyaml)


@pytest.mark.parametrize("libyaml", PARSERS)
def test_ordinary_documents_and_a_few_aliases_load(libyaml: bool) -> None:
    text = "base: &base {runtime: host, command: [sh]}\ntasks: [*base, *base]\n"
    doc = safeyaml.load(text, libyaml=libyaml)
    assert doc["tasks"] == [{"runtime": "host", "command": ["sh"]}] * 2
    assert safeyaml.load(b"- 1\n- [2, {a: b}]\n", libyaml=libyaml) == [1, [2, {"a": "b"}]]
