"""The three views of a feature and the files they are kept in (`{feature}.{view}.{format}`);
platform-level machines (campaigns) have one view, kept in `{machine}.{format}`.

One naming scheme shared by the CLI, the docs and the test that compares checked-in DOT with
fresh DOT, so the three cannot disagree about where a diagram lives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import graphviz

from ..fsm.spec import MachineSpec
from ..machines import all_features, platform_machines
from ..machines.feature import Feature
from .machine import feature_graph, machine_graph
from .paired import paired_graph
from .render import FORMATS, Format, render

View = Literal["device", "platform", "both"]
VIEWS: tuple[View, ...] = ("device", "platform", "both")


def diagram(feature: Feature, view: View) -> graphviz.Digraph:
    """One role's machine, or both roles side by side with their messages (`both`)."""
    if view == "both":
        return paired_graph(feature)
    return feature_graph(feature, view)


def file_name(feature: str, view: View, fmt: Format) -> str:
    return f"{feature}.{view}.{fmt}"


def machine_file_name(spec: MachineSpec[Any], fmt: Format) -> str:
    """A platform-level machine has no roles: one file per format."""
    return f"{spec.name}.{fmt}"


def render_all(
    features: Iterable[Feature] | None = None,
    formats: Sequence[Format] = FORMATS,
    machines: Iterable[MachineSpec[Any]] | None = None,
) -> dict[str, bytes]:
    """Every view of every feature, and every platform-level machine, in every format, by file
    name, in a stable order.

    Rendered in memory first so a missing `dot` fails before any file is written: a docs folder
    is never left with fresh DOT next to stale SVG.
    """
    out: dict[str, bytes] = {}
    for feature in all_features() if features is None else features:
        for view in VIEWS:
            graph = diagram(feature, view)
            for fmt in formats:
                out[file_name(feature.name, view, fmt)] = render(graph, fmt)
    for spec in platform_machines() if machines is None else machines:
        graph = machine_graph(spec)
        for fmt in formats:
            out[machine_file_name(spec, fmt)] = render(graph, fmt)
    return out


def write_files(out_dir: Path, files: dict[str, bytes]) -> list[Path]:
    """Write rendered files into `out_dir` (created if needed); returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, data in files.items():
        path = out_dir / name
        path.write_bytes(data)
        written.append(path)
    return written
