"""The demo scenario: a platform and N devices in one process, every outcome checked.

It is the README's first command, so it must show the library working end to end and must fail
loudly (non-zero exit) when any check fails. Each step of the scenario is a named `Check`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import attrs

from .adapters.memory_broker import MemoryBroker
from .device import Device
from .machines.log_level import python_level
from .platform import Platform

PRODUCT = "DEMO000001"


@attrs.frozen
class Check:
    name: str
    passed: bool
    detail: str


@attrs.define
class DemoReport:
    devices: int
    checks: list[Check] = attrs.field(factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, passed, detail))


def run_demo(
    devices: int = 3,
    state_root: Path | None = None,
    on_check: Callable[[Check], None] | None = None,
) -> DemoReport:
    """Run the scenario over the embedded broker and return every check's outcome."""
    report = DemoReport(devices)

    def check(name: str, passed: bool, detail: str) -> None:
        report.check(name, passed, detail)
        if on_check is not None:
            on_check(report.checks[-1])

    with tempfile.TemporaryDirectory(prefix="iotfsm-demo-") as tmp:
        root = state_root or Path(tmp)
        broker = MemoryBroker()
        names = [f"demo-{i + 1}" for i in range(devices)]
        loggers = {n: logging.getLogger(f"iotfsm.demo.app.{n}") for n in names}

        def device(name: str) -> Device:
            return Device(PRODUCT, name, broker=broker, state_dir=root / name, logger=loggers[name])

        with Platform(broker) as platform:
            fleet = {n: device(n).start() for n in names}
            states = {n: d.state("log_level") for n, d in fleet.items()}
            levels = [d.log_level for d in fleet.values()]
            check(
                "log level: every device asked on connect and was answered",
                all(s == "listening" for s in states.values())
                and all(d.log_level == 0 for d in fleet.values()),
                f"states {sorted(set(states.values()))}, levels {levels}",
            )

            first = names[0]
            platform.set_log_level(PRODUCT, first, 4)
            others_untouched = all(fleet[n].log_level == 0 for n in names[1:])
            check(
                f"log level: platform set 4 on {first}; its logger is at DEBUG, others untouched",
                loggers[first].level == logging.DEBUG and others_untouched,
                f"{first} logger level {logging.getLevelName(loggers[first].level)}",
            )

            fleet[first].stop()
            loggers[first].setLevel(logging.NOTSET)
            fleet[first] = device(first).start()
            check(
                f"log level: {first} restarted, asked again and got 4 back",
                fleet[first].log_level == 4 and loggers[first].level == logging.DEBUG,
                f"level after restart {fleet[first].log_level}",
            )

            if devices > 1:
                offline = names[1]
                broker.disconnect(f"{PRODUCT}{offline}")
                platform.set_log_level(PRODUCT, offline, 2)
                missed = fleet[offline].log_level == 0
                broker.reconnect(f"{PRODUCT}{offline}")
                check(
                    f"log level: {offline} was offline during the change and got 2 on reconnect",
                    missed
                    and fleet[offline].log_level == 2
                    and loggers[offline].level == python_level(2),
                    f"level after reconnect {fleet[offline].log_level}",
                )

            stats = broker.stats
            rejected = platform.runtime.rejected + sum(d.runtime.rejected for d in fleet.values())
            check(
                "wire: every message decoded on both sides",
                rejected == 0,
                f"{stats.delivered} messages delivered, {rejected} rejected",
            )
            for d in fleet.values():
                d.stop()
    return report
