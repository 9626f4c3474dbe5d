"""MQTT transport: the self-healing link every role uses, and the broker `up` embeds."""

from __future__ import annotations

from edgeplane.transport.broker import EmbeddedBroker, free_port
from edgeplane.transport.link import (
    BrokerAddress,
    LinkStats,
    MqttLink,
    Will,
    parse_broker_url,
    unique_client_id,
)

__all__ = [
    "BrokerAddress",
    "EmbeddedBroker",
    "LinkStats",
    "MqttLink",
    "Will",
    "free_port",
    "parse_broker_url",
    "unique_client_id",
]
