"""Paired paths: a device and a platform machine planned together, each path replayed as a real
exchange of messages between two runtimes over the memory broker."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from iotfsm.fsm import Disconnected
from iotfsm.machines import Feature, all_features, log_level, ota
from iotfsm.testing.paired import PairedPathError, PairedPlan, paired_plan, run_paired
from iotfsm.testing.paths import PlanError, edges

FEATURES = list(all_features())


@pytest.fixture(scope="module")
def plans() -> dict[str, PairedPlan]:
    return {f.name: paired_plan(f) for f in FEATURES}


@pytest.mark.parametrize("feature", FEATURES, ids=lambda f: f.name)
def test_every_paired_path_is_a_real_exchange_over_the_memory_broker(
    feature: Feature, plans: dict[str, PairedPlan]
) -> None:
    plan = plans[feature.name]
    assert plan.paths
    for path in plan.paths:
        run_paired(path, feature)
    roles = {role for path in plan.paths for step in path.steps for role, _ in step.taken}
    assert roles == {"device", "platform"}
    assert plan.covered <= plan.targets
    assert plan.targets == {(r, e) for r in ("device", "platform") for e in edges(feature.spec(r))}


def test_an_offer_reaches_the_device_only_through_the_platform(
    plans: dict[str, PairedPlan],
) -> None:
    """The device's UpdateFirmware edges are taken, yet no path steps one in from outside."""
    plan = plans["ota"]
    outside = {s.event.trigger for p in plan.paths for s in p.steps}
    assert "UpdateFirmware" not in outside and "ReportVersion" not in outside
    taken = {str(e) for role, e in plan.covered if role == "device"}
    assert "idle --UpdateFirmware [valid_offer]--> downloading" in taken
    burn = next(
        p for p in plan.paths if any(s.device == "burning" for s in p.steps)
    )  # a deploy, the device's download and its burn, all through the broker
    assert burn.steps[0].role == "platform" and burn.steps[0].event.trigger == "DeployFirmware"


def test_lost_messages_and_disconnects_reach_timeouts(plans: dict[str, PairedPlan]) -> None:
    plan = plans["log_level"]
    taken = {str(e) for role, e in plan.covered if role == "device"}
    assert "asking --timer:reply [may_ask_again]--> asking" in taken
    assert any(s.lossy for p in plan.paths for s in p.steps)
    assert any(isinstance(s.event, Disconnected) for p in plan.paths for s in p.steps)


def _mutant(feature: Feature, role: str, trigger: str, guard: str) -> Feature:
    spec = feature.spec(role)  # type: ignore[arg-type]
    transitions = [
        attrs.evolve(t, action=None)
        if t.trigger == trigger and getattr(t.guard, "__name__", "") == guard
        else t
        for t in spec.transitions
    ]
    changes: dict[str, Any] = {role: attrs.evolve(spec, transitions=transitions)}
    return attrs.evolve(feature, **changes)


def _failures(plan: PairedPlan, feature: Feature) -> list[PairedPathError]:
    found = []
    for path in plan.paths:
        try:
            run_paired(path, feature)
        except PairedPathError as exc:
            found.append(exc)
    return found


def test_a_platform_that_forgets_to_push_a_level_is_caught(plans: dict[str, PairedPlan]) -> None:
    broken = _mutant(log_level.FEATURE, "platform", "SetLogLevel", "_valid_level")
    failures = _failures(plans["log_level"], broken)
    assert failures
    assert all(f.path.steps[f.index].event.trigger == "SetLogLevel" for f in failures)


def test_a_device_that_never_offers_its_burn_is_caught(plans: dict[str, PairedPlan]) -> None:
    """Without `_burn` the device never says `burning`: the platform's state tells."""
    broken = _mutant(ota.FEATURE, "device", "TransferDone", "_done_burn_now")
    failures = _failures(plans["ota"], broken)
    assert failures
    assert any("expected ('burning', 'burning')" in str(f) for f in failures)


def test_a_feature_without_examples_is_refused() -> None:
    stranger = attrs.evolve(log_level.PLATFORM, name="someone.else")
    feature: Any = attrs.evolve(log_level.FEATURE, platform=stranger)
    with pytest.raises(PlanError, match=r"no example events for 'someone\.else'"):
        paired_plan(feature)
