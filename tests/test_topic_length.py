"""48-character device names with a 10-character product id (issue 16.6), on every topic.

Seed 004's 64 bytes bound a topic without its product id and device name (the C SDK sizes a
concrete topic at 48 + 10 + 64 + 6 = 128 bytes); see docs/PROTOCOL-notes.md, "Topic length".
Before, every downlink to such a device raised TopicError and the device was never answered."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import attrs
import pytest

from iotfsm.adapters.limits import MAX_TOPIC_BYTES, MAX_TOPIC_NAME_BYTES
from iotfsm.adapters.topics import DEVICE_NAME, TopicError, Topics
from iotfsm.machines import DeviceKey, all_features
from iotfsm.machines.feature import Direction, Feature
from iotfsm.testing import Pair

PRODUCT = "ABCDEFGHIJ"
LONGEST = "device:with_a-name-of-exactly-48-characters-0001"
TOPICS = Topics(all_features())


def test_the_names_are_the_longest_tencent_allows() -> None:
    assert len(PRODUCT) == 10 and len(LONGEST) == 48 and DEVICE_NAME.fullmatch(LONGEST)
    assert not DEVICE_NAME.fullmatch(LONGEST + "x")


@pytest.mark.parametrize("feature", all_features(), ids=lambda f: f.name)
@pytest.mark.parametrize("direction", ["up", "down"])
def test_every_topic_takes_the_longest_names(feature: Feature, direction: Direction) -> None:
    if not feature.topic_template(direction):
        return  # a direction the feature does not use (broadcast is down only)
    key = DeviceKey(PRODUCT, LONGEST)
    # RRPC's topics end with a processId, at most 16 characters
    suffix = "9" * 16 if TOPICS.suffixed(feature.name) else ""
    topic = TOPICS.topic(feature.name, direction, key, suffix)
    assert len(topic.encode()) > 64  # what used to be refused
    assert len(topic.encode()) <= MAX_TOPIC_BYTES
    assert len(topic.encode()) - len(PRODUCT) - len(LONGEST) <= MAX_TOPIC_NAME_BYTES
    route = TOPICS.parse(topic)
    assert feature in route.features and route.key == key and route.direction == direction


def test_a_template_over_64_bytes_without_the_names_is_refused() -> None:
    feature = all_features()[0]
    long_prefix = "$" + "x" * (MAX_TOPIC_NAME_BYTES - 2) + "/{product}/{device}"
    with pytest.raises(ValueError, match=f"is {MAX_TOPIC_NAME_BYTES + 1} bytes"):
        Topics([attrs.evolve(feature, up_topic=long_prefix)])
    fits = "$" + "x" * (MAX_TOPIC_NAME_BYTES - 3) + "/{product}/{device}"
    Topics([attrs.evolve(feature, up_topic=fits)])


def test_a_topic_over_128_bytes_is_refused_with_what_to_do() -> None:
    """Only past Tencent's product ids (10 characters; the regex takes 32) and with a long
    template can the whole topic pass 128 bytes: refused before publishing, saying what to do."""
    feature = all_features()[0]
    wide = "$" + "x" * 59 + "/{product}/{device}"
    topics = Topics([attrs.evolve(feature, up_topic=wide)])
    assert len(topics.topic(feature.name, "up", DeviceKey(PRODUCT, LONGEST))) <= MAX_TOPIC_BYTES
    with pytest.raises(TopicError, match="use a shorter product id"):
        topics.topic(feature.name, "up", DeviceKey("P" * 32, LONGEST))


def test_every_feature_in_both_roles_with_the_longest_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    installed: list[str] = []
    received: dict[str, bytes] = {}
    configs: list[dict[str, object]] = []
    app_log = logging.getLogger("tests.topic_length.app")
    with caplog.at_level(logging.WARNING), Pair(tmp_path / "pair", product=PRODUCT) as pair:
        device = pair.device(
            LONGEST,
            version="1.0",
            burn=lambda image, version: installed.append(version),
            on_resource=lambda path, name: received.update({name: path.read_bytes()}),
            on_config=configs.append,
            logger=app_log,
            on_rrpc=lambda payload, process_id: b'{"answer":' + payload + b"}",
        ).start()
        call = pair.platform.call_async(DeviceKey(PRODUCT, LONGEST), b"[1]")
        pair.wait_for("the RRPC answer", call.done)
        assert call.result() == b'{"answer":[1]}'
        pair.platform.set_log_level(PRODUCT, LONGEST, 1)
        pair.wait_for("the log level", lambda: app_log.level == logging.ERROR)
        pair.platform.set_config(PRODUCT, {"baud": 9600})
        pair.wait_for("the config", lambda: configs == [{"baud": 9600}])
        pair.platform.deploy_firmware(PRODUCT, [LONGEST], "1.1", b"firmware 1.1" * 100)
        pair.platform.offer_resource(PRODUCT, [LONGEST], "faces.db", b"faces")
        pair.wait_for("firmware and resource", lambda: bool(installed) and "faces.db" in received)
        pair.wait_for(
            "the platform to confirm the firmware",
            lambda: pair.platform.firmware_status(PRODUCT, LONGEST).state == "succeeded",
        )
        upload = tmp_path / "report.bin"
        upload.write_bytes(b"measured" * 100)
        device.upload(upload, "report.bin")
        pair.wait_for(
            "the upload to be stored",
            lambda: any(u.stored for u in pair.platform.uploads(PRODUCT, LONGEST)),
        )
        stored = pair.platform.uploads(PRODUCT, LONGEST)[0]
        assert stored.md5 == hashlib.md5(upload.read_bytes()).hexdigest()
        # every topic pair of every feature carried messages both ways
        for feature in all_features():
            for direction in ("up", "down"):
                if feature.name == "broadcast":
                    continue  # nothing is broadcast here (tests/test_broadcast_mosquitto.py)
                prefix = feature.topic_template(direction).split("/{product}")[0]
                assert pair.wire(f"{prefix}/{PRODUCT}/{LONGEST}"), (feature.name, direction)
    assert installed == ["1.1"] and received == {"faces.db": b"faces"}
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
