"""Remote config between the role facades over the memory broker, on a manual clock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotfsm.adapters.mqtt.memory_broker import Duplicate, MemoryBroker
from iotfsm.adapters.store.config_store import ConfigError
from iotfsm.device import Device
from iotfsm.fsm import ManualClock
from iotfsm.machines.config import ConfigStatus, ProductConfig
from iotfsm.platform import Platform

PRODUCT = "CFG0000001"
OTHER = "CFG0000002"
V1 = {"server": "10.0.0.1", "port": 8080, "serial": {"baud": 115200}}
V2 = {"server": "10.0.0.2", "port": 8443, "serial": {"baud": 9600}}


class World:
    def __init__(self, root: Path, *, data_dir: Path | None = None) -> None:
        self.root = root
        self.clock = ManualClock(1_700_000_000.0)
        self.broker = MemoryBroker(scheduler=self.clock, record=True)
        self.platform = Platform(self.broker, clock=self.clock, data_dir=data_dir).start()
        self.applied: dict[str, list[dict[str, Any]]] = {}
        self.devices: dict[str, Device] = {}

    def device(self, name: str, product: str = PRODUCT, start: bool = True) -> Device:
        applied = self.applied.setdefault(name, [])
        self.platform.register_device(product, name)
        d = Device(
            product,
            name,
            broker=self.broker,
            state_dir=self.root / product / name,
            clock=self.clock,
            on_config=applied.append,
        )
        self.devices[name] = d
        return d.start() if start else d

    def wire(self, topic_part: str) -> list[dict[str, Any]]:
        return [json.loads(d.payload) for d in self.broker.record or [] if topic_part in d.topic]

    def close(self) -> None:
        for d in self.devices.values():
            d.stop()
        self.platform.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


def test_a_push_reaches_every_device_of_the_product_exactly_once(world: World) -> None:
    names = [f"dev-{i:02d}" for i in range(50)]
    for name in names:
        world.device(name)
    outsider = world.device("outsider", product=OTHER)
    # every device asked on connect and was told there is no config yet
    assert all(world.devices[n].config_status.result == 1002 for n in names)
    # the broker delivers every config downlink twice, as a QoS 1 redelivery would
    world.broker.inject(Duplicate("$config/operation/result/#", times=None))

    version = world.platform.set_config(PRODUCT, V1)

    assert (version.version, version.payload) == (1, V1)
    assert {n: world.applied[n] for n in names} == {n: [V1] for n in names}
    assert world.applied["outsider"] == []
    assert outsider.config is None
    pushes = [m for m in world.wire("$config/operation/result/") if m["type"] == "push"]
    assert len(pushes) == 2 * 50  # sent once per device, each delivered twice
    assert all(world.devices[n].config == V1 for n in names)
    assert world.platform.runtime.rejected == 0


def test_a_device_offline_during_the_push_gets_it_when_it_reconnects(world: World) -> None:
    online, offline = world.device("online"), world.device("offline")
    world.broker.disconnect(f"{PRODUCT}offline")
    world.platform.set_config(PRODUCT, V1)
    assert world.applied == {"online": [V1], "offline": []}
    assert offline.state("config") == "offline"

    world.broker.reconnect(f"{PRODUCT}offline")

    assert world.applied == {"online": [V1], "offline": [V1]}
    assert offline.config == online.config == V1
    assert offline.config_status == ConfigStatus(0, "applied")


def test_with_config_disabled_the_device_is_answered_1001_and_keeps_its_config(
    world: World,
) -> None:
    world.platform.set_config(PRODUCT, V1)
    device = world.device("d1")
    assert device.config == V1
    world.platform.enable_config(PRODUCT, False)
    world.platform.set_config(PRODUCT, V2)  # stored, not pushed: config is off
    assert world.applied["d1"] == [V1]

    device.request_config()

    assert device.config == V1
    assert device.config_status == ConfigStatus(
        1001,
        "remote config is disabled for this product (result 1001); keeping the current config",
    )
    replies = [m for m in world.wire("$config/operation/result/") if m["type"] == "reply"]
    assert replies[-1] == {"type": "reply", "result": 1001}
    assert world.platform.status()  # the platform session is visible to server code
    assert world.platform.product_config(PRODUCT) == ProductConfig(False, 2, V2, 3)

    world.platform.enable_config(PRODUCT, True)  # back on: the current version goes out
    assert world.applied["d1"] == [V1, V2]
    assert device.config_status.result == 0


def test_a_restarted_device_knows_its_last_config_before_it_is_online(world: World) -> None:
    world.platform.set_config(PRODUCT, V1)
    first = world.device("d1")
    assert first.config == V1
    first.stop()
    saved = json.loads((world.root / PRODUCT / "d1" / "config" / "config.json").read_text())
    assert saved == {"payload": V1}

    again = world.device("d1", start=False)
    assert again.config == V1  # read from the state directory: no broker needed
    assert not again.connected
    again.start()
    # it asked, was answered the config it already runs: the application hears nothing twice
    assert world.applied["d1"] == [V1]
    assert again.config_status == ConfigStatus(0, "up to date")


def test_history_keeps_five_versions_and_push_config_reaches_one_device(world: World) -> None:
    a, b = world.device("a"), world.device("b")
    for n in range(1, 8):
        world.clock.advance(60)
        world.platform.set_config(PRODUCT, {"n": n})
    history = world.platform.config_history(PRODUCT)
    assert [h.version for h in history] == [3, 4, 5, 6, 7]
    assert [h.payload for h in history] == [{"n": n} for n in range(3, 8)]
    assert history[-1].created_at == 1_700_000_000.0 + 7 * 60
    history[-1].payload["n"] = 99  # a copy: what devices are sent does not change
    assert world.platform.product_config(PRODUCT).payload == {"n": 7}

    before = len(world.broker.record or [])
    world.platform.push_config(PRODUCT, "a")
    sent = world.broker.record or []
    assert [d.topic for d in sent][before:] == [f"$config/operation/result/{PRODUCT}/a"]
    assert a.config == b.config == {"n": 7}
    assert len(world.applied["a"]) == 7  # the repeated push changed nothing on the device


def test_bad_platform_calls_are_clear_errors(world: World) -> None:
    world.platform.register_device(PRODUCT, "d1")
    with pytest.raises(ConfigError, match="has no config yet"):
        world.platform.push_config(PRODUCT, "d1")
    with pytest.raises(ConfigError, match="a JSON object"):
        world.platform.set_config(PRODUCT, ["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not JSON-serializable"):
        world.platform.set_config(PRODUCT, {"x": float("nan")})
    with pytest.raises(ConfigError, match="not JSON-serializable"):
        world.platform.set_config(PRODUCT, {"x": object()})
    with pytest.raises(ConfigError, match="keys must be strings"):
        world.platform.set_config(PRODUCT, {1: "one"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="over the 16384-byte MQTT limit"):
        world.platform.set_config(PRODUCT, {"blob": "x" * 16_400})
    assert world.platform.config_history(PRODUCT) == ()
    world.platform.set_config(PRODUCT, V1)
    world.platform.enable_config(PRODUCT, False)
    with pytest.raises(ConfigError, match="disabled"):
        world.platform.push_config(PRODUCT, "d1")


def test_hostile_config_messages_are_refused_and_leave_the_config_intact(world: World) -> None:
    world.platform.set_config(PRODUCT, V1)
    device = world.device("d1")
    topic = f"$config/operation/result/{PRODUCT}/d1"
    hostile = [
        b'{"type":"push","result":0,"payload":[1,2,3]}',
        b'{"type":"push","result":0,"payload":"not an object"}',
        b'{"type":"push","result":"zero","payload":{"server":"evil"}}',
        b'{"type":"push","result":0,"payload":{"server":"evil"},}',
        b'{"type":"reply","result":0,"payload":null}',
        b"\xff\xfe",
        b'{"type":"push","result":1003,"payload":{"server":"evil"}}',
    ]
    for payload in hostile:
        device.runtime.on_message(topic, payload)
    # another device's topic never reaches this one
    device.runtime.on_message(
        f"$config/operation/result/{PRODUCT}/d2", b'{"type":"push","result":0,"payload":{}}'
    )
    assert device.runtime.rejected == 6  # 5 undecodable + the other device's topic
    assert device.config == V1
    assert world.applied["d1"] == [V1]
    assert device.config_status.result == 1003  # the last decodable one said why it was refused
    # the platform refuses garbage on its side too
    before = world.platform.runtime.rejected
    world.platform.runtime.on_message(
        f"$config/operation/{PRODUCT}/d1", b'{"type":"set","payload":{}}'
    )
    assert world.platform.runtime.rejected == before + 1


def test_platform_keeps_configs_and_sessions_across_a_restart(tmp_path: Path) -> None:
    first = World(tmp_path, data_dir=tmp_path / "platform")
    try:
        first.platform.set_config(PRODUCT, V1)
        first.device("d1")
        first.platform.set_config(PRODUCT, V2)
        assert first.applied["d1"] == [V1, V2]
    finally:
        first.close()
    second = World(tmp_path, data_dir=tmp_path / "platform")
    try:
        assert [h.payload for h in second.platform.config_history(PRODUCT)] == [V1, V2]
        device = second.device("d1", start=False)
        assert device.config == V2
        session = second.platform.runtime.session("config", device.key)
        assert (session.state, session.ctx.replies, session.ctx.pushes) == ("serving", 1, 1)
        device.start()
        assert second.applied["d1"] == []  # answered the config it already runs
        assert session.ctx.replies == 2
        second.platform.set_config(PRODUCT, V1)
        assert second.applied["d1"] == [V1]
    finally:
        second.close()
