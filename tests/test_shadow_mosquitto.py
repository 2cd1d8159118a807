"""Device shadow over a real Mosquitto: desired -> delta -> applied -> reported, and a device
that was offline while desired changed catching up on reconnect; the document survives a
platform restart (it is the session's context, in the store)."""

from __future__ import annotations

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


def test_shadow_round_trip_catch_up_and_restart(
    mosquitto_broker: Mosquitto, tmp_path: Path
) -> None:
    data = tmp_path / "platform"
    platform = Platform(mosquitto_broker.url, mqtt=FAST, data_dir=data).start()
    platform.register_device(PRODUCT, "aircon", PSK)
    applied: list[dict[str, Any]] = []

    def _applying(delta: dict[str, Any]) -> None:
        applied.append(delta)  # None: report the delta as applied

    def device() -> Device:
        return Device(
            PRODUCT,
            "aircon",
            PSK,
            broker=mosquitto_broker.url,
            state_dir=tmp_path / "dev",
            mqtt=FAST,
            on_shadow_delta=_applying,
        )

    d = device().start()
    try:
        wait_for("the device to sync", lambda: d.state("shadow") == "synced")
        d.report({"temperature": 27})
        wait_for(
            "the report",
            lambda: platform.shadow(PRODUCT, "aircon")["state"]["reported"] == {"temperature": 27},
        )
        platform.set_desired(PRODUCT, "aircon", {"temperature": 25})
        wait_for("delta applied and reported", lambda: d.shadow["reported"] == {"temperature": 25})
        assert applied == [{"temperature": 25}]
        doc = platform.shadow(PRODUCT, "aircon")
        assert doc["state"]["delta"] == {} and doc["version"] == d.shadow["version"] == 3
        assert set(doc["metadata"]["reported"]) == {"temperature"}

        d.stop()  # offline while desired changes
        platform.set_desired(PRODUCT, "aircon", {"temperature": 22})
        platform.stop()  # and the platform restarts from its store
        platform = Platform(mosquitto_broker.url, mqtt=FAST, data_dir=data).start()
        assert platform.shadow(PRODUCT, "aircon")["state"]["delta"] == {"temperature": 22}
        d = device().start()
        wait_for("the catch-up", lambda: d.shadow["reported"] == {"temperature": 22})
        assert applied == [{"temperature": 25}, {"temperature": 22}]
        wait_for(
            "no delta left", lambda: platform.shadow(PRODUCT, "aircon")["state"]["delta"] == {}
        )
    finally:
        d.stop()
        platform.stop()
