"""DOT source to SVG or PNG through the Graphviz `dot` program.

The `graphviz` Python package only writes DOT and runs `dot`; the program itself is a system
package. Its absence is the most likely failure on a fresh machine, so it gets its own exception
whose message says how to install it.
"""

from __future__ import annotations

from typing import Literal

import graphviz

Format = Literal["dot", "svg", "png"]
FORMATS: tuple[Format, ...] = ("dot", "svg", "png")
INSTALL_HINT = (
    "install Graphviz: `apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` (macOS)"
)


class GraphvizMissingError(RuntimeError):
    """The `dot` program is not on PATH: DOT can be written, SVG and PNG cannot."""


class RenderError(RuntimeError):
    """`dot` refused the graph (a bug in this package's DOT); the message carries dot's words."""


def render(graph: graphviz.Digraph, fmt: Format) -> bytes:
    """The graph in `fmt`: DOT text (UTF-8) needs nothing installed; SVG and PNG need `dot`."""
    if fmt == "dot":
        return str(graph.source).encode("utf-8")
    try:
        out: bytes = graph.pipe(format=fmt, engine="dot")
    except graphviz.ExecutableNotFound as exc:
        raise GraphvizMissingError(
            f"cannot render {fmt.upper()}: the Graphviz `dot` program was not found on PATH; "
            + INSTALL_HINT
        ) from exc
    except graphviz.CalledProcessError as exc:
        stderr = exc.stderr
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
        raise RenderError(f"dot failed to render {graph.name!r}: {stderr}".strip()) from exc
    return out
