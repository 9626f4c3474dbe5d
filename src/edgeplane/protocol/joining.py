"""The two messages of joining (docs/broker-security.md): a member presents its join token
on ``Topics.join(nonce)`` and its parent answers on ``Topics.join_answer(nonce)``. A
worker joins its manager (``{domain}/{cluster}/join/{nonce}``), a cluster's manager its
root (``{domain}/clusters/join/{nonce}/ask``); the field names say ``worker`` for both."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from edgeplane.model.bounds import Label
from edgeplane.protocol.topics import SEGMENT_PATTERN

#: a worker id is also its MQTT username and a topic level: no wildcards, no separators,
#: no '.' (NATS refuses it in a topic)
WORKER_ID_PATTERN = SEGMENT_PATTERN


class JoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=200)
    #: the id the worker would like (the token's own id wins when it names one); a
    #: cluster's id when a cluster joins its root (which refuses a token for another one)
    worker_id: str = Field(pattern=WORKER_ID_PATTERN)


class JoinAnswer(BaseModel):
    """Credentials (on success) or why not (``error``)."""

    model_config = ConfigDict(extra="forbid")

    worker_id: str = ""
    username: str = ""
    password: str = Field(default="", repr=False)
    #: hex HMAC-SHA256 key the worker checks the manager's commands with
    mac_key: str = Field(default="", repr=False)
    labels: dict[Label, Label] = Field(default_factory=dict)
    error: str = ""
