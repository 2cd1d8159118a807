"""Text on the diagrams: trigger, guard and effect names, topics, and their HTML-like DOT labels.

Labels are graphviz HTML-like labels (`<...>`) rather than plain strings because they let one edge
say four things at different weights (trigger bold, topic small and grey) without a legend for
each. Every piece of declared text is escaped here, once.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Sequence
from html import escape, unescape
from typing import Any

from ..fsm.events import TIMER_PREFIX
from . import style

WRAP = 34
"""Characters per label line: long enough for most names, short enough to keep edges apart."""
TOPIC_WRAP = 46
"""Topics are set smaller, so a whole Tencent topic template usually fits on one line."""


def callable_label(fn: Callable[..., Any]) -> str:
    """The name a guard or action is shown by: its function name without the private underscore.

    Feature modules name guards and actions for what they decide or do (`_valid_reply`), so the
    name is the most honest label there is; running the action to find out would need a context.
    """
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name == "<lambda>":
        return "\u03bb"
    return name.lstrip("_") or name


def is_timer(trigger: str) -> bool:
    return trigger.startswith(TIMER_PREFIX)


def trigger_text(trigger: str) -> str:
    """How a trigger reads on an edge: `◷ reply` for timers, the event class name otherwise."""
    if is_timer(trigger):
        return f"{style.TIMER_SYMBOL} {trigger[len(TIMER_PREFIX) :]}"
    return trigger


def wrap_topic(topic: str, width: int = WRAP) -> list[str]:
    """Split a topic at `/` into lines of at most `width` characters (one segment may exceed it)."""
    lines: list[str] = []
    current = ""
    for segment in topic.split("/"):
        piece = segment if not current else "/" + segment
        if current and len(current) + len(piece) > width:
            lines.append(current)
            current = "/" + segment
        else:
            current += piece
    lines.append(current)
    return lines


def wrap(text: str, width: int = WRAP) -> list[str]:
    return textwrap.wrap(text, width) or [""]


def html(text: str) -> str:
    """Escape declared text for an HTML-like label (topics hold `{`, `$`; docs may hold `<`)."""
    return escape(text, quote=False)


def lines(parts: Sequence[str]) -> str:
    """Join already-escaped lines with graphviz line breaks (aligned by the enclosing cell)."""
    return "<BR/>".join(parts)


def small(text_html: str, color: str = style.MUTED) -> str:
    return f'<FONT POINT-SIZE="{style.SMALL_FONT_SIZE}" COLOR="{color}">{text_html}</FONT>'


def transition_lines(
    trigger: str,
    guard: str | None,
    effect: str | None,
    topic: str | None,
    *,
    bold_all: bool = False,
) -> list[str]:
    """The lines of one transition: `Trigger [guard]`, `⇐ topic`, `/ effect`, each escaped.

    The guard goes on its own line when the pair would be too wide, so no line runs far past WRAP.
    """
    head = f"<B>{html(trigger_text(trigger))}</B>"
    out: list[str] = []
    if guard is not None:
        guard_html = html(f"[{guard}]")
        if len(trigger_text(trigger)) + len(guard) + 3 > WRAP:
            out.extend((head, guard_html))
        else:
            out.append(f"{head} {guard_html}")
    else:
        out.append(head)
    if topic is not None:
        topic_lines = wrap_topic(f"{style.INBOUND_SYMBOL} {topic}", TOPIC_WRAP)
        out.extend(small(html(t)) for t in topic_lines)
    if effect is not None:
        out.extend(html(("/ " if i == 0 else "  ") + t) for i, t in enumerate(wrap(effect)))
    if bold_all:
        out = [f"<B>{line}</B>" for line in out]
    return out


def table(rows: Sequence[Sequence[str]], colors: Sequence[str | None] = ()) -> str:
    """Stack several transitions' lines in one label, separated by thin rules.

    Transitions sharing the same two ends are drawn as one edge (a state with three self-loops is
    unreadable); the table keeps each transition's text together and apart from the others.
    `colors[i]`, when given, colours row i (internal transitions, the live view's last step).
    """
    cells: list[str] = []
    for i, row in enumerate(rows):
        if i:
            cells.append("<HR/>")
        body = lines(row)
        color = colors[i] if i < len(colors) else None
        if color:
            body = f'<FONT COLOR="{color}">{body}</FONT>'
        cells.append(f'<TR><TD ALIGN="LEFT" BALIGN="LEFT">{body}</TD></TR>')
    head = '<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="2">'
    return head + "".join(cells) + "</TABLE>"


def width_inches(line_html: str) -> float:
    """A rough width of one label line: enough to reserve room for it, never used to draw it.

    Averages of Helvetica glyph widths: about 0.55 em per character at the line's point size.
    """
    size = float(style.SMALL_FONT_SIZE if "POINT-SIZE" in line_html else style.EDGE_FONT_SIZE)
    text = unescape(re.sub(r"<[^>]*>", "", line_html))
    return len(text) * size * 0.55 / 72


def state_label(name: str, doc: str) -> str:
    """A state's name, with its declared doc in small grey text under it to tell a newcomer why."""
    parts = [f"<B>{html(name)}</B>"]
    if doc:
        parts.append(small(lines([html(t) for t in wrap(doc, 26)])))
    return "<" + "<BR/>".join(parts) + ">"
