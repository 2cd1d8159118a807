"""Resources end to end over a real Mosquitto: an upload and a delivery, both roles over MQTT."""

from __future__ import annotations

import random
from pathlib import Path

from mqtt_fixtures import mosquitto_broker

from iotfsm.adapters.connect import MqttOptions
from iotfsm.device import Device
from iotfsm.platform import Platform
from iotfsm.testing.mosquitto import Mosquitto
from iotfsm.testing.waiting import wait_for

__all__ = ["mosquitto_broker"]

PRODUCT = "S3EUVBRJLB"
PSK = "vX6PQqazsGsMyf5SMfs6OA6y"
FAST = MqttOptions(backoff_min=0.05, backoff_max=0.3)


def test_upload_and_delivery_over_mosquitto(mosquitto_broker: Mosquitto, tmp_path: Path) -> None:
    data_up = random.Random(1).randbytes(700_000)
    data_down = random.Random(2).randbytes(900_000)
    source = tmp_path / "capture.bin"
    source.write_bytes(data_up)
    ended: list[tuple[str, bool, int, str]] = []
    got: list[tuple[Path, str]] = []
    with Platform(mosquitto_broker.url, data_dir=tmp_path / "platform", mqtt=FAST) as platform:
        wait_for("the platform to connect", lambda: platform.runtime.transport.connected)
        platform.register_device(PRODUCT, "mq-1", PSK)
        platform.offer_resource(PRODUCT, ["mq-1"], "faces.db", data_down)  # queued: device offline
        with Device(
            PRODUCT,
            "mq-1",
            PSK,
            broker=mosquitto_broker.url,
            state_dir=tmp_path / "device",
            mqtt=FAST,
            on_upload_finished=lambda *a: ended.append(a),
            on_resource=lambda p, n: got.append((p, n)),
        ) as device:
            wait_for("the device to connect", lambda: device.connected)
            device.upload(source, "capture.bin")
            wait_for("the upload and the delivery", lambda: bool(ended) and bool(got), timeout=30)
            assert ended == [("capture.bin", True, 0, "done")]
            assert got[0][1] == "faces.db" and got[0][0].read_bytes() == data_down
            wait_for(
                "both recorded on the platform",
                lambda: (
                    platform.deliveries(PRODUCT, "mq-1")[0].state == "done"
                    and platform.uploads(PRODUCT, "mq-1")[0].stored
                ),
            )
            assert Path(platform.uploads(PRODUCT, "mq-1")[0].path).read_bytes() == data_up
        assert platform.runtime.rejected == 0
