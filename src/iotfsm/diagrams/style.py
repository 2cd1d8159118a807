"""Colours, fonts and symbols shared by every view, in one place so the views look like one family.

Everything here is an immutable constant: diagrams must come out byte-identical from run to run,
so nothing may depend on state left behind by an earlier rendering.
"""

from __future__ import annotations

import re
from typing import Final

FONT: Final = "Helvetica,Arial,DejaVu Sans,sans-serif"
"""A sans font list: graphviz picks the first one installed, so SVGs look alike everywhere."""
STATE_FONT_SIZE: Final = "13"
EDGE_FONT_SIZE: Final = "11"
SMALL_FONT_SIZE: Final = "9"
TITLE_FONT_SIZE: Final = "15"

INK: Final = "#212529"
"""Near-black: pure black lines next to coloured ones look heavier than they are."""
MUTED: Final = "#6c757d"
"""Topics, state docs and the legend: present but quieter than triggers and names."""
INTERNAL: Final = "#1c7ed6"
"""Internal transitions (the state stays) are blue so they never read as a way out."""
FAILURE: Final = "#c92a2a"
FAILURE_FILL: Final = "#fff5f5"
FINAL_FILL: Final = "#ebfbee"
STATE_FILL: Final = "#ffffff"
ANY_FILL: Final = "#f1f3f5"
LIVE_FILL: Final = "#ffd43b"
"""The live view's current state: the one thing on the page a reader must find at a glance."""
LIVE_EDGE: Final = "#e8590c"
MESSAGE_FILL: Final = "#f8f9fa"

TIMER_SYMBOL: Final = "\u25f7"
"""A clock-face glyph (◷) that DejaVu Sans has; ⏱ is missing from common fonts (draws a box)."""
INBOUND_SYMBOL: Final = "\u21d0"
"""⇐: the message arrives on this topic."""

_FAILURE_WORDS: Final = re.compile(r"fail|error|expired|timeout|timed_out|rejected|abort", re.I)


def is_failure(state: str) -> bool:
    """Whether a state's name says something went wrong; such states are drawn in red.

    Judged from the name because a declaration has no "failure" flag, and the feature authors
    already name these states for what they mean (`failed`, `md5_error`, `url_expired`).
    """
    return _FAILURE_WORDS.search(state) is not None
