"""State diagrams drawn from the declarations themselves, never by hand.

Three views per feature: each role's machine alone (`feature_graph`), both roles side by side with
the messages between them (`paired_graph`), and a running session with its current state and last
step highlighted (`live_graph`). Everything builds `graphviz.Digraph` objects whose DOT source is
deterministic, so the checked-in DOT under docs/diagrams can be compared byte for byte with fresh
output; `render` turns them into SVG or PNG with the `dot` program.
"""

from .cli import REGENERATE, add_arguments, run
from .live import find_feature, live_graph, live_highlight, step_edges
from .machine import Highlight, add_machine, feature_graph, machine_graph
from .paired import paired_graph
from .render import FORMATS, Format, GraphvizMissingError, RenderError, render
from .views import VIEWS, View, diagram, file_name, machine_file_name, render_all, write_files

__all__ = [
    "FORMATS",
    "REGENERATE",
    "VIEWS",
    "Format",
    "GraphvizMissingError",
    "Highlight",
    "RenderError",
    "View",
    "add_arguments",
    "add_machine",
    "diagram",
    "feature_graph",
    "file_name",
    "find_feature",
    "live_graph",
    "live_highlight",
    "machine_file_name",
    "machine_graph",
    "paired_graph",
    "render",
    "render_all",
    "run",
    "step_edges",
    "write_files",
]
