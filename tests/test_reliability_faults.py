"""Every message type of every feature, dropped, duplicated, reordered and delayed.

For each feature a clean run first says which messages go between one device and the platform
and how the flow ends. Then one device per (direction, message type, occurrence, fault) runs the
same flow with exactly that delivery hit, all devices side by side on one platform. Duplicates
reorders and delays must end exactly as the clean run; drops must end the same or in a failure both
sides report. Throughout, `World.drive` checks at every quiet moment that no session waits
without a timer, nothing is logged at ERROR, and no file lands outside a state directory.

A dropped downlink without an acknowledgement in Tencent's protocol (a config `push`, a pushed
log level) cannot be noticed by either side: the device keeps what it had and listens, and the
next reconnect (after which every device asks again) repairs it. Those cases are checked to do
exactly that.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import attrs
import pytest
from reliability_helpers import (
    PRODUCT,
    SCENARIOS,
    SOAK,
    Scenario,
    UndeclaredMachineError,
    World,
    check_declarations,
    occurrences,
    run_scenario,
    topics,
    waiting_states,
)

from iotfsm.adapters.mqtt.memory_broker import Delay, Disconnect, Drop, Duplicate, Fault, Reorder
from iotfsm.fsm import Connected, Publish, Stepper
from iotfsm.machines import log_level, ota
from iotfsm.machines.feature import DeviceKey
from iotfsm.machines.transfer import TransferFailed, TransferProgress, TransferStarted

DELAY = 3.0
"""Seconds a delayed delivery is held back; whatever the other side sends meanwhile overtakes it."""
FAULTS: dict[str, Callable[..., Fault]] = {
    "drop": Drop,
    "duplicate": Duplicate,
    "reorder": Reorder,
    "delay": partial(Delay, seconds=DELAY),
    "disconnect": partial(Disconnect, reconnect_after=5.0),
}
"""`disconnect`: the device loses its connection instead of getting the message and comes back
5 s later. Downlinks only: for an uplink the receiving client is the platform, and cutting it would
hit every device's flow at once (the property tests do that)."""
LOSING = ("drop", "reorder", "disconnect")
"""A reorder holds a message until the next one to the same client: for the last message of a
flow, that is a loss until something else comes."""
PER_TYPE = 8
"""Occurrences of each message type hit, from the first on (every one in these scenarios)."""
TIMES = (1, 2) if SOAK else (1,)
"""Consecutive occurrences one fault hits; the soak run also hits two in a row."""


Case = tuple[str, str, int, str, int]
"""(direction, message type, occurrence from 0, fault, times)."""


def cases(counts: dict[tuple[str, str], int]) -> list[Case]:
    return [
        (direction, kind, k, fault, times)
        for (direction, kind), n in sorted(counts.items())
        for k in range(min(n, PER_TYPE))
        for fault in FAULTS
        for times in TIMES
        if k + times <= n and (fault != "disconnect" or direction == "down")
    ]


def inject(world: World, scenario: Scenario, device: str, case: Case) -> None:
    direction, kind, k, fault, times = case
    topic = topics(scenario.feature, device)[direction]
    rule: Fault = FAULTS[fault](topic, message_type=kind, after=k, times=times)
    world.broker.inject(rule)


def test_the_waiting_states_agree_with_the_declarations() -> None:
    """Every state the tests treat as waiting has a timer edge (or, for a transfer or a burn,
    an outcome edge) in its declaration, and the table covers every machine."""
    assert check_declarations() == []


def test_a_machine_missing_from_the_tables_is_named_with_what_to_add() -> None:
    new = attrs.evolve(log_level.DEVICE, name="invented.device")
    with pytest.raises(
        UndeclaredMachineError, match=r"machine 'invented.device' is not in RESTING.*asking"
    ):
        waiting_states(new)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_message_type_dropped_duplicated_and_reordered(name: str, tmp_path: Path) -> None:
    scenario = SCENARIOS[name]
    clean_world = World(tmp_path / "clean" / "world")
    try:
        run_scenario(clean_world, scenario, ["clean"])
        clean = scenario.outcome(clean_world, "clean")
        counts = occurrences(clean_world, scenario.feature, "clean")
        assert not scenario.failed(clean_world, "clean")
    finally:
        clean_world.close()
    assert counts, "the clean run exchanged no message"

    todo = cases(counts)
    world = World(tmp_path / "faults" / "world")
    try:
        names = [f"f{i:03d}" for i in range(len(todo))]
        for device, case in zip(names, todo, strict=True):
            inject(world, scenario, device, case)
        run_scenario(world, scenario, names)
        # each fault hit; one meant for two messages in a row may find the flow changed after
        # its first hit (a device that lost its connection does not get a second answer)
        unused = [f for f in world.broker.armed if f.times == 1]
        assert unused == [], "some faults never hit: the clean run differs"

        wrong: list[str] = []
        lost: list[str] = []
        failed: list[str] = []
        for device, case in zip(names, todo, strict=True):
            direction, kind, k, fault, times = case
            got = scenario.outcome(world, device)
            if got == clean:
                continue
            if fault in LOSING and scenario.failed(world, device):
                failed.append(f"{fault} x{times} {direction} {kind} #{k + 1}")
                continue
            if fault in LOSING and direction == "down" and kind in scenario.lost_push:
                lost.append(device)
                continue
            wrong.append(f"{fault} {direction} {kind} #{k + 1} ({device}): {got} != {clean}")
        assert not wrong, "outcomes differ from the clean run:\n  " + "\n  ".join(wrong)
        same = len(todo) - len(failed) - len(lost)
        print(f"{name}: {len(todo)} cases, {same} as clean, {len(lost)} lost pushes, ", end="")
        print(f"{len(failed)} reported failures {failed}")

        # the lost pushes: the next reconnect (the device asks again) repairs them
        for device in lost:
            client = world.find(device).runtime.transport.client_id  # type: ignore[attr-defined]
            world.broker.disconnect(client)
            world.broker.reconnect(client)
        world.drive()
        wrong = [
            f"{device}: {scenario.outcome(world, device)} != {clean} after a reconnect"
            for device in lost
            if scenario.outcome(world, device) != clean
        ]
        assert not wrong, "\n  ".join(wrong)
    finally:
        world.close()


def test_a_failing_attempt_first_reports_how_far_it_got() -> None:
    """Found by hitting two offers in a row in `ota_cut_once`: the download cut at 40 % within a
    second of its 0 % report looked like an attempt without progress, and the third such attempt
    failed the task. The device now reports the held-back percent before its fail."""
    device = Stepper(ota.DEVICE, key=DeviceKey(PRODUCT, "d"))
    device.step(Connected())
    device.step(ota.UpdateFirmware(1000, "0" * 32, "http://files/fw", "2.0"))
    device.step(TransferStarted(1, 0, 1000))
    assert device.step(TransferProgress(1, 400, 1000)) == []
    effects = device.step(TransferFailed(1, -1, "cut"))
    assert effects[1:3] == [
        Publish(ota.ReportProgress.downloading("2.0", 40), 0),
        Publish(ota.ReportProgress.fail("2.0", -1), 1),
    ]
    platform = Stepper(ota.PLATFORM, key=DeviceKey(PRODUCT, "d"))
    platform.step(ota.DeployFirmware("2.0", "fw", 1000, "0" * 32))
    for effect in effects:
        if isinstance(effect, Publish):
            platform.step(effect.message)
    assert (platform.state, platform.ctx.attempts) == ("retrying", 0)
