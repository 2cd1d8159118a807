"""Device shadow over a real Mosquitto: desired -> delta -> applied -> reported, and a device
that was offline while desired changed catching up on reconnect; the document survives a
platform restart (it is the session's context, in the store); an update on a stale version is
refused with the current document, and a device whose copy is stale reports again on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mqtt_fixtures import (
    ClientFactory,
    fast_settings,
    mosquitto_broker,
    mqtt_clients,
    unique_client_id,
)

from iotfsm.adapters.connect import MqttOptions
from iotfsm.device import Device
from iotfsm.machines.shadow import VERSION_CONFLICT
from iotfsm.platform import Platform
from iotfsm.testing.mosquitto import Mosquitto
from iotfsm.testing.waiting import wait_for

__all__ = ["mosquitto_broker", "mqtt_clients"]

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


def test_a_version_conflict_is_refused_and_the_device_reports_again_on_the_current_version(
    mosquitto_broker: Mosquitto, tmp_path: Path, mqtt_clients: ClientFactory
) -> None:
    platform = Platform(mosquitto_broker.url, mqtt=FAST).start()
    platform.register_device(PRODUCT, "aircon", PSK)
    d = Device(
        PRODUCT, "aircon", PSK, broker=mosquitto_broker.url, state_dir=tmp_path / "dev", mqtt=FAST
    )
    # a second writer of the same shadow (another SDK instance, an old firmware)
    other = mqtt_clients(
        fast_settings(mosquitto_broker, unique_client_id("other")),
        subscribe=[(f"$shadow/operation/result/{PRODUCT}/aircon", 0)],
    )
    up = f"$shadow/operation/{PRODUCT}/aircon"

    def answers(token: str) -> list[dict[str, Any]]:
        docs = [json.loads(p) for p in other.recorder.payloads()]
        return [doc for doc in docs if doc.get("clientToken") == token]

    try:
        wait_for("the platform to connect", lambda: platform.runtime.transport.connected)
        d.start()
        wait_for("the device to sync", lambda: d.state("shadow") == "synced")
        d.report({"temperature": 27})
        wait_for("the first report", lambda: d.shadow["version"] == 1)
        known = d.shadow["version"]
        update = {"type": "update", "state": {"reported": {"mode": "eco"}}, "version": 0}
        other.transport.publish(up, json.dumps({**update, "clientToken": "o-1"}).encode(), 0)
        other.recorder.wait_for(lambda: bool(answers("o-1")), "the accepted update")
        assert answers("o-1")[0]["result"] == 0
        current = platform.shadow(PRODUCT, "aircon")
        assert current["version"] == known + 1

        # a stale version: refused with the current document, which stays as it is
        stale = {**update, "state": {"reported": {"mode": "off"}}, "version": known}
        other.transport.publish(up, json.dumps({**stale, "clientToken": "o-2"}).encode(), 0)
        other.recorder.wait_for(lambda: bool(answers("o-2")), "the refusal")
        (refusal,) = answers("o-2")
        assert refusal["result"] == VERSION_CONFLICT
        assert refusal["payload"]["version"] == known + 1
        assert refusal["payload"]["state"]["reported"] == {"temperature": 27, "mode": "eco"}
        assert platform.shadow(PRODUCT, "aircon") == current

        # the device still knows the old version: its report conflicts, it takes the current
        # document and reports again on it
        d.report({"temperature": 20})
        wait_for("the report after the conflict", lambda: d.shadow["version"] == known + 2)
        assert d.shadow["reported"] == {"temperature": 20, "mode": "eco"}
        doc = platform.shadow(PRODUCT, "aircon")
        assert doc["state"]["reported"] == {"temperature": 20, "mode": "eco"}
        assert d.runtime.session("shadow", d.key).ctx.conflicts == 1
    finally:
        d.stop()
        platform.stop()
