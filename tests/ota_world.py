"""A platform and devices over the memory broker with the real HTTP file service, on a manual
clock: timers move only when a test says so, while HTTP transfers run on real threads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iotfsm.adapters.memory_broker import MemoryBroker
from iotfsm.device import BurnHook, Device
from iotfsm.fsm import ManualClock
from iotfsm.machines.feature import DeviceKey
from iotfsm.machines.ota import OtaFinished
from iotfsm.platform import Platform
from iotfsm.testing.waiting import wait_for

PRODUCT = "OTA0000001"


class OtaWorld:
    def __init__(self, root: Path, *, url_ttl: float = 3600.0) -> None:
        self.root = root
        self.clock = ManualClock(1_700_000_000.0)
        self.broker = MemoryBroker(scheduler=self.clock, record=True)
        self.finished: list[tuple[DeviceKey, OtaFinished]] = []
        self.platform = Platform(
            self.broker,
            data_dir=root / "platform",
            clock=self.clock,
            url_ttl=url_ttl,
            on_ota_finished=lambda key, e: self.finished.append((key, e)),
        ).start()
        self.devices: list[Device] = []

    def device(
        self, name: str, version: str = "0.1", burn: BurnHook | None = None, **kw: Any
    ) -> Device:
        d = Device(
            PRODUCT,
            name,
            broker=self.broker,
            state_dir=self.root / name,
            version=version,
            burn=burn,
            clock=self.clock,
            **kw,
        )
        self.devices.append(d)
        return d

    def advance(self, seconds: float) -> None:
        """Move the manual clock once every runtime has finished what it was doing, so a timer
        armed by a step on a transfer thread is never armed after the clock already moved."""
        runtimes = [self.platform.runtime, *(d.runtime for d in self.devices)]
        wait_for("the runtimes to settle", lambda: all(r.idle for r in runtimes))
        self.clock.advance(seconds)

    def reported_fail(self, code: int) -> bool:
        """Whether the device side has reported `fail` with this result code on the wire."""
        return any(
            m["type"] == "report_progress"
            and m["report"]["progress"]["state"] == "fail"
            and m["report"]["progress"]["result_code"] == str(code)
            for m in self.wire("$ota/report/")
        )

    def wire(self, topic_part: str) -> list[dict[str, Any]]:
        """Every JSON document delivered on topics containing `topic_part`, in order."""
        record = self.broker.record or []
        return [json.loads(d.payload) for d in record if topic_part in d.topic]

    def close(self) -> None:
        for d in self.devices:
            d.stop()
        self.platform.stop()


__all__ = ["PRODUCT", "OtaWorld", "wait_for"]
