"""One machine as a graph: states, the initial arrow, and one edge per (tail, head, kind).

This is the only module that walks a `MachineSpec`; the paired and live views call `add_machine`
with a node-name prefix and a highlight. It reads the declaration only (no actions run), so any
feature renders, including ones declared after this module was written.
"""

from __future__ import annotations

from typing import Any

import attrs
import graphviz

from ..fsm.spec import ANY_STATE, MachineSpec, On
from ..machines.feature import Feature, Role, inbound_direction
from . import labels, style

START = "__start__"
ANY = "__any__"


@attrs.frozen
class Highlight:
    """What the live view marks: the current state and the transitions the last step may have taken.

    An edge is named by (index of the `On` in `spec.transitions`, source state or `ANY_STATE`),
    which is how the declaration itself tells transitions apart.
    """

    state: str | None = None
    edges: frozenset[tuple[int, str]] = frozenset()
    note: str = ""
    """One line shown under the title, e.g. what the last step did."""
    taken: frozenset[tuple[int, str]] | None = None
    """Transition coverage: the (index, source state) edges tests took; the others are drawn
    grey and dashed. None draws no coverage."""


def _untaken(row: _Row, taken: frozenset[tuple[int, str]] | None) -> bool:
    if taken is None:
        return False
    if ANY_STATE in row.sources:
        return not any(index == row.index for index, _ in taken)
    return not any((row.index, source) in taken for source in row.sources)


@attrs.frozen
class Drawn:
    """What `add_machine` drew, for views that place more around it."""

    states: tuple[str, ...]
    """Node names of the declared states, in declaration order."""
    loop_label_width: float
    """Estimated width (inches) of the widest self-loop label. Graphviz leaves loop labels out
    of a cluster's bounding box, so the paired view pads its clusters by this much."""


GROUP_MIN = 3
"""A transition leaving this many named states at once is drawn once, from a "one of" node.

Features name sets of states (`ACTIVE = ("offered", "downloading", ...)`) and bind a trigger in
all of them; drawn per state, five such rules into five states make twenty-five crossing edges.
"""


@attrs.frozen
class _Row:
    """One transition as it appears on one drawn edge."""

    index: int
    on: On
    sources: tuple[str, ...]
    """The declared sources this edge stands for (one state, a group's states, or `ANY_STATE`)."""
    otherwise: bool
    """Unguarded, after a guarded transition on the same trigger: shown as `[else]`."""


@attrs.frozen
class _Edge:
    tail: str
    """A state name, `ANY_STATE`, or a group key (`__group1__`)."""
    head: str
    loop: bool
    rows: tuple[_Row, ...]


def node_id(prefix: str, state: str) -> str:
    """A DOT node name for a state; `:` is replaced because DOT reads it as a port separator."""
    return prefix + state.replace(":", "_")


def edge_id(prefix: str, index: int) -> str:
    """The DOT (and so SVG) id of the `index`-th drawn edge of a machine."""
    return f"{prefix}e{index}"


def edge_ids(spec: MachineSpec[Any], prefix: str = "") -> dict[tuple[int, str], str]:
    """The drawn edge's id for each (transition index, declared source), as `Highlight.edges`
    names transitions: a page that shows the SVG lights the edge a step took without rendering
    the graph again. A source is a state name or `ANY_STATE`; one edge stands for the rows it
    merges (self-loops, a group's states)."""
    ids: dict[tuple[int, str], str] = {}
    for n, edge in enumerate(_edges(spec)[0]):
        for row in edge.rows:
            for source in row.sources:
                ids[(row.index, source)] = edge_id(prefix, n)
    return ids


def _otherwise(on: On, guarded: set[tuple[str, str]]) -> bool:
    if on.guard is not None:
        return False
    trigger = on.trigger_name
    if (ANY_STATE, trigger) in guarded:
        return True
    if ANY_STATE in on.source:
        return any(t == trigger for _, t in guarded)
    return any((source, trigger) in guarded for source in on.source)


def _edges(spec: MachineSpec[Any]) -> tuple[list[_Edge], dict[str, tuple[str, ...]]]:
    """Group transitions by drawn edge, in declaration order: output never depends on hashing.

    An `ANY_STATE` source stays one tail (the "any state" node) instead of being expanded, and a
    transition out of `GROUP_MIN` or more states leaves from one "one of" node; both keep a rule
    that applies in many states from drawing a spoke out of each. Returns the edges and the
    group nodes (key -> member states).
    """
    order = {name: i for i, name in enumerate(spec.state_names)}
    groups: dict[tuple[str, ...], str] = {}
    drawn: dict[tuple[str, str, bool], list[_Row]] = {}
    guarded: set[tuple[str, str]] = set()
    for index, on in enumerate(spec.transitions):
        otherwise = _otherwise(on, guarded)
        if on.guard is not None:
            guarded.update((source, on.trigger_name) for source in on.source)
        members = tuple(sorted(set(on.source), key=lambda s: order.get(s, -1)))
        if on.dest is not None and ANY_STATE not in members and len(members) >= GROUP_MIN:
            group = groups.setdefault(members, f"__group{len(groups) + 1}__")
            tails: list[tuple[str, tuple[str, ...]]] = [(group, members)]
        else:
            tails = [(source, (source,)) for source in on.source]
        for tail, sources in tails:
            head = tail if on.dest is None else on.dest
            loop = head == tail
            # All self-loops of a state merge into one: graphviz reserves room for one loop's
            # label, but nested loops' labels collide, and loops pinned to a port overlap nodes.
            key = (tail, head, labels.is_timer(on.trigger_name) and not loop)
            drawn.setdefault(key, []).append(_Row(index, on, sources, otherwise))
    edges = [_Edge(t, h, t == h, tuple(rows)) for (t, h, _), rows in drawn.items()]
    return edges, {key: members for members, key in groups.items()}


def _state_attrs(name: str, final: bool, live: bool) -> dict[str, str]:
    attrs_: dict[str, str] = {}
    if final:
        attrs_.update(peripheries="2", fillcolor=style.FINAL_FILL)
    if style.is_failure(name):
        attrs_.update(
            color=style.FAILURE, fontcolor=style.FAILURE, fillcolor=style.FAILURE_FILL, penwidth="2"
        )
    if live:
        attrs_.update(fillcolor=style.LIVE_FILL, penwidth="3", style="rounded,filled,bold")
    return attrs_


def _edge_label(
    edge: _Edge,
    inbound: frozenset[str],
    topic: str | None,
    lit: frozenset[tuple[int, str]],
    taken: frozenset[tuple[int, str]] | None = None,
) -> tuple[str, bool, float]:
    """The edge's label, whether the live view lights it, and its estimated width in inches.

    Internal transitions' rows are set in blue, the live view's last step in orange.
    """
    rows: list[list[str]] = []
    colors: list[str | None] = []
    for row in edge.rows:
        on = row.on
        guard = "else" if row.otherwise else (labels.callable_label(on.guard) if on.guard else None)
        effect = on.label or (labels.callable_label(on.action) if on.action else None)
        on_topic = topic if on.trigger_name in inbound else None
        hot = any((row.index, source) in lit for source in row.sources)
        rows.append(labels.transition_lines(on.trigger_name, guard, effect, on_topic, bold_all=hot))
        if hot:
            colors.append(style.LIVE_EDGE)
        elif _untaken(row, taken):
            colors.append(style.MUTED)
        else:
            colors.append(style.INTERNAL if on.dest is None else None)
    width = max(labels.width_inches(line) for row_lines in rows for line in row_lines)
    return "<" + labels.table(rows, colors) + ">", style.LIVE_EDGE in colors, width


def add_machine(
    graph: graphviz.Digraph,
    spec: MachineSpec[Any],
    *,
    prefix: str = "",
    inbound_topic: str | None = None,
    highlight: Highlight | None = None,
) -> Drawn:
    """Draw `spec` into `graph` (a Digraph or a cluster of one); returns what a caller lays out by.

    `inbound_topic` is printed under every trigger that is one of the role's inbound messages, so a
    reader sees where that message comes from without opening the feature module.
    """
    lit = highlight.edges if highlight else frozenset()
    current = highlight.state if highlight else None
    taken = highlight.taken if highlight else None
    names: list[str] = []
    edges, groups = _edges(spec)
    has_any = any(e.tail == ANY_STATE for e in edges)

    def nid(key: str) -> str:
        return node_id(prefix, ANY if key == ANY_STATE else key)

    with graph.subgraph(name=f"{prefix}__entry__") as entry:
        entry.attr(rank="same")
        entry.node(
            node_id(prefix, START),
            "",
            shape="point",
            width="0.18",
            color=style.INK,
            fillcolor=style.INK,
            style="filled",
        )
        if has_any:
            except_final = labels.small("(not final)") if spec.final_states else ""
            entry.node(
                node_id(prefix, ANY),
                f"<<I>any state</I>{'<BR/>' + except_final if except_final else ''}>",
                style="rounded,dashed,filled",
                fillcolor=style.ANY_FILL,
                color=style.MUTED,
                fontcolor=style.MUTED,
            )
    for state in spec.states:
        state_id = node_id(prefix, state.name)
        names.append(state_id)
        graph.node(
            state_id,
            labels.state_label(state.name, state.doc),
            id=state_id,
            **_state_attrs(state.name, state.final, state.name == current),
        )
    for key, members in groups.items():
        names_html = labels.lines([labels.html(t) for t in labels.wrap(" · ".join(members), 30)])
        graph.node(
            nid(key),
            f"<<I>in any of</I><BR/>{labels.small(names_html)}>",
            style="rounded,dashed,filled",
            fillcolor=style.ANY_FILL,
            color=style.MUTED,
            fontcolor=style.MUTED,
        )
    graph.edge(node_id(prefix, START), node_id(prefix, spec.initial), arrowsize="0.9")
    for key in groups:
        # Without an in-edge a group node takes the first column and pulls the flow away from the
        # initial state; an invisible edge from the start puts it beside the initial state.
        graph.edge(node_id(prefix, START), nid(key), style="invis")

    inbound = frozenset(cls.trigger for cls in spec.inbound)
    loop_width = 0.0
    for n, edge in enumerate(edges):
        label, hot, width = _edge_label(edge, inbound, inbound_topic, lit, taken)
        if edge.loop:
            loop_width = max(loop_width, width)
        attrs_: dict[str, str] = {"label": label, "id": edge_id(prefix, n)}
        timers = all(labels.is_timer(row.on.trigger_name) for row in edge.rows)
        internal = all(row.on.dest is None for row in edge.rows)
        styles = ["dotted"] if internal else (["dashed"] if timers else [])
        if internal:
            attrs_.update(color=style.INTERNAL, arrowhead="onormal")
        if edge.head == spec.initial and not edge.loop:
            # Edges back to the initial state (a disconnect from anywhere) must not rank it:
            # a reader starts at the black dot, so the initial state belongs beside it.
            attrs_["constraint"] = "false"
        if hot:
            attrs_.update(color=style.LIVE_EDGE, penwidth="3")
            styles.append("bold")
        if all(_untaken(row, taken) for row in edge.rows):
            attrs_.update(color=style.MUTED, fontcolor=style.MUTED)
            styles = ["dashed"]
        if styles:
            attrs_["style"] = ",".join(styles)
        graph.edge(nid(edge.tail), nid(edge.head), **attrs_)
    return Drawn(tuple(names), loop_width)


def base_graph(name: str, title: str, doc: str, note: str = "") -> graphviz.Digraph:
    """A left-to-right graph with the house fonts and a title block (name, doc, legend)."""
    graph = graphviz.Digraph(name=name)
    parts = [f'<FONT POINT-SIZE="{style.TITLE_FONT_SIZE}"><B>{labels.html(title)}</B></FONT>']
    if doc:
        parts.append(labels.lines([labels.html(t) for t in labels.wrap(doc, 90)]))
    if note:
        parts.append(f'<FONT COLOR="{style.LIVE_EDGE}"><B>{labels.html(note)}</B></FONT>')
    parts.append(labels.small(labels.lines([labels.html(line) for line in legend()])))
    graph.attr(
        "graph",
        rankdir="LR",
        label="<" + "<BR/>".join(parts) + ">",
        labelloc="t",
        labeljust="l",
        fontname=style.FONT,
        fontsize="12",
        fontcolor=style.INK,
        nodesep="0.5",
        ranksep="0.7",
        pad="0.3",
        bgcolor="white",
    )
    graph.attr(
        "node",
        shape="box",
        style="rounded,filled",
        fillcolor=style.STATE_FILL,
        color=style.INK,
        fontname=style.FONT,
        fontsize=style.STATE_FONT_SIZE,
        fontcolor=style.INK,
        margin="0.18,0.08",
    )
    graph.attr(
        "edge",
        fontname=style.FONT,
        fontsize=style.EDGE_FONT_SIZE,
        color=style.INK,
        fontcolor=style.INK,
        arrowsize="0.8",
    )
    return graph


def legend() -> tuple[str, str]:
    """Two lines that decode the notation, so a newcomer needs no other page to read a diagram."""
    return (
        f"Trigger [guard] / action · {style.INBOUND_SYMBOL} topic the message arrives on · "
        f"dashed {style.TIMER_SYMBOL}: timer · blue: handled, the state stays",
        "any state, in any of: the rule holds in each of those states · "
        "double border: final · red: failure",
    )


def inbound_topic(feature: Feature, role: Role) -> str:
    return feature.topic_template(inbound_direction(role))


def machine_graph(
    spec: MachineSpec[Any],
    *,
    inbound_topic: str | None = None,
    highlight: Highlight | None = None,
) -> graphviz.Digraph:
    """One machine on its own; works for any `MachineSpec`, with or without a feature around it."""
    graph = base_graph(spec.name, spec.name, spec.doc, highlight.note if highlight else "")
    add_machine(graph, spec, inbound_topic=inbound_topic, highlight=highlight)
    return graph


def feature_graph(
    feature: Feature, role: Role, highlight: Highlight | None = None
) -> graphviz.Digraph:
    """One role of a feature, with the role's inbound topic on its message edges."""
    return machine_graph(
        feature.spec(role), inbound_topic=inbound_topic(feature, role), highlight=highlight
    )
