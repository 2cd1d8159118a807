"""Remote config and log upload end to end over a real Mosquitto and real HTTP on 127.0.0.1,
with the broker killed and restarted while the config changes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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


def test_config_and_log_upload_over_mosquitto(mosquitto_broker: Mosquitto, tmp_path: Path) -> None:
    logger = logging.getLogger("tests.mosquitto.config.app")
    logger.setLevel(logging.NOTSET)
    logger.propagate = False
    platform = Platform(mosquitto_broker.url, mqtt=FAST).start()
    platform.register_device(PRODUCT, "dev-1", PSK)
    platform.register_device(PRODUCT, "dev-2", PSK)
    applied: dict[str, list[dict[str, Any]]] = {"dev-1": [], "dev-2": []}

    def device(name: str, **kw: Any) -> Device:
        return Device(
            PRODUCT,
            name,
            PSK,
            broker=mosquitto_broker.url,
            state_dir=tmp_path / name,
            mqtt=FAST,
            on_config=applied[name].append,
            **kw,
        )

    platform.set_config(PRODUCT, {"v": 1})
    d1 = device("dev-1", logger=logger, log_upload=platform.log_url)
    d2 = device("dev-2")
    try:
        wait_for("the platform to subscribe", lambda: platform.runtime.transport.connected)
        d1.start()
        d2.start()
        wait_for("both devices to get v1", lambda: d1.config == d2.config == {"v": 1})

        platform.set_config(PRODUCT, {"v": 2})  # pushed to both
        wait_for("the push of v2", lambda: d1.config == d2.config == {"v": 2})

        mosquitto_broker.kill()
        wait_for("both sides to notice", lambda: not d1.connected and not d2.connected)
        platform.set_config(PRODUCT, {"v": 3})  # nobody hears the push
        assert d1.config == {"v": 2}
        mosquitto_broker.restart()
        # both reconnect on their own, ask, and are answered v3
        wait_for("v3 after the restart", lambda: d1.config == d2.config == {"v": 3})
        assert applied == {"dev-1": [{"v": 1}, {"v": 2}, {"v": 3}], "dev-2": applied["dev-1"]}

        wait_for("the platform to be back", lambda: platform.runtime.transport.connected)
        platform.set_log_level(PRODUCT, "dev-1", 2)
        wait_for("level 2 on the device", lambda: d1.log_level == 2)
        logger.info("not uploaded")
        logger.warning("disk at 91%")
        logger.error("sensor 3 not responding")
        assert d1.log_uploader is not None and d1.log_uploader.drain(10.0)
        texts = [line.text for line in platform.device_logs(PRODUCT, "dev-1")]
        assert [t[:3] for t in texts] == ["WRN", "ERR"]
        assert texts[1].endswith("sensor 3 not responding")
        assert platform.runtime.rejected == d1.runtime.rejected == d2.runtime.rejected == 0
    finally:
        d1.stop()
        d2.stop()
        platform.stop()
