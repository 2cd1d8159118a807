"""Log level end to end over a real Mosquitto, with the broker killed and restarted mid-flow."""

from __future__ import annotations

import logging
from pathlib import Path

from mqtt_fixtures import mosquitto_broker

from iotfsm.adapters.connect import MqttOptions
from iotfsm.device import Device
from iotfsm.platform import Platform
from iotfsm.testing.mosquitto import Mosquitto
from iotfsm.testing.waiting import wait_for

__all__ = ["mosquitto_broker"]

FAST = MqttOptions(backoff_min=0.05, backoff_max=0.3)
PSK = "vX6PQqazsGsMyf5SMfs6OA6y"


def test_level_survives_a_broker_kill_and_restart(
    mosquitto_broker: Mosquitto, tmp_path: Path
) -> None:
    logger = logging.getLogger("tests.mosquitto.app")
    logger.setLevel(logging.NOTSET)
    platform = Platform(mosquitto_broker.url, mqtt=FAST).start()
    for name in ("dev-1", "dev-2"):
        platform.register_device("S3EUVBRJLB", name, PSK)
    device = Device(
        "S3EUVBRJLB",
        "dev-1",
        PSK,
        broker=mosquitto_broker.url,
        state_dir=tmp_path,
        logger=logger,
        mqtt=FAST,
    )
    other = Device(
        "S3EUVBRJLB", "dev-2", PSK, broker=mosquitto_broker.url, state_dir=tmp_path / "2", mqtt=FAST
    )
    try:
        wait_for("the platform to subscribe", lambda: platform.runtime.transport.connected)
        device.start()
        other.start()
        wait_for(
            "both devices to be answered", lambda: device.log_level == 0 and other.log_level == 0
        )

        mosquitto_broker.kill()
        wait_for(
            "both sides to notice",
            lambda: not device.connected and not platform.runtime.transport.connected,
        )
        platform.set_log_level("S3EUVBRJLB", "dev-1", 4)  # the push is lost: nobody is connected
        assert device.log_level == 0
        mosquitto_broker.restart()

        # both reconnect and resubscribe on their own; the device asks again and gets 4
        wait_for("the device to get level 4 after the restart", lambda: device.log_level == 4)
        assert logger.level == logging.DEBUG
        wait_for("the platform to be back", lambda: platform.runtime.transport.connected)
        platform.set_log_level("S3EUVBRJLB", "dev-1", 2)  # a push now reaches it directly
        wait_for("the pushed level 2", lambda: device.log_level == 2)
        assert other.log_level == 0
        assert platform.runtime.rejected == device.runtime.rejected == 0
    finally:
        device.stop()
        other.stop()
        platform.stop()
