"""Both roles of one feature side by side, with the messages that pass between them in the middle.

This is the picture of a protocol: what the device does, what the platform does, and the only
things they share, the messages on the two topics. The two machines are drawn exactly as in the
single views (same `add_machine`), so the three files of a feature never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

import graphviz

from ..machines.feature import Direction, Feature, Role
from ..machines.messages import Message
from . import labels, style
from .machine import Drawn, Highlight, add_machine, base_graph, inbound_topic

MESSAGES = "__messages__"


def _first_sentence(doc: str) -> str:
    """A feature's doc is its module docstring; the diagram title needs only its first line."""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _message_rows(feature: Feature, direction: Direction) -> list[str]:
    sender, receiver = ("device", "platform") if direction == "up" else ("platform", "device")
    arrow = "\u27f6"
    rows = [
        f'<TR><TD COLSPAN="2" ALIGN="LEFT"><B>{sender} {arrow} {receiver}</B>'
        f"  {labels.small(direction)}</TD></TR>",
        f'<TR><TD COLSPAN="2" ALIGN="LEFT">'
        f"{labels.small(labels.html(feature.topic_template(direction) or '(no topic)'))}"
        "</TD></TR>",
    ]
    messages: Sequence[type[Message]] = feature.messages(direction)
    for message in messages:
        rows.append(
            f'<TR><TD ALIGN="LEFT">{labels.html(message.trigger)}</TD>'
            f'<TD ALIGN="LEFT">{labels.small(labels.html(repr(message.TYPE)))}</TD></TR>'
        )
    if not messages:
        rows.append(f'<TR><TD COLSPAN="2" ALIGN="LEFT">{labels.small("(none)")}</TD></TR>')
    return rows


def messages_label(feature: Feature) -> str:
    """The middle column: each direction's topic template, message classes and wire types."""
    body = "<HR/>".join("".join(_message_rows(feature, d)) for d in ("up", "down"))
    return (
        f'<<TABLE BORDER="1" COLOR="{style.MUTED}" BGCOLOR="{style.MESSAGE_FILL}" CELLBORDER="0"'
        f' CELLSPACING="0" CELLPADDING="4">{body}</TABLE>>'
    )


def paired_graph(
    feature: Feature,
    *,
    device: Highlight | None = None,
    platform: Highlight | None = None,
) -> graphviz.Digraph:
    """The device cluster, the messages, the platform cluster, left to right.

    Invisible edges (every device state to a pad, the pad to the messages, the messages to the
    platform's start) keep the three columns in that order; without them dot interleaves the two
    machines.
    """
    highlights: dict[Role, Highlight | None] = {"device": device, "platform": platform}
    notes = [h.note for h in (device, platform) if h is not None and h.note]
    graph = base_graph(
        f"{feature.name}.both", feature.name, _first_sentence(feature.doc), " · ".join(notes)
    )
    for role in ("device", "platform"):
        spec = feature.spec(role)
        with graph.subgraph(name=f"cluster_{role}") as cluster:
            title = f'<FONT POINT-SIZE="{style.TITLE_FONT_SIZE}"><B>{role}</B></FONT>'
            doc = labels.small(labels.lines([labels.html(t) for t in labels.wrap(spec.doc, 60)]))
            cluster.attr(
                label=f"<{title}<BR/>{doc}>" if spec.doc else f"<{title}>",
                style="rounded",
                color=style.MUTED,
                margin="16",
            )
            drawn = add_machine(
                cluster,
                spec,
                prefix=f"{role}.",
                inbound_topic=inbound_topic(feature, role),
                highlight=highlights[role],
            )
            _pad(cluster, f"{role}.", drawn)
    graph.node(MESSAGES, messages_label(feature), shape="plain", id=MESSAGES)
    graph.edge("device.__pad__", MESSAGES, style="invis")
    graph.edge(MESSAGES, "platform.__start__", style="invis")
    return graph


def _pad(cluster: graphviz.Digraph, prefix: str, drawn: Drawn) -> None:
    """An invisible node after every state, as wide as the widest self-loop label overhangs.

    Graphviz leaves self-loop labels out of a cluster's bounding box, so a loop on the last column
    pokes through the border; the pad widens the cluster and is where the next column attaches.
    """
    pad = f"{prefix}__pad__"
    width = max(0.01, drawn.loop_label_width / 2 - 0.6)
    cluster.node(pad, "", shape="box", width=f"{width:.2f}", height="0.01", style="invis")
    for node in drawn.states:
        cluster.edge(node, pad, style="invis")
