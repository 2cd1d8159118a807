"""Machine diagrams for the console: the project's SVG drawn once per machine, plus a map from
states and transitions to the SVG's element ids so the page can light them live.

Rendering with `dot` takes ~0.1 s per machine, far too slow to redo on every step of every
device, and it would draw the same picture each time: what changes is which state is filled and
which edge is bold. So the picture is the plain declaration (the same `feature_graph` the docs
use), and the page moves the highlight itself from each step record it receives.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import attrs

from ..diagrams.machine import edge_ids, feature_graph, machine_graph, node_id
from ..diagrams.render import render
from ..fsm.spec import MachineSpec
from ..machines import all_features, platform_machines
from ..machines.feature import ROLES, Feature, Role

log = logging.getLogger(__name__)

_ID = re.compile(r'\bid="')


@attrs.frozen
class Drawn:
    """One machine as the page gets it."""

    svg: str
    """The SVG element only (no XML prolog), every id prefixed by the machine's name, so several
    diagrams can sit on one page."""
    layout: dict[str, Any]
    """States and transitions by SVG id; see `layout_of`."""


def _machines() -> dict[str, tuple[MachineSpec[Any], Feature | None, Role | None]]:
    found: dict[str, tuple[MachineSpec[Any], Feature | None, Role | None]] = {}
    for feature in all_features():
        for role in ROLES:
            spec = feature.spec(role)
            found[spec.name] = (spec, feature, role)
    for spec in platform_machines():
        found[spec.name] = (spec, None, None)
    return found


def _prefix(name: str) -> str:
    return name.replace(".", "-") + "--"


def layout_of(spec: MachineSpec[Any], feature: Feature | None, role: Role | None) -> dict[str, Any]:
    """What the page needs to light a step: the SVG id of each state, and for each transition
    (in declaration order, so a step's transition index picks it) its trigger, its destination
    (None: internal, the state stays) and the drawn edge for each declared source (`*`: any
    non-final state)."""
    prefix = _prefix(spec.name)
    by_row = edge_ids(spec, prefix)
    transitions = []
    for index, on in enumerate(spec.transitions):
        edges = {source: by_row[(index, source)] for source in on.source}
        transitions.append({"trigger": on.trigger_name, "dest": on.dest, "edges": edges})
    return {
        "machine": spec.name,
        "feature": feature.name if feature else spec.name,
        "role": role,
        "initial": spec.initial,
        "final": sorted(spec.final_states),
        "states": {name: prefix + node_id("", name) for name in spec.state_names},
        "transitions": transitions,
    }


def _svg(spec: MachineSpec[Any], feature: Feature | None, role: Role | None) -> str:
    graph = feature_graph(feature, role) if feature and role else machine_graph(spec)
    text = render(graph, "svg").decode("utf-8")
    text = text[text.index("<svg") :]
    return _ID.sub(f'id="{_prefix(spec.name)}', text)


class DiagramBook:
    """Every declared machine's diagram, rendered on first request and kept for the process.

    One book per console (not a module-level cache): the API app owns it, and tests that build
    two apps get two books.
    """

    def __init__(self) -> None:
        self._machines = _machines()
        self._drawn: dict[str, Drawn] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._machines)

    def render_ahead(self) -> threading.Thread:
        """Draw every machine on a background thread, so the first device page a person opens
        does not wait for `dot` (~0.1 s a machine, fifteen machines). A daemon thread: it ends
        by itself within seconds, and a process that exits need not wait for it."""

        def draw_all() -> None:
            for name in self._machines:
                try:
                    self.get(name)
                except Exception:  # the page's own request reports it, with dot's words
                    log.warning("could not draw %s ahead of time", name, exc_info=True)
                    return

        thread = threading.Thread(target=draw_all, name="iotfsm-console-diagrams", daemon=True)
        thread.start()
        return thread

    def get(self, name: str) -> Drawn | None:
        """The machine called `name` (`ota.device`, `campaign`), or None when none is declared."""
        found = self._machines.get(name)
        if found is None:
            return None
        with self._lock:
            drawn = self._drawn.get(name)
            if drawn is None:
                drawn = Drawn(_svg(*found), layout_of(*found))
                self._drawn[name] = drawn
            return drawn
