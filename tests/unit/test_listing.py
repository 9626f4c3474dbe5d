"""Paging and name filters of the task list (pure): cursors and name prefixes."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeplane.errors import Invalid
from edgeplane.model.listing import decode_cursor, encode_cursor, in_order, prefix_end

#: text as a store holds it: no NUL (PostgreSQL refuses it), no surrogates (not UTF-8)
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
positions = st.tuples(st.floats(allow_nan=False, allow_infinity=False), texts)


@given(texts, texts)
def test_a_prefix_is_one_range(name: str, prefix: str) -> None:
    end = prefix_end(prefix)
    in_range = prefix <= name and (end is None or name < end)
    assert in_range == name.startswith(prefix)


@given(texts)
def test_a_name_with_its_own_prefix_is_in_range(prefix: str) -> None:
    end = prefix_end(prefix)
    for name in (prefix, prefix + "a", prefix + "\U0010ffff", prefix + "\x01"):
        assert prefix <= name and (end is None or name < end)


def test_prefix_ends_at_the_edges() -> None:
    assert prefix_end("") is None
    assert prefix_end("\U0010ffff\U0010ffff") is None
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("train") == "traio"
    assert prefix_end("x\ud7ff") == "x\ue000"  # past the surrogates, which no text holds


@given(positions)
def test_a_cursor_names_its_position(position: tuple[float, str]) -> None:
    text = encode_cursor(position)
    assert text.isascii() and "=" not in text and "/" not in text and "+" not in text
    assert decode_cursor(text) == position


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64 at all!",
        "é",
        base64.urlsafe_b64encode(b"[1, 2, 3]").decode(),
        base64.urlsafe_b64encode(b'["1", "a"]').decode(),
        base64.urlsafe_b64encode(b'[true, "a"]').decode(),
        base64.urlsafe_b64encode(b'[1e999, "a"]').decode(),
        base64.urlsafe_b64encode(b'[1, "a\\u0000"]').decode(),
        base64.urlsafe_b64encode(b'{"a": 1}').decode(),
    ],
)
def test_a_cursor_the_server_did_not_give_is_refused_naming_it(text: str) -> None:
    with pytest.raises(Invalid) as refused:
        decode_cursor(text)
    assert refused.value.field == "cursor"


@given(positions, positions)
def test_order_is_the_list_order_either_way(a: tuple[float, str], b: tuple[float, str]) -> None:
    assert in_order(a, b, newest_first=False) == (a > b)
    assert in_order(a, b, newest_first=True) == (a < b)
