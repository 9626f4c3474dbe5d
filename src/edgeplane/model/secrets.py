"""Secret env: values that leave the manager only towards the worker that runs the task.

A task body's ``secret_env`` (``{NAME: value}``, bounded like ``env``) is stored with the
task, since retries need it, but every serialisation of a model that holds it shows each
value as :data:`REDACTED` unless the caller asks for the values with the :data:`REVEAL`
context. Redacting is the default so that a read path nobody thought of (an API answer, a
log line, the CLI printing a document) cannot leak a value; the few places that must keep
the values (the store, a template copied into a new task) say so. Nothing is done when
``secret_env`` is empty: the serialiser returns the empty dict it was given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import PlainSerializer, SerializationInfo

#: What a read shows in place of a secret value.
REDACTED = "***"
#: Serialisation context that keeps secret values: ``model_dump(context=REVEAL)``.
REVEAL: dict[str, Any] = {"secrets": "reveal"}
#: The body field holding secret env, in task bodies and templates.
FIELD = "secret_env"


def revealing(info: SerializationInfo) -> bool:
    context = info.context
    return isinstance(context, dict) and context.get("secrets") == "reveal"


def redact(env: Mapping[str, str]) -> dict[str, str]:
    """``env``'s names, each with :data:`REDACTED` for its value."""
    return dict.fromkeys(env, REDACTED)


def _serialize(value: dict[str, str], info: SerializationInfo) -> dict[str, str]:
    if not value or revealing(info):
        return value
    return redact(value)


#: A ``dict[str, str]`` whose values are redacted unless serialised with :data:`REVEAL`.
Redacted = PlainSerializer(_serialize)
SecretDict = Annotated[dict[str, str], Redacted]


def redact_template(body: Any) -> Any:
    """A task or job body (a schedule's template, a dict) with every ``secret_env`` value
    redacted: the task's own and those of a job's ``tasks``."""
    if not isinstance(body, dict):
        return body
    out = dict(body)
    secret = out.get(FIELD)
    if isinstance(secret, dict) and secret:
        out[FIELD] = redact(secret)
    tasks = out.get("tasks")
    if isinstance(tasks, list):
        out["tasks"] = [redact_template(t) for t in tasks]
    return out


def check_disjoint(env: Mapping[str, str], secret_env: Mapping[str, str]) -> None:
    """A name may be in ``env`` or in ``secret_env``, not both (the runtime sees one env).
    The message names the variables, never a value."""
    both = sorted(set(env) & set(secret_env))
    if both:
        raise ValueError(
            f"{', '.join(both[:5])} {'is' if len(both) == 1 else 'are'} in both env and "
            "secret_env; give each variable once"
        )
