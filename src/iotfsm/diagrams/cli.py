"""`iotfsm diagram`: render a feature's machines, or regenerate every diagram of the docs.

    iotfsm diagram log_level                      # ./log_level.both.svg
    iotfsm diagram log_level --role device --format png -o out/
    iotfsm diagram log_level --format dot -o -    # DOT on stdout
    iotfsm diagram campaign                       # a platform-level machine: ./campaign.svg
    iotfsm diagram --all -o docs/diagrams         # every feature and view, as dot, svg and png
    iotfsm diagram ota --coverage cov.json        # edges the tests did not take: grey, dashed

The lead's `iotfsm` console script mounts `add_arguments`/`run` as its `diagram` subcommand;
`python -m iotfsm.diagrams` runs the same parser standalone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import graphviz

from ..fsm.spec import MachineSpec
from ..machines import Feature, all_features, platform_machines
from ..testing.coverage import CoverageFileError, load
from ..testing.paths import edges
from .machine import Highlight, feature_graph, machine_graph
from .paired import paired_graph
from .render import FORMATS, Format, GraphvizMissingError, RenderError, render
from .views import VIEWS, View, diagram, file_name, machine_file_name, render_all, write_files

REGENERATE = ".venv/bin/python -m iotfsm.diagrams --all -o docs/diagrams"
"""The command that rewrites docs/diagrams; the docs check quotes it when the diagrams are stale."""
PROG = "iotfsm diagram"


class UsageError(Exception):
    """A command line that cannot be carried out; the message is the whole one-line answer."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the `diagram` options on `parser` (a subcommand's or a standalone one)."""
    parser.add_argument(
        "feature", nargs="?", metavar="FEATURE", help="feature to draw, e.g. log_level"
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="draw every feature and view into the directory -o DIR (dot, svg and png)",
    )
    parser.add_argument(
        "--role",
        choices=VIEWS,
        default=None,
        help="one role's machine, or both side by side with their messages (default: both)",
    )
    parser.add_argument(
        "--format",
        choices=("svg", "png", "dot"),
        default=None,
        help="output format (default: svg; with --all: all three)",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        default=None,
        help="file or directory to write (default: ./FEATURE.ROLE.FORMAT; '-' for stdout)",
    )
    parser.add_argument(
        "--coverage",
        metavar="FILE",
        default=None,
        help="draw the edges a test run did not take grey and dashed (FILE from"
        " pytest --iotfsm-coverage --iotfsm-coverage-file FILE)",
    )


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed `diagram` command line. 0 on success, 2 for usage errors, 1 otherwise."""
    try:
        if args.all:
            return _run_all(args)
        return _run_one(args)
    except UsageError as exc:
        _error(str(exc))
        return 2
    except (GraphvizMissingError, RenderError, CoverageFileError, OSError) as exc:
        _error(str(exc))
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m iotfsm.diagrams`: the same options as `iotfsm diagram`."""
    parser = argparse.ArgumentParser(
        prog="python -m iotfsm.diagrams",
        description="Render iotfsm feature machines as state diagrams (Graphviz).",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {message}\n")


def _known() -> str:
    return ", ".join([f.name for f in all_features()] + [m.name for m in platform_machines()])


def _run_all(args: argparse.Namespace) -> int:
    if args.feature is not None:
        raise UsageError(f"give FEATURE or --all, not both (got {args.feature!r} and --all)")
    if args.role is not None:
        raise UsageError("--all draws every role; drop --role")
    if args.coverage is not None:
        raise UsageError("--coverage draws one FEATURE; drop --all")
    if args.output is None or args.output == "-":
        raise UsageError("--all writes many files: give a directory with -o DIR")
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {out_dir} is a file; --all needs a directory")
    fmt: Format | None = args.format
    files = render_all(formats=(fmt,) if fmt else FORMATS)
    written = write_files(out_dir, files)
    sys.stdout.write(f"wrote {len(written)} files to {out_dir}\n")
    return 0


def _run_one(args: argparse.Namespace) -> int:
    features = {f.name: f for f in all_features()}
    if args.feature is None:
        raise UsageError(f"name a FEATURE ({_known()}) or use --all -o DIR")
    feature = features.get(args.feature)
    machines = {m.name: m for m in platform_machines()}
    fmt: Format = args.format or "svg"
    if feature is None and args.feature in machines:
        if args.role is not None:
            raise UsageError(
                f"{args.feature} is a platform-level machine without roles; drop --role"
            )
        spec = machines[args.feature]
        covered = None if args.coverage is None else _highlight(spec, load(Path(args.coverage)))
        graph = machine_graph(spec, highlight=covered)
        return _write(args, render(graph, fmt), machine_file_name(spec, fmt))
    if feature is None:
        raise UsageError(f"unknown feature {args.feature!r}; known features: {_known()}")
    view: View = args.role or "both"
    graph = diagram(feature, view) if args.coverage is None else _covered(feature, view, args)
    data = render(graph, fmt)
    return _write(args, data, file_name(feature.name, view, fmt))


def _write(args: argparse.Namespace, data: bytes, name: str) -> int:
    if args.output == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    path = Path(args.output) if args.output is not None else Path(name)
    if path.is_dir():
        path = path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    sys.stdout.write(f"wrote {path}\n")
    return 0


def _covered(feature: Feature, view: View, args: argparse.Namespace) -> graphviz.Digraph:
    """The feature drawn with the edges the saved test run did not take grey and dashed."""
    taken = load(Path(args.coverage))
    highlights = {role: _highlight(feature.spec(role), taken) for role in ("device", "platform")}
    if view == "both":
        return paired_graph(feature, device=highlights["device"], platform=highlights["platform"])
    return feature_graph(feature, view, highlights[view])


def _highlight(
    spec: MachineSpec[Any], taken: Mapping[str, frozenset[tuple[int, str]]]
) -> Highlight:
    """`spec`'s edges a saved test run took (the others drawn grey and dashed), with a note."""
    got = taken.get(spec.name, frozenset())
    note = f"{spec.name}: tests took {len(got)} of {len(edges(spec))} edges (grey, dashed: untaken)"
    return Highlight(taken=got, note=note)
