"""Second names of body fields: one field accepted under either name (``AliasChoices``).

Outside clients use other names for a few fields (``username`` for ``name``,
``expires_in_s`` for ``expires_in`` and ``ttl_s``); both work, the first is the one the
OpenAPI document shows. A body giving both is refused with 422 naming the field: which
one was meant cannot be told.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field

from edgeplane.errors import Invalid


def either(name: str, other: str, **field: Any) -> Any:
    """A pydantic ``Field`` read from ``name`` or ``other`` (documented as such); pair it
    with :func:`one_of` in the model's ``mode="before"`` validator."""
    about = field.pop("description", "")
    also = f"(also accepted as `{other}`)"
    return Field(
        validation_alias=AliasChoices(name, other),
        description=f"{about} {also}".strip(),
        **field,
    )


def one_of(data: Any, *pairs: tuple[str, str]) -> Any:
    """``data`` unchanged; :class:`Invalid` naming the field when a body gives both names
    of one of ``pairs``. (Raised, not a ``ValueError``: pydantic would place a model
    validator's error on the whole body, where this names the field.)"""
    if isinstance(data, dict):
        for name, other in pairs:
            if name in data and other in data:
                raise Invalid(f"{name} and {other} are the same field: give one", field=name)
    return data
