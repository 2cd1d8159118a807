"""The config device machine applies only what was saved (issue 16, point 7), stepped by hand."""

from __future__ import annotations

from iotfsm.fsm import CancelTimer, Connected, Log, Stepper
from iotfsm.machines.config import (
    DEVICE,
    ApplyConfig,
    ConfigNotSaved,
    ConfigPush,
    ConfigReply,
    ConfigSaved,
    DeviceContext,
    SaveConfig,
)
from iotfsm.machines.feature import DeviceKey

KEY = DeviceKey("P1", "dev-1")
A = {"rate": 1}
B = {"rate": 2}


def test_a_config_is_saved_first_and_applied_only_once_saved() -> None:
    s = Stepper(DEVICE, key=KEY)
    s.session.ctx = DeviceContext(config=A)
    s.step(Connected())
    assert s.step(ConfigReply(0, B)) == [CancelTimer("reply"), SaveConfig(B)]
    assert (s.ctx.config, s.ctx.note) == (A, "saving")  # not applied yet
    assert s.step(ConfigSaved(B)) == [ApplyConfig(B)]
    assert (s.ctx.config, s.ctx.note) == (B, "applied")
    assert s.step(ConfigSaved(B)) == []  # a duplicate push saved twice is applied once


def test_a_config_that_could_not_be_saved_is_not_applied_and_the_next_one_tries_again() -> None:
    s = Stepper(DEVICE, key=KEY)
    s.session.ctx = DeviceContext(config=A)
    s.step(Connected())
    s.step(ConfigReply(0, A))
    assert s.step(ConfigPush(0, B)) == [SaveConfig(B)]
    note = (
        "could not save the new config (config.json: No space left on device), so it is not "
        "applied; keeping the current config"
    )
    assert s.step(ConfigNotSaved(B, "config.json: No space left on device")) == [Log.warning(note)]
    assert (s.ctx.config, s.ctx.note) == (A, note)
    assert s.step(ConfigPush(0, B)) == [SaveConfig(B)]  # the same push again is not "up to date"
    assert s.step(ConfigSaved(B)) == [ApplyConfig(B)]
