"""Paths generated from the declarations: every transition of every machine taken, each path
executable, and a broken action caught by the generated tests (then shrunk to its shortest path)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from iotfsm.fsm import Connected, Effect, MachineSpec
from iotfsm.fsm.examples import Examples, ExamplesError, always
from iotfsm.machines import ROLES, all_features, campaign, log_level, ota, platform_machines
from iotfsm.machines.examples import KEY, examples_for
from iotfsm.machines.transfer import TransferDone
from iotfsm.testing.generated import ShrunkPathError, generated_paths
from iotfsm.testing.paths import (
    Path,
    PathError,
    Plan,
    PlanError,
    edges,
    plan,
    replay,
    run_path,
    shrink,
)

SPECS = [*(f.spec(role) for f in all_features() for role in ROLES), *platform_machines()]
"""Every machine in machines/: the features' two roles and the platform-level ones (campaigns)."""

DEAD = {
    # A device that reported `burning` (or `done`) made progress, so `_may_retry` (fewer than
    # MAX_ATTEMPTS failures without progress) always passes before `_is_fail` can give up; the
    # silence timer's retry guard likewise. The give-up edges fire from `offered`/`downloading`.
    "ota.platform": {
        "burning --ReportProgress [is_fail]--> failed",
        "burning --timer:silence--> failed",
        "confirming --ReportProgress [is_fail]--> failed",
        "confirming --timer:silence--> failed",
    },
    # `offered` always has a queued task (the last one ending goes back to `idle`), so the
    # unguarded fallback of GetDownloadTask from ANY_STATE fires only in `idle`.
    "resource_download.platform": {"offered --GetDownloadTask--> offered"},
    # Nothing leads back to `unknown`, and there the session has no config yet: no news is stale.
    "config.platform": {
        "unknown --ConfigChanged [stale]--> unknown",
        "unknown --ConfigLoaded [stale]--> unknown",
    },
}
"""Edges (ANY_STATE or multi-source transitions spelled out per state) that no sequence of
events can take; each declared transition is still taken from its other sources."""


@pytest.fixture(scope="module")
def plans() -> dict[str, Plan]:
    return {spec.name: plan(spec) for spec in SPECS}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_declared_transition_is_taken(spec: MachineSpec[Any], plans: dict[str, Plan]) -> None:
    taken = {edge.index for path in plans[spec.name].paths for edge in path.edges}
    untaken = [spec.transitions[i] for i in range(len(spec.transitions)) if i not in taken]
    assert untaken == []


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_only_the_explained_dead_edges_are_left(
    spec: MachineSpec[Any], plans: dict[str, Plan]
) -> None:
    p = plans[spec.name]
    assert {str(e) for e in p.uncovered} == DEAD.get(spec.name, set())
    assert p.targets == frozenset(edges(spec))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_path_runs_on_its_declaration(spec: MachineSpec[Any], plans: dict[str, Plan]) -> None:
    for path in plans[spec.name].paths:
        session = run_path(path, spec)
        assert session.state == path.steps[-1].state
        assert replay(spec, path.key, path.events, path.context) == path


def _without_action(spec: MachineSpec[Any], index: int) -> MachineSpec[Any]:
    transitions = list(spec.transitions)
    transitions[index] = attrs.evolve(transitions[index], action=None)
    return attrs.evolve(spec, transitions=transitions)


def _caught(paths: tuple[Path, ...], mutant: MachineSpec[Any]) -> bool:
    for path in paths:
        try:
            run_path(path, mutant)
        except PathError:
            return True
    return False


def _burn_index() -> int:
    return next(i for i, t in enumerate(ota.DEVICE.transitions) if t.trigger == "TransferDone")


def test_a_broken_action_is_caught_and_shrunk(plans: dict[str, Plan]) -> None:
    """The device forgets to report `burning` and to hand the image to the burn step."""
    mutant = _without_action(ota.DEVICE, _burn_index())
    failures = []
    for path in plans["ota.device"].paths:
        try:
            run_path(path, mutant)
        except PathError as exc:
            failures.append(exc)
    assert failures, "no generated path noticed the broken action"
    assert all(isinstance(f.path.steps[f.index].event, TransferDone) for f in failures)

    def fails(p: Path) -> bool:
        return not _passes(p, mutant)

    longest = max((f.path for f in failures), key=len)
    short = shrink(longest, fails, ota.DEVICE)
    assert fails(short) and len(short) <= len(longest)
    assert not any(fails(short.prefix(n)) for n in range(len(short)))
    assert short.events[-1] == TransferDone(1, "/tmp/iotfsm-example.bin")
    # an offer (taken even offline) and the download's end: nothing shorter can fail
    assert [e.trigger for e in short.events] == ["UpdateFirmware", "TransferDone"]


def _passes(path: Path, spec: MachineSpec[Any]) -> bool:
    try:
        run_path(path, spec)
    except PathError:
        return False
    return True


def test_most_actions_removed_are_caught(plans: dict[str, Plan]) -> None:
    """Mutation score: each action dropped in turn (state changes kept). The survivors are
    actions whose only effect on the planned paths is a log line for an example not chosen or
    a context change no later planned step looks at (measured: 14 of 148; the campaign's five
    are two that only note history or return nothing, and three the pairs plan catches, below)."""
    mutants = caught = 0
    for spec in SPECS:
        for i, t in enumerate(spec.transitions):
            if t.action is not None:
                mutants += 1
                caught += _caught(plans[spec.name].paths, _without_action(spec, i))
    assert mutants > 100
    assert caught / mutants >= 0.9


def _action_index(spec: MachineSpec[Any], action: str) -> int:
    return next(
        i for i, t in enumerate(spec.transitions) if getattr(t.action, "__name__", "") == action
    )


def test_transition_pairs_catch_context_changes_a_later_step_reveals(
    plans: dict[str, Plan],
) -> None:
    """A campaign that forgets a device's late success (after an abort) or a retry queued while
    paused steps the same and produces the same effects; only a later step shows it (a Cancel
    that still cancels the device, a Resume that starts nobody). Every transition once does not
    take those second steps; every pair of consecutive transitions does."""
    spec = campaign.SPEC
    quiet = ["_late_success", "_late_failure", "_retry_paused"]
    mutants = [_without_action(spec, _action_index(spec, name)) for name in quiet]
    assert not any(_caught(plans["campaign"].paths, m) for m in mutants)
    pairs = plan(spec, cover="pairs", max_nodes=3_000)  # 1 s; the default bound takes 8 s
    assert all(_caught(pairs.paths, m) for m in mutants)


def test_guard_outcomes_and_transition_pairs_are_planned_too() -> None:
    guards = plan(log_level.DEVICE, cover="guards")
    refused = {t for t in guards.covered if isinstance(t, tuple) and t[1] is False}
    assert guards.uncovered == frozenset()
    assert {e.guard for e, _ in refused} == {"stale", "valid_reply", "may_ask_again"}
    pairs = plan(log_level.PLATFORM, cover="pairs")
    assert pairs.uncovered == frozenset()
    assert len(pairs.targets) > len(edges(log_level.PLATFORM))


def test_a_path_is_a_shortest_one() -> None:
    """Giving up asking takes a connect and three reply timeouts (MAX_ASKS = 3), no detour."""
    p = plan(log_level.DEVICE)
    give_up = next(
        e for e in edges(log_level.DEVICE) if str(e) == "asking --timer:reply--> listening"
    )
    path = next(path for path in p.paths if give_up in path.edges)
    assert [e.trigger for e in path.events] == ["Connected", *["timer:reply"] * 3]
    assert [s.now for s in path.steps] == [1.0, 6.0, 16.0, 36.0]


def test_examples_that_do_not_fit_the_declaration_are_refused() -> None:
    base = dict(examples_for(log_level.DEVICE).events)  # type: ignore[union-attr]
    missing = {k: v for k, v in base.items() if k != "LogLevelReply"}
    with pytest.raises(ExamplesError, match=r"no examples for \['LogLevelReply'\]"):
        Examples(log_level.DEVICE, KEY, missing)
    with pytest.raises(ExamplesError, match="does not bind"):
        Examples(log_level.DEVICE, KEY, {**base, "SetLogLevel": always()})
    with pytest.raises(ExamplesError, match="return LogLevelReply events"):
        Examples(log_level.DEVICE, KEY, {**base, "LogLevelReply": always(Connected())})


def test_a_machine_without_examples_is_refused_with_the_fix() -> None:
    stranger = attrs.evolve(log_level.PLATFORM, name="someone.else")
    with pytest.raises(PlanError, match=r"pass examples=Examples\(spec, key"):
        plan(stranger)
    own = Examples(stranger, KEY, dict(examples_for(log_level.PLATFORM).events))  # type: ignore[union-attr]
    assert plan(stranger, own).uncovered == frozenset()


def test_a_step_that_differs_names_the_step() -> None:
    path = next(p for p in plan(log_level.PLATFORM).paths if p.events[-1].trigger == "SetLogLevel")
    wrong = attrs.evolve(
        path.steps[-1], state="default" if path.steps[-1].state != "default" else "assigned"
    )
    broken = attrs.evolve(path, steps=(*path.steps[:-1], wrong))
    with pytest.raises(PathError, match=f"step {len(path) - 1} "):
        run_path(broken, log_level.PLATFORM)


# ---- the pytest helper, on a handler of the user's own -------------------------------------

applied: list[int] = []


def _apply_level(effect: Effect) -> None:
    applied.append(effect.level)  # type: ignore[attr-defined]


@generated_paths(log_level.DEVICE)
def test_generated_cases_run_the_users_handler(path: Path) -> None:
    applied.clear()
    run_path(path, log_level.DEVICE, handlers={log_level.ApplyLogLevel: _apply_level})
    expected = [
        e.level for s in path.steps for e in s.effects if isinstance(e, log_level.ApplyLogLevel)
    ]
    assert applied == expected


def test_a_failing_generated_case_reports_its_shortest_path() -> None:
    def picky_handler(effect: Effect) -> None:
        if effect.level == 2:  # type: ignore[attr-defined]
            raise ValueError("level 2 is not supported by this logger")

    @generated_paths(log_level.DEVICE)
    def case(path: Path) -> None:
        run_path(path, log_level.DEVICE, handlers={log_level.ApplyLogLevel: picky_handler})

    planned = case.pytestmark[0].args[1]  # type: ignore[attr-defined]
    failing = [p for p in planned if not _runs(case, p)]
    assert failing
    with pytest.raises(ShrunkPathError) as info:
        case(max(failing, key=len))
    short = info.value.path
    assert [e.trigger for e in short.events] == ["Connected", "LogLevelReply"]
    assert "level 2 is not supported" in str(info.value)


def _runs(case: Any, path: Path) -> bool:
    try:
        case(path)
    except ShrunkPathError:
        return False
    return True
