"""A platform and devices in one process, on a manual clock: the way to test code built on iotfsm.

    with Pair(tmp_path) as pair:
        device = pair.device("dev-1", version="1.0").start()
        pair.platform.deploy_firmware(pair.product, ["dev-1"], "1.1", b"firmware bytes")
        pair.wait_for("the device to run 1.1", lambda: device.version == "1.1")

Messages go over the embedded memory broker (deterministic, with fault injection), files over the
platform's real HTTP file service on 127.0.0.1. Timers move only when the test calls `advance`,
so retries and timeouts take no wall time; transfers run on real threads, so wait for their
outcomes with `wait_for`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from ..adapters.connect import MqttOptions
from ..adapters.mqtt.memory_broker import MemoryBroker
from ..adapters.runtime import Runtime
from ..device import Device
from ..fsm.clock import ManualClock
from ..platform import Platform
from .waiting import wait_for

START = 1_700_000_000.0
"""Where the manual clock starts: a plausible wall-clock time, for timestamps in messages."""


class Pair:
    def __init__(
        self,
        root: str | Path,
        *,
        product: str = "TEST000001",
        broker_url: str | None = None,
        **platform_options: Any,
    ) -> None:
        """`root` holds the platform's data directory and each device's state directory;
        `platform_options` go to `Platform` (e.g. `url_ttl`, `on_ota_finished`). With
        `broker_url` both roles use that MQTT broker instead of the memory broker (then
        `wire()` sees nothing and `broker` raises)."""
        self.root = Path(root)
        self.product = product
        self.clock = ManualClock(START)
        self._memory = (
            MemoryBroker(scheduler=self.clock, record=True) if broker_url is None else None
        )
        self._target: MemoryBroker | str = self._memory or str(broker_url)
        self._mqtt = MqttOptions(backoff_min=0.05, backoff_max=0.5) if broker_url else None
        self._quiet_for = 0.02 if broker_url is None else 0.3
        self.platform = Platform(
            self._target,
            data_dir=self.root / "platform",
            clock=self.clock,
            mqtt=self._mqtt,
            **platform_options,
        ).start()
        self.devices: list[Device] = []

    def device(self, name: str, version: str = "1.0", **options: Any) -> Device:
        """A device of `product` on the same broker and clock (not started yet); `options` go
        to `Device` (e.g. `burn`, `logger`, `on_resource`, `on_config`). The device is
        registered on the platform (with its `psk` if one is given), as a real one would be."""
        psk = options.get("psk")
        self.platform.register_device(self.product, name, psk if isinstance(psk, str) else None)
        device = Device(
            self.product,
            name,
            broker=self._target,
            state_dir=self.root / "devices" / name,
            version=version,
            clock=self.clock,
            mqtt=self._mqtt,
            **options,
        )
        self.devices.append(device)
        return device

    @property
    def broker(self) -> MemoryBroker:
        """The memory broker, for fault injection and `disconnect`/`reconnect`."""
        if self._memory is None:
            raise RuntimeError("this pair runs over a real MQTT broker; it has no memory broker")
        return self._memory

    @property
    def runtimes(self) -> list[Runtime]:
        return [self.platform.runtime, *(d.runtime for d in self.devices)]

    def settle(self, timeout: float = 20.0) -> None:
        """Wait until no runtime is stepping or has events queued."""
        wait_for("the runtimes to settle", lambda: all(r.idle for r in self.runtimes), timeout)

    def advance(self, seconds: float) -> None:
        """Move the clock once the runtimes have settled, so a timer armed by a step on a
        transfer thread is never armed after the clock already moved past it."""
        self.settle()
        self.clock.advance(seconds)

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        wait_for(what, predicate, timeout)

    def quiet(self) -> bool:
        """Nothing is stepping, queued, transferring or burning, and no step happened for a
        moment (over MQTT a message may be in flight between two runtimes)."""

        def calm() -> bool:
            return all(r.idle for r in self.runtimes) and not any(d.busy for d in self.devices)

        if not calm():
            return False
        before = sum(r.steps for r in self.runtimes)
        time.sleep(self._quiet_for)
        return calm() and sum(r.steps for r in self.runtimes) == before

    def run_until(self, what: str, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        """Drive virtual time until `predicate` holds: whenever everything is quiet, jump the
        clock to the next timer deadline (retries, backoffs), so a scenario full of timeouts
        runs in a moment of wall time."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            if not self.quiet():
                time.sleep(0.005)
                continue
            if predicate():
                return
            due = self.clock.next_deadline()
            if due is None:
                time.sleep(0.01)
            else:
                self.clock.advance(max(0.0, due - self.clock.now()))

    def wire(self, topic_part: str) -> list[dict[str, Any]]:
        """Every JSON document the broker delivered on topics containing `topic_part`."""
        record = self._memory.record if self._memory is not None else None
        return [json.loads(d.payload) for d in record or [] if topic_part in d.topic]

    def close(self) -> None:
        for device in self.devices:
            device.stop()
        self.platform.stop()

    def __enter__(self) -> Pair:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
