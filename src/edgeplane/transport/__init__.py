"""MQTT transport: the self-healing link every role uses, and the broker `up` embeds."""

from __future__ import annotations

from edgeplane.transport.broker import EmbeddedBroker, free_port
from edgeplane.transport.link import (
    BrokerAddress,
    LinkStats,
    MqttLink,
    Will,
    kept_client_id,
    parse_broker_url,
    parse_broker_urls,
    unique_client_id,
    without_credentials,
)

__all__ = [
    "BrokerAddress",
    "EmbeddedBroker",
    "LinkStats",
    "MqttLink",
    "Will",
    "free_port",
    "kept_client_id",
    "parse_broker_url",
    "parse_broker_urls",
    "unique_client_id",
    "without_credentials",
]
