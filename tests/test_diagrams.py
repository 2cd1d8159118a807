"""Diagrams are drawn from the declarations: every state and transition shows, `dot` renders them,
and the DOT checked in under docs/diagrams is what the declarations produce today.

`dot` is required, not optional: a machine without it fails here with the install command rather
than skipping, because skipped diagram tests are how stale diagrams reach the docs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from iotfsm.diagrams import (
    REGENERATE,
    VIEWS,
    GraphvizMissingError,
    add_arguments,
    diagram,
    feature_graph,
    file_name,
    live_graph,
    machine_file_name,
    machine_graph,
    paired_graph,
    render,
    run,
    style,
)
from iotfsm.diagrams.labels import callable_label, html, trigger_text
from iotfsm.diagrams.machine import ANY, node_id
from iotfsm.fsm import ANY_STATE, Connected, Event, MachineSpec, On, State, Stepper, timer
from iotfsm.machines import ROLES, Feature, Role, all_features, inbound_direction, platform_machines
from iotfsm.machines.log_level import DEVICE, PLATFORM, DeviceKey, LogLevelReply

KEY = DeviceKey("P1", "dev-1")
ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "diagrams"
CASES = [(f, r) for f in all_features() for r in ROLES]
IDS = [f"{f.name}.{r}" for f, r in CASES]
EDGE = re.compile(r'^\s*(?P<tail>"[^"]+"|\S+) -> (?P<head>"[^"]+"|\S+) \[(?P<attrs>.*)\]$')


@pytest.fixture(scope="module")
def dot_binary() -> str:
    found = shutil.which("dot")
    if found is None:
        pytest.fail(
            "the Graphviz `dot` program is not installed; diagrams cannot be checked. "
            "Install it with `apt-get install graphviz` (or run scripts/bootstrap.sh as root)."
        )
    return found


def _edges(source: str) -> list[tuple[str, str, str]]:
    """(tail, head, attributes) of every edge line of DOT source, quotes stripped."""
    out = []
    for line in source.splitlines():
        m = EDGE.match(line)
        if m:
            out.append((m["tail"].strip('"'), m["head"].strip('"'), m["attrs"]))
    return out


def _shown(on: On, topic: str | None, inbound: set[str]) -> list[str]:
    """The fragments of an edge label that must be there for this transition."""
    parts = [f"<B>{html(trigger_text(on.trigger_name))}</B>"]
    if on.guard is not None:
        parts.append(html(f"[{callable_label(on.guard)}]"))
    if on.label or on.action is not None:
        parts.append(html(f"/ {on.label or callable_label(on.action)}"))  # type: ignore[arg-type]
    if topic is not None and on.trigger_name in inbound:
        parts.append(html(topic))
    return parts


# ---- every declared machine ------------------------------------------------------------------


@pytest.mark.parametrize(("feature", "role"), CASES, ids=IDS)
def test_every_declared_machine_renders_to_svg(
    dot_binary: str, feature: Feature, role: Role
) -> None:
    svg = render(feature_graph(feature, role), "svg")
    assert b"<svg" in svg
    assert f"{feature.name}.{role}".encode() in svg


@pytest.mark.parametrize(("feature", "role"), CASES, ids=IDS)
def test_every_state_and_transition_appears_in_the_dot(feature: Feature, role: Role) -> None:
    spec = feature.spec(role)
    source = feature_graph(feature, role).source
    edges = _edges(source)
    for state in spec.states:
        assert f"<B>{html(state.name)}</B>" in source, state.name
    topic = feature.topic_template(inbound_direction(role))
    inbound = {m.trigger for m in spec.inbound}
    for on in spec.transitions:
        _assert_drawn(spec, on, edges, _shown(on, topic, inbound))


def _assert_drawn(
    spec: MachineSpec[Any], on: On, edges: list[tuple[str, str, str]], shown: list[str]
) -> None:
    """One drawn edge carries this transition: out of its state, the any-state node or a group
    node, into its destination (or back into itself when internal)."""
    carrying = [
        attrs_
        for tail, head, attrs_ in edges
        if (tail == head if on.dest is None else head == node_id("", on.dest))
        and all(part in attrs_ for part in shown)
    ]
    assert carrying, f"{spec.name}: no edge shows {on.trigger_name} {on.source} -> {on.dest}"


@pytest.mark.parametrize("spec", platform_machines(), ids=[m.name for m in platform_machines()])
def test_every_platform_level_machine_renders_every_state_and_transition(
    dot_binary: str, spec: MachineSpec[Any]
) -> None:
    graph = machine_graph(spec)
    edges = _edges(graph.source)
    for state in spec.states:
        assert f"<B>{html(state.name)}</B>" in graph.source, state.name
    for on in spec.transitions:
        _assert_drawn(spec, on, edges, _shown(on, None, set()))
    assert spec.name.encode() in render(graph, "svg")


@pytest.mark.parametrize("feature", all_features(), ids=[f.name for f in all_features()])
def test_paired_view_holds_both_machines_and_every_message(feature: Feature) -> None:
    source = paired_graph(feature).source
    assert "subgraph cluster_device" in source and "subgraph cluster_platform" in source
    for role in ROLES:
        for state in feature.spec(role).states:
            assert f'"{role}.{state.name}" [' in source, f"{role}.{state.name}"
    for direction in ("up", "down"):
        assert html(feature.topic_template(direction)) in source
        for message in feature.messages(direction):
            assert message.trigger in source
            assert html(repr(message.TYPE)) in source


def test_paired_view_renders(dot_binary: str) -> None:
    for feature in all_features():
        assert b"<svg" in render(paired_graph(feature), "svg")


# ---- live view -------------------------------------------------------------------------------


def _node_line(source: str, name: str) -> str:
    return next(line for line in source.splitlines() if line.strip().startswith(f"{name} ["))


def test_live_view_fills_the_current_state_and_lights_the_last_edge(dot_binary: str) -> None:
    s = Stepper(DEVICE, key=KEY)
    s.step(Connected())
    s.step(LogLevelReply("x-1", 3))
    source = live_graph(s.session, s.trace[-1]).source
    assert style.LIVE_FILL in _node_line(source, "listening")
    assert style.LIVE_FILL not in _node_line(source, "asking")
    lit = [(t, h) for t, h, a in _edges(source) if "penwidth=3" in a and style.LIVE_EDGE in a]
    assert lit == [("asking", "listening")]
    assert "last step: LogLevelReply: asking \u2192 listening" in source
    assert b"<svg" in render(live_graph(s.session, s.trace[-1]), "svg")


def test_live_view_lights_an_any_state_edge_and_a_timer_loop() -> None:
    s = Stepper(DEVICE, key=KEY)
    s.step(Connected())
    source = live_graph(s.session, s.trace[-1]).source
    assert [(t, h) for t, h, a in _edges(source) if "penwidth=3" in a] == [(ANY, "asking")]
    s.advance(5.0)  # the reply timer asks again: asking -> asking
    source = live_graph(s.session, s.trace[-1]).source
    assert [(t, h) for t, h, a in _edges(source) if "penwidth=3" in a] == [("asking", "asking")]


def test_live_view_of_an_ignored_step_lights_no_edge() -> None:
    s = Stepper(DEVICE, key=KEY)
    s.step(LogLevelReply("x-1", 3), must_fire=False)  # offline ignores replies
    source = live_graph(s.session, s.trace[-1]).source
    assert not [a for _, _, a in _edges(source) if "penwidth=3" in a]
    assert "LogLevelReply ignored in offline" in source
    assert style.LIVE_FILL in _node_line(source, "offline")


def test_live_view_refuses_another_machines_record() -> None:
    platform = Stepper(PLATFORM, key=KEY)
    device = Stepper(DEVICE, key=KEY)
    device.step(Connected())
    with pytest.raises(ValueError, match="does not belong"):
        live_graph(platform.session, device.trace[-1])


# ---- ANY_STATE and groups on a made-up machine -------------------------------------------------


@attrs.frozen
class Go(Event):
    pass


@attrs.frozen
class Reset(Event):
    pass


@attrs.frozen
class Ping(Event):
    pass


def _guard(ctx: Any, event: Any) -> bool:
    return True


def _made_up() -> MachineSpec[None]:
    return MachineSpec(
        name="made_up",
        states=[
            State("a", initial=True),
            State("b"),
            State("c"),
            State("d"),
            State("done", final=True),
            State("failed", final=True),
        ],
        transitions=[
            On(Go, "a", "b"),
            On(Go, "b", "c"),
            On(Go, "c", "d"),
            On(Go, "d", "done", guard=_guard),
            On(Go, "d", "failed"),
            On(Reset, ANY_STATE, "a"),
            On(Ping, ANY_STATE, None),
            On(timer("give_up"), ("b", "c", "d"), "failed"),
        ],
        context=lambda key: None,
        context_type=type(None),
    )


def test_any_state_transition_is_drawn_once_not_per_state() -> None:
    source = machine_graph(_made_up()).source
    resets = [(t, h) for t, h, a in _edges(source) if "<B>Reset</B>" in a]
    assert resets == [(ANY, "a")]
    pings = [(t, h) for t, h, a in _edges(source) if "<B>Ping</B>" in a]
    assert pings == [(ANY, ANY)]  # internal: a loop on the any-state node
    assert "any state" in source


def test_a_rule_out_of_many_states_leaves_one_group_node() -> None:
    source = machine_graph(_made_up()).source
    give_up = [(t, h, a) for t, h, a in _edges(source) if trigger_text("timer:give_up") in a]
    assert len(give_up) == 1
    assert give_up[0][1] == "failed" and "style=dashed" in give_up[0][2]
    assert "b · c · d" in source


def test_final_and_failure_states_are_marked() -> None:
    source = machine_graph(_made_up()).source
    assert "peripheries=2" in _node_line(source, "done")
    failed = _node_line(source, "failed")
    assert "peripheries=2" in failed and style.FAILURE in failed
    assert style.FAILURE not in _node_line(source, "done")
    assert "[else]" in source  # the unguarded Go after the guarded one in d


def test_dot_source_is_deterministic() -> None:
    for feature in all_features():
        for view in VIEWS:
            assert diagram(feature, view).source == diagram(feature, view).source


# ---- checked-in docs ---------------------------------------------------------------------------


def test_checked_in_diagrams_match_the_declarations() -> None:
    """The CI check: a declaration changed without regenerating docs/diagrams fails here."""
    stale: list[str] = []
    expected: set[str] = set()
    for feature in all_features():
        for view in VIEWS:
            name = file_name(feature.name, view, "dot")
            expected.add(name)
            path = DOCS / name
            fresh = diagram(feature, view).source
            if not path.exists() or path.read_text(encoding="utf-8") != fresh:
                stale.append(name)
    for spec in platform_machines():
        name = machine_file_name(spec, "dot")
        expected.add(name)
        path = DOCS / name
        if not path.exists() or path.read_text(encoding="utf-8") != machine_graph(spec).source:
            stale.append(name)
    extra = sorted(p.name for p in DOCS.glob("*.dot") if p.name not in expected)
    assert not stale, (
        f"docs/diagrams is out of date for {stale}: the declarations changed. Regenerate with\n"
        f"    {REGENERATE}\nand commit the result."
    )
    assert not extra, (
        f"docs/diagrams has diagrams of no declared feature: {extra}; delete them"
        f" (with their .svg and .png) and run {REGENERATE}"
    )


# ---- rendering errors and the command line ---------------------------------------------------


def test_missing_dot_is_an_error_that_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GraphvizMissingError, match="apt-get install graphviz"):
        render(feature_graph(all_features()[0], "device"), "svg")
    # DOT needs no program
    assert render(feature_graph(all_features()[0], "device"), "dot").startswith(b"digraph")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="iotfsm diagram")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_unknown_feature_lists_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_args("nope")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown feature 'nope'" in err
    for feature in all_features():
        assert feature.name in err


def test_cli_writes_one_view(dot_binary: str, tmp_path: Path) -> None:
    name = all_features()[0].name
    assert run(_args(name, "--role", "device", "--format", "png", "-o", str(tmp_path))) == 0
    png = tmp_path / f"{name}.device.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    target = tmp_path / "sub" / "x.svg"
    assert run(_args(name, "-o", str(target))) == 0
    assert b"<svg" in target.read_bytes()


def test_cli_dot_to_stdout(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    feature = all_features()[0]
    assert run(_args(feature.name, "--role", "platform", "--format", "dot", "-o", "-")) == 0
    assert capsysbinary.readouterr().out.decode() == feature_graph(feature, "platform").source


def test_cli_all_dot_writes_only_dot(tmp_path: Path) -> None:
    assert run(_args("--all", "--format", "dot", "-o", str(tmp_path))) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    expected = [file_name(f.name, v, "dot") for f in all_features() for v in VIEWS]
    expected += [machine_file_name(m, "dot") for m in platform_machines()]
    assert written == sorted(expected)


def test_cli_all_writes_every_format(dot_binary: str, tmp_path: Path) -> None:
    assert run(_args("--all", "-o", str(tmp_path))) == 0
    suffixes = {p.suffix for p in tmp_path.iterdir()}
    assert suffixes == {".dot", ".svg", ".png"}
    drawn = len(VIEWS) * len(all_features()) + len(platform_machines())
    assert len(list(tmp_path.iterdir())) == 3 * drawn
    assert (tmp_path / "campaign.svg").read_bytes().count(b"<svg") == 1


def test_cli_draws_a_platform_level_machine(
    capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path
) -> None:
    assert run(_args("campaign", "--format", "dot", "-o", "-")) == 0
    assert capsysbinary.readouterr().out.decode() == machine_graph(platform_machines()[0]).source
    assert run(_args("campaign", "--format", "dot", "-o", str(tmp_path))) == 0
    assert (tmp_path / "campaign.dot").read_text().startswith("digraph")
    assert run(_args("campaign", "--role", "device")) == 2
    assert "drop --role" in capsysbinary.readouterr().err.decode()


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(_args("--all")) == 2
    assert "-o DIR" in capsys.readouterr().err
    assert run(_args("--all", "--role", "device", "-o", str(tmp_path))) == 2
    assert "drop --role" in capsys.readouterr().err
    assert run(_args()) == 2
    assert "name a FEATURE" in capsys.readouterr().err


def test_cli_without_dot_fails_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert run(_args("--all", "-o", str(tmp_path / "out"))) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install graphviz" in err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_python_dash_m_runs_the_same_command() -> None:
    name = all_features()[0].name
    done = subprocess.run(
        [sys.executable, "-m", "iotfsm.diagrams", name, "--format", "dot", "-o", "-"],
        capture_output=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert done.stdout.decode() == diagram(all_features()[0], "both").source
