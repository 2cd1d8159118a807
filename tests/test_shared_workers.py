"""Two platform workers in one shared subscription split the devices' reports between them.

Over the memory broker, which (like EMQX, unlike Mosquitto) shares `$` topics: each report is
handled by exactly one worker, none twice, none lost.
"""

from __future__ import annotations

from pathlib import Path

from iotfsm.adapters.identity.registry import ProductSecrets, Registry
from iotfsm.adapters.mqtt.memory_broker import MemoryBroker
from iotfsm.adapters.store.session_store import MemoryStore
from iotfsm.device import Device
from iotfsm.fsm import ManualClock, StepRecord
from iotfsm.platform import Platform


def test_two_workers_split_the_asks_without_loss_or_duplicates(tmp_path: Path) -> None:
    clock = ManualClock()
    broker = MemoryBroker(scheduler=clock)
    handled: dict[str, list[StepRecord]] = {"a": [], "b": []}
    # workers of one pool share one registry (here in memory; in a pool, the shared store)
    registry = Registry(MemoryStore(), ProductSecrets(tmp_path / "secrets"), clock=clock)
    for i in range(40):
        registry.add("P1", f"d{i}")
    workers = [
        Platform(
            broker, share_group="g", clock=clock, on_step=handled[name].append, registry=registry
        ).start()
        for name in ("a", "b")
    ]
    devices = [
        Device("P1", f"d{i}", broker=broker, state_dir=tmp_path / str(i), clock=clock).start()
        for i in range(40)
    ]
    asks = {
        name: [r for r in steps if r.trigger == "GetLogLevel"] for name, steps in handled.items()
    }
    assert len(asks["a"]) + len(asks["b"]) == 40
    assert asks["a"] and asks["b"]
    keys = [r.key for r in asks["a"] + asks["b"]]
    assert len(set(keys)) == 40  # each device's ask handled by exactly one worker
    assert all(d.log_level == 0 for d in devices)
    for d in devices:
        d.stop()
    for w in workers:
        w.stop()
