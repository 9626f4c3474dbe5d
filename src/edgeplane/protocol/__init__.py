"""The wire: topics, the versioned envelope and its codec, message bodies."""

from edgeplane.protocol.codec import Envelope, decode, encode
from edgeplane.protocol.messages import (
    FINAL_STATES,
    AckEvents,
    Alive,
    Assignment,
    ChuteRequest,
    ChuteResponse,
    EventKey,
    Hello,
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
    "ChuteRequest",
    "ChuteResponse",
    "Envelope",
    "EventKey",
    "EventOutbox",
    "Hello",
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
