"""A platform with a data directory keeps its MQTT session: what devices report while it is down
waits at the broker. The case that matters: a device finishes an OTA (`done`, then its new
version, both QoS 1) while the platform restarts; the restarted platform must learn it from the
broker, not from a 300 s silence timer or the device's next reconnect."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from mqtt_fixtures import mosquitto_broker

from iotfsm import Device, Platform
from iotfsm.adapters.connect import MqttOptions, transport_for
from iotfsm.adapters.mqtt.transport import MqttProtocol, MqttTransport
from iotfsm.testing import Mosquitto, wait_for

__all__ = ["mosquitto_broker"]

PRODUCT = "P7SESSION1"
PSK = "c2Vzc2lvbi1wc2s="
IMAGE = bytes(range(256)) * 512


def test_a_platform_with_a_data_dir_reuses_one_client_id_with_a_persistent_session(
    mosquitto_broker: Mosquitto, tmp_path: Path
) -> None:
    ids = []
    for _ in range(2):
        platform = Platform(mosquitto_broker.url, data_dir=tmp_path / "platform")
        transport = platform.runtime.transport
        assert isinstance(transport, MqttTransport)
        assert transport.settings.clean_session is False
        ids.append(transport.settings.client_id)
        platform.stop()
    assert ids[0] == ids[1]
    throwaway = Platform(mosquitto_broker.url)
    transport = throwaway.runtime.transport
    assert isinstance(transport, MqttTransport)
    assert transport.settings.clean_session is True
    assert transport.settings.client_id != ids[0]
    throwaway.stop()


def test_a_device_key_cannot_take_a_platform_session_id() -> None:
    from iotfsm.machines.feature import DeviceKey

    try:
        transport_for("mqtt://127.0.0.1:1", DeviceKey(PRODUCT, "d"), PSK, session_id="x")
    except ValueError as error:
        assert "platform" in str(error)
    else:
        raise AssertionError("a device was given a platform session id")


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_reports_sent_while_the_platform_is_down_reach_it_after_a_restart(
    mosquitto_broker: Mosquitto, tmp_path: Path, protocol: MqttProtocol
) -> None:
    # MQTT 5 drops a session at disconnect unless the CONNECT asks for an expiry interval
    options = MqttOptions(protocol=protocol)
    release = threading.Event()
    burning = threading.Event()

    def burn(image: Path, version: str) -> None:
        burning.set()
        assert release.wait(20), "the test never released the burn"

    data_dir = tmp_path / "platform"
    platform = Platform(mosquitto_broker.url, data_dir=data_dir, mqtt=options).start()
    platform.register_device(PRODUCT, "dev-1", PSK)
    device = Device(
        PRODUCT,
        "dev-1",
        PSK,
        broker=mosquitto_broker.url,
        state_dir=tmp_path / "device",
        version="1.0.0",
        burn=burn,
    ).start()
    try:
        wait_for("the device's first report", lambda: device.connected)
        wait_for(
            "the platform to see version 1.0.0",
            lambda: platform.firmware_status(PRODUCT, "dev-1").reported == "1.0.0",
        )
        platform.deploy_firmware(PRODUCT, ["dev-1"], "2.0.0", IMAGE)
        wait_for("the burn to start", burning.is_set, timeout=20)
        wait_for(
            "the platform to see it burning",
            lambda: platform.firmware_status(PRODUCT, "dev-1").state == "burning",
        )
        platform.stop()
        release.set()  # done + report_version 2.0.0 go out while no platform is connected
        wait_for("the device to run 2.0.0", lambda: device.version == "2.0.0", timeout=20)

        platform = Platform(mosquitto_broker.url, data_dir=data_dir, mqtt=options).start()
        wait_for(
            "the restarted platform to mark the task succeeded",
            lambda: platform.firmware_status(PRODUCT, "dev-1").state == "succeeded",
            timeout=20,
        )
        status = platform.firmware_status(PRODUCT, "dev-1")
        assert (status.reported, status.target) == ("2.0.0", "2.0.0")
    finally:
        release.set()
        device.stop()
        platform.stop()
