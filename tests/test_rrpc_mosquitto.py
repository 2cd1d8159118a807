"""RRPC over a real Mosquitto: 100 concurrent calls to 10 devices all answered, each with its
own request's answer; a call to a registered device that is offline ends with RrpcTimeout
within its deadline."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mqtt_fixtures import mosquitto_broker

from iotfsm import DeviceKey, RrpcTimeout
from iotfsm.adapters.connect import MqttOptions
from iotfsm.device import Device
from iotfsm.platform import Platform
from iotfsm.testing.mosquitto import Mosquitto
from iotfsm.testing.waiting import wait_for

__all__ = ["mosquitto_broker"]

FAST = MqttOptions(backoff_min=0.05, backoff_max=0.3)
PRODUCT = "S3EUVBRJLB"
PSK = "vX6PQqazsGsMyf5SMfs6OA6y"
DEVICES = 10
CALLS = 100


def test_100_concurrent_calls_to_10_devices_are_all_answered_and_an_offline_one_times_out(
    mosquitto_broker: Mosquitto, tmp_path: Path
) -> None:
    platform = Platform(mosquitto_broker.url, mqtt=FAST).start()
    names = [f"dev-{i}" for i in range(DEVICES)]
    for name in [*names, "sleeper"]:
        platform.register_device(PRODUCT, name, PSK)
    handled: dict[str, int] = dict.fromkeys(names, 0)
    lock = threading.Lock()
    answers: dict[str, Device] = {}

    def answerer(name: str) -> object:
        def on_rrpc(payload: bytes, process_id: str) -> None:
            with lock:
                handled[name] += 1
            # answered later, from another thread, as a slow application would
            threading.Thread(
                target=answers[name].answer_rrpc, args=(process_id, name.encode() + b":" + payload)
            ).start()

        return on_rrpc

    for name in names:
        answers[name] = Device(
            PRODUCT,
            name,
            PSK,
            broker=mosquitto_broker.url,
            state_dir=tmp_path / name,
            mqtt=FAST,
            on_rrpc=answerer(name),  # type: ignore[arg-type]
        )
    devices = list(answers.values())
    try:
        wait_for("the platform to connect", lambda: platform.runtime.transport.connected)
        for device in devices:
            device.start()
        wait_for(  # a log level answer came: the subscriptions sent before it are in place
            "every device to be subscribed",
            lambda: all(d.state("log_level") == "listening" for d in devices),
            timeout=60.0,
        )

        def one(n: int) -> tuple[int, bytes]:
            name = names[n % DEVICES]
            return n, platform.call(DeviceKey(PRODUCT, name), f"call-{n}", timeout=10.0)

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=CALLS) as pool:
            results = dict(pool.map(one, range(CALLS)))
        took = time.monotonic() - started
        assert results == {n: f"{names[n % DEVICES]}:call-{n}".encode() for n in range(CALLS)}
        assert handled == dict.fromkeys(names, CALLS // DEVICES)
        assert took < 10.0
        for name in names:
            session = platform.runtime.session("rrpc", DeviceKey(PRODUCT, name))
            assert (session.state, session.ctx.answered, session.ctx.pending) == ("idle", 10, {})
        assert sum(platform.rrpc_dropped.values()) == 0

        # registered, never connected: nobody answers, the call ends at its deadline
        started = time.monotonic()
        with pytest.raises(RrpcTimeout, match=r"sleeper: no answer within 1\.5 s"):
            platform.call(DeviceKey(PRODUCT, "sleeper"), b"are you there", timeout=1.5)
        waited = time.monotonic() - started
        assert 1.4 <= waited <= 1.5 + 0.5
        sleeper = platform.runtime.session("rrpc", DeviceKey(PRODUCT, "sleeper"))
        assert (sleeper.state, sleeper.ctx.timed_out) == ("idle", 1)
    finally:
        for device in devices:
            device.stop()
        platform.stop()
