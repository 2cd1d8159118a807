"""Turn what a user says about the broker into a Transport.

Users pass the embedded `MemoryBroker` (tests, demos), a ready-made transport, or an MQTT URL; the
role facades accept all three so that switching from a test to a real broker is one argument.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import attrs

from ..machines.feature import DeviceKey
from .identity.credentials import DeviceCredentials
from .mqtt.memory_broker import MemoryBroker
from .mqtt.transport import MqttProtocol, MqttTransport, settings_from_url
from .transport import Transport

Broker = MemoryBroker | Transport | str


@attrs.frozen
class MqttOptions:
    """How to reach a real broker beyond its URL: TLS files, reconnect pacing, protocol."""

    ca_file: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    protocol: MqttProtocol = "3.1.1"
    keepalive: int = 60
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    username: str | None = None
    """The platform's own broker login (a device logs in with its key or certificate)."""
    password: str | None = attrs.field(default=None, repr=False)
    client_id: str | None = None
    """A platform's client id when the broker ties it to the login (RabbitMQ, ACLs on %c)."""


def transport_for(
    broker: Broker,
    key: DeviceKey | None,
    psk: str | None = None,
    options: MqttOptions | None = None,
    *,
    session_id: str | None = None,
) -> Transport:
    """A transport for a device (`key`) or for the platform (`key` None).

    With a URL a device logs in with Tencent's key credentials when it has a `psk`; a platform
    gets a unique client id, so several platform workers never take over each other's session.
    A platform given a `session_id` logs in under it with a persistent session (clean session
    off): the broker keeps the devices' QoS 1 reports (an OTA's `done`, say) while the platform
    is down and delivers them when it is back.
    """
    if session_id is not None and key is not None:
        raise ValueError("session_id is for a platform; a device's client id is its own name")
    own_id = f"{key.product}{key.device}" if key else f"iotfsm-platform-{secrets.token_hex(4)}"
    own_id = session_id or own_id
    opts = options or MqttOptions()
    if key is None and opts.client_id is not None:
        own_id = opts.client_id
    if isinstance(broker, MemoryBroker):
        return broker.connect(own_id)
    if not isinstance(broker, str):
        return broker
    device = DeviceCredentials(key.product, key.device, psk) if key is not None and psk else None
    settings = settings_from_url(
        broker,
        client_id=None if device is not None else own_id,
        username=None if device is not None else opts.username,
        password=None if device is not None else opts.password,
        device=device,
        ca_file=opts.ca_file,
        certfile=opts.certfile,
        keyfile=opts.keyfile,
        protocol=opts.protocol,
        keepalive=opts.keepalive,
    )
    settings = attrs.evolve(
        settings,
        backoff_min=opts.backoff_min,
        backoff_max=opts.backoff_max,
        clean_session=session_id is None,
    )
    return MqttTransport(settings)
