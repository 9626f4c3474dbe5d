"""The wire: topics, the versioned envelope and its codec, message bodies."""

from edgeplane.protocol.codec import Envelope, decode, encode
from edgeplane.protocol.messages import (
    FINAL_STATES,
    AckEvents,
    Alive,
    Assignment,
    EventKey,
    Hello,
    ChuteRequest,
    ChuteResponse,
    Reregister,
    StartTasks,
    StopTasks,
    TaskEvent,
    TaskEvents,
    Unrunnable,
    Welcome,
    parse_body,
)
from edgeplane.protocol.outbox import EventOutbox
from edgeplane.protocol.topics import Topics

__all__ = [
    "FINAL_STATES",
    "AckEvents",
    "Alive",
    "Assignment",
    "Envelope",
    "EventKey",
    "EventOutbox",
    "Hello",
    "ChuteRequest",
    "ChuteResponse",
    "Reregister",
    "StartTasks",
    "StopTasks",
    "TaskEvent",
    "TaskEvents",
    "Topics",
    "Unrunnable",
    "Welcome",
    "decode",
    "encode",
    "parse_body",
]
