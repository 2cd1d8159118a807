"""Broadcast over a real Mosquitto: one call reaches each of 50 online devices exactly once, and
a registered device that is offline gets nothing (QoS 0, as on Tencent)."""

from __future__ import annotations

from pathlib import Path

from mqtt_fixtures import mosquitto_broker

from iotfsm.adapters.connect import MqttOptions
from iotfsm.device import Device
from iotfsm.platform import Platform
from iotfsm.testing.mosquitto import Mosquitto
from iotfsm.testing.waiting import wait_for

__all__ = ["mosquitto_broker"]

FAST = MqttOptions(backoff_min=0.05, backoff_max=0.3)
PRODUCT = "S3EUVBRJLB"
PSK = "vX6PQqazsGsMyf5SMfs6OA6y"
ONLINE = 50


def test_a_broadcast_reaches_every_online_device_once(
    mosquitto_broker: Mosquitto, tmp_path: Path
) -> None:
    platform = Platform(mosquitto_broker.url, mqtt=FAST).start()
    names = [f"dev-{i:02d}" for i in range(ONLINE)]
    for name in [*names, "sleeper"]:
        platform.register_device(PRODUCT, name, PSK)
    got: dict[str, list[bytes]] = {name: [] for name in [*names, "sleeper"]}
    devices = [
        Device(
            PRODUCT,
            name,
            PSK,
            broker=mosquitto_broker.url,
            state_dir=tmp_path / name,
            mqtt=FAST,
            on_broadcast=got[name].append,
        )
        for name in names
    ]
    try:
        wait_for("the platform to connect", lambda: platform.runtime.transport.connected)
        for device in devices:
            device.start()
        # a log level answer arrived: every subscription of the device (sent before its first
        # publish, on the same connection) is in place
        wait_for(
            "every device to be subscribed",
            lambda: all(d.state("log_level") == "listening" for d in devices),
            timeout=60.0,
        )
        assert platform.broadcast(PRODUCT, b'{"action":"turn_off"}') == ONLINE + 1
        wait_for("all 50 to get it", lambda: all(got[n] for n in names), timeout=30.0)
        # a second broadcast as a marker: a duplicate of the first would arrive before it
        platform.broadcast(PRODUCT, "marker")
        wait_for("all 50 to get the marker", lambda: all(len(got[n]) >= 2 for n in names))
        assert all(got[n] == [b'{"action":"turn_off"}', b"marker"] for n in names)
        assert got["sleeper"] == []
        sent = platform.runtime.session("broadcast", platform._device(PRODUCT, "dev-00")).ctx
        assert sent.sent == 2
    finally:
        for device in devices:
            device.stop()
        platform.stop()
