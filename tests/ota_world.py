"""The OTA tests' world: `iotfsm.testing.Pair` plus a record of finished tasks and fail codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iotfsm.device import BurnHook, Device
from iotfsm.machines.feature import DeviceKey
from iotfsm.machines.ota import OtaFinished
from iotfsm.testing import Pair, wait_for

PRODUCT = "OTA0000001"


class OtaWorld(Pair):
    def __init__(self, root: Path, *, url_ttl: float = 3600.0) -> None:
        self.finished: list[tuple[DeviceKey, OtaFinished]] = []
        super().__init__(
            root,
            product=PRODUCT,
            url_ttl=url_ttl,
            on_ota_finished=lambda key, e: self.finished.append((key, e)),
        )

    def device(
        self, name: str, version: str = "0.1", burn: BurnHook | None = None, **kw: Any
    ) -> Device:
        return super().device(name, version, burn=burn, **kw)

    def reported_fail(self, code: int) -> bool:
        """Whether the device side has reported `fail` with this result code on the wire."""
        return any(
            m["type"] == "report_progress"
            and m["report"]["progress"]["state"] == "fail"
            and m["report"]["progress"]["result_code"] == str(code)
            for m in self.wire("$ota/report/")
        )


__all__ = ["PRODUCT", "OtaWorld", "wait_for"]
