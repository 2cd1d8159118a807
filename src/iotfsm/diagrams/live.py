"""A running session drawn on its declaration: where it is now and how it got there.

Meant for debugging and demos: hand it `session` and the last `StepRecord` from a tracer (the
`Stepper`'s `trace`, or a runtime's) and the picture shows the current state filled and the
transition the step took in bold orange.
"""

from __future__ import annotations

from typing import Any

import graphviz

from ..fsm.session import Session
from ..fsm.spec import ANY_STATE, MachineSpec
from ..fsm.trace import StepRecord
from ..machines import all_features
from ..machines.feature import ROLES, Feature, Role
from . import labels
from .machine import Highlight, feature_graph, machine_graph


def find_feature(spec: MachineSpec[Any]) -> tuple[Feature, Role] | None:
    """The declared feature and role a spec belongs to, so the live view can show topics too."""
    for feature in all_features():
        for role in ROLES:
            if feature.spec(role) is spec:
                return feature, role
    return None


def step_edges(spec: MachineSpec[Any], record: StepRecord) -> frozenset[tuple[int, str]]:
    """The transitions that can have made this step, as `Highlight.edges` names them.

    A `StepRecord` says (source, trigger, dest) but not which `On` fired, so every transition
    matching all three is lit: usually one; two only when a guarded and an unguarded transition
    on the same trigger both end in the same state.
    """
    if not record.handled:
        return frozenset()
    found: set[tuple[int, str]] = set()
    for index, on in enumerate(spec.transitions):
        dest = record.source if on.dest is None else on.dest
        if on.trigger_name != record.trigger or dest != record.dest:
            continue
        for source in on.source:
            if source == record.source or (
                source == ANY_STATE and record.source not in spec.final_states
            ):
                found.add((index, source))
    return frozenset(found)


def live_highlight(session: Session, last: StepRecord | None = None) -> Highlight:
    """The highlight for `session`: its state, the edges of `last`, and a line saying what happened.

    Raises ValueError when `last` was recorded by another machine or another session, because
    lighting an edge from someone else's step would show a path this session never took.
    """
    spec = session.machine.spec
    if last is None:
        return Highlight(state=session.state, note=f"now in {session.state}")
    if last.machine != spec.name or last.key != session.key:
        raise ValueError(
            f"step record of {last.machine} {last.key!r} does not belong to session"
            f" {spec.name} {session.key!r}; pass that session's own last record"
        )
    trigger = labels.trigger_text(last.trigger)
    if last.handled:
        note = f"last step: {trigger}: {last.source} \u2192 {last.dest}; now in {session.state}"
    else:
        note = f"last step: {trigger} ignored in {last.source}; now in {session.state}"
    return Highlight(state=session.state, edges=step_edges(spec, last), note=note)


def live_graph(
    session: Session, last: StepRecord | None = None, *, feature: Feature | None = None
) -> graphviz.Digraph:
    """The session's machine with its current state filled and the last step's edge in bold.

    `feature` gives the topics for message edges; when omitted it is looked up among the declared
    features, and a machine declared outside any feature is drawn without topics.
    """
    spec = session.machine.spec
    highlight = live_highlight(session, last)
    if feature is not None:
        role: Role = "device" if feature.device is spec else "platform"
        if feature.spec(role) is not spec:
            raise ValueError(f"machine {spec.name} is not a role of feature {feature.name}")
        return feature_graph(feature, role, highlight)
    found = find_feature(spec)
    if found is not None:
        return feature_graph(found[0], found[1], highlight)
    return machine_graph(spec, highlight=highlight)
