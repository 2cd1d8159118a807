"""The one small interface every transport implements: the embedded memory broker and paho-mqtt.

A runtime only ever publishes bytes to a topic, subscribes topic filters, and receives messages and
connection changes through callbacks. Keeping the interface this narrow is what lets the same
runtime run over the in-process broker in tests and over a real MQTT broker in production.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

MessageHandler = Callable[[str, bytes], None]
"""Called with (topic, payload) for every message that matches a subscription."""

ConnectionHandler = Callable[[bool], None]
"""Called with True after every (re)connect, once subscriptions are back in place, and with False
when the connection is lost."""


class TransportError(Exception):
    """A transport refused an operation (bad QoS, topic or payload over the limits, not started)."""


class Transport(Protocol):
    def set_handlers(self, on_message: MessageHandler, on_connection: ConnectionHandler) -> None:
        """Install the callbacks before `start`; a transport has exactly one consumer."""

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        """Subscribe now if connected, and again after every reconnect."""

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Send one message. QoS 0 or 1 only; anything else raises TransportError."""

    def start(self) -> None:
        """Connect (asynchronously for network transports) and keep reconnecting until `stop`."""

    def stop(self) -> None:
        """Disconnect and release threads and sockets. Safe to call twice."""

    @property
    def connected(self) -> bool: ...
