"""Written the way a user of iotfsm would: only the pytest plugin's fixtures and the public API."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from iotfsm import MemoryBroker
from iotfsm.fsm import ManualClock
from iotfsm.testing import Mosquitto, Pair


def test_a_device_app_gets_firmware_a_config_and_a_resource(iotfsm_pair: Pair) -> None:
    installed: list[tuple[str, str]] = []
    received: dict[str, bytes] = {}
    configs: list[dict[str, object]] = []

    def burn(image: Path, version: str) -> None:
        installed.append((version, hashlib.md5(image.read_bytes()).hexdigest()))

    device = iotfsm_pair.device(
        "app-1",
        version="1.0",
        burn=burn,
        on_resource=lambda path, name: received.update({name: path.read_bytes()}),
        on_config=configs.append,
    ).start()
    iotfsm_pair.platform.set_config(iotfsm_pair.product, {"baud": 9600})
    iotfsm_pair.wait_for("the config", lambda: configs == [{"baud": 9600}])
    assert device.config == {"baud": 9600}
    image = b"\x7fELF firmware 1.1" * 1000
    iotfsm_pair.platform.deploy_firmware(iotfsm_pair.product, ["app-1"], "1.1", image)
    iotfsm_pair.platform.offer_resource(iotfsm_pair.product, ["app-1"], "faces.db", b"faces")
    iotfsm_pair.wait_for(
        "firmware and resource", lambda: device.version == "1.1" and "faces.db" in received
    )
    assert installed == [("1.1", hashlib.md5(image).hexdigest())]
    assert received == {"faces.db": b"faces"}
    iotfsm_pair.wait_for(
        "the platform to confirm",
        lambda: (
            iotfsm_pair.platform.firmware_status(iotfsm_pair.product, "app-1").state == "succeeded"
        ),
    )


def test_the_log_level_follows_the_platform(iotfsm_pair: Pair) -> None:
    app_log = logging.getLogger("tests.user_style.app")
    iotfsm_pair.device("app-2", logger=app_log).start()
    iotfsm_pair.platform.set_log_level(iotfsm_pair.product, "app-2", 1)
    assert app_log.level == logging.ERROR


def test_the_other_fixtures(
    iotfsm_broker: MemoryBroker, iotfsm_clock: ManualClock, mosquitto: Mosquitto
) -> None:
    assert iotfsm_broker.stats.published == 0
    assert iotfsm_clock.now() > 1_600_000_000
    assert mosquitto.url.startswith("mqtt://127.0.0.1:")
