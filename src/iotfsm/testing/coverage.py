"""Transition coverage: which edges of each machine a test run took, as a table and a file.

    with recording() as coverage:
        ...                       # any Stepper, Runtime, Device or Platform built in here
    for row in coverage.report(): print(row.name, row.percent, row.untaken)

Every `Machine` built while recording gets a tracer chained after its own, and the tracer counts
the declared transition of each step that fired, per source state (the step record names it).
`pytest --iotfsm-coverage` records a whole test session this way; `save` writes the JSON file
that `iotfsm diagram --coverage FILE` draws untaken edges from.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from ..fsm.machine import Machine
from ..fsm.spec import MachineSpec
from ..fsm.trace import StepRecord, Tracer
from .paths import Edge, edges

FORMAT = 1


class CoverageFileError(ValueError):
    """A coverage file that cannot be read; the message says which file and how to make one."""


@attrs.frozen
class MachineCoverage:
    name: str
    edges: tuple[Edge, ...]
    taken: frozenset[Edge]

    @property
    def untaken(self) -> list[Edge]:
        return [e for e in self.edges if e not in self.taken]

    @property
    def percent(self) -> float:
        return 100.0 if not self.edges else 100.0 * len(self.taken) / len(self.edges)


@attrs.define
class TransitionCoverage:
    """Steps counted per machine name and (index of the `On`, source state)."""

    specs: dict[str, MachineSpec[Any]] = attrs.Factory(dict)
    counts: dict[str, Counter[tuple[int, str]]] = attrs.Factory(dict)
    imported: dict[str, list[Edge]] = attrs.Factory(dict)
    """Edges of machines known only from another process's `export`."""

    def watch(self, spec: MachineSpec[Any]) -> Tracer:
        """A tracer that counts the steps of `spec`. A machine counts from its first step, so
        machines built only to plan paths never show up; a changed copy of a declaration (a
        test's mutant, same name) never counts as the declaration itself."""
        index = {id(on): i for i, on in enumerate(spec.transitions)}
        counts: Counter[tuple[int, str]] | None = None

        def count(record: StepRecord) -> None:
            nonlocal counts
            if counts is None:
                if self._canonical(spec) is not spec:
                    return
                counts = self.counts.setdefault(spec.name, Counter())
            if record.transition is not None:
                counts[(index[id(record.transition)], record.source)] += 1

        return count

    def _canonical(self, spec: MachineSpec[Any]) -> MachineSpec[Any]:
        if not self.specs:
            from ..machines import ROLES, all_features

            self.specs.update((f.spec(r).name, f.spec(r)) for f in all_features() for r in ROLES)
        return self.specs.setdefault(spec.name, spec)

    def taken(self, name: str) -> frozenset[tuple[int, str]]:
        return frozenset(self.counts.get(name, ()))

    def report(self) -> list[MachineCoverage]:
        """One row per machine that stepped, by name."""
        rows = []
        for name in sorted(self.counts):
            spec = self.specs.get(name)
            all_edges = tuple(edges(spec) if spec is not None else self.imported[name])
            taken = self.taken(name)
            rows.append(
                MachineCoverage(
                    name, all_edges, frozenset(e for e in all_edges if (e.index, e.source) in taken)
                )
            )
        return rows

    def save(self, path: Path) -> None:
        doc = {
            "format": FORMAT,
            "machines": {
                name: sorted([i, src, n] for (i, src), n in self.counts.get(name, {}).items())
                for name in sorted(self.counts)
            },
        }
        path.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")

    def export(self) -> str:
        """What this process took, with every stepped machine's edges, as JSON: a pytest-xdist
        worker hands it to the controller, which has not seen the test's own declarations."""
        doc = {
            name: {
                "edges": [attrs.asdict(e) for e in edges(self.specs[name])],
                "counts": sorted([i, src, n] for (i, src), n in self.counts[name].items()),
            }
            for name in sorted(self.counts)
        }
        return json.dumps(doc, separators=(",", ":"))

    def merge(self, exported: str) -> None:
        """Add another process's `export` (a controller gathering its workers)."""
        for name, part in json.loads(exported).items():
            counts = self.counts.setdefault(name, Counter())
            for i, src, n in part["counts"]:
                counts[(int(i), str(src))] += int(n)
            self.imported.setdefault(name, [Edge(**e) for e in part["edges"]])


def load(path: Path) -> dict[str, frozenset[tuple[int, str]]]:
    """Per machine name, the (transition index, source state) edges a saved run took."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise CoverageFileError(f"{path}: format {doc.get('format')!r}, expected {FORMAT}")
        return {
            name: frozenset((int(i), str(src)) for i, src, _ in rows)
            for name, rows in doc["machines"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, CoverageFileError):
            raise
        raise CoverageFileError(
            f"cannot read coverage file {path}: {exc}; write one with"
            " `pytest --iotfsm-coverage --iotfsm-coverage-file FILE`"
        ) from exc


def _chain(first: Tracer | None, second: Tracer | None) -> Tracer | None:
    if first is None or second is None:
        return first or second

    def both(record: StepRecord) -> None:
        first(record)
        second(record)

    return both


@contextmanager
def recording(coverage: TransitionCoverage | None = None) -> Iterator[TransitionCoverage]:
    """Count the steps of every `Machine` built inside the block (test instrumentation: the
    engine stays untouched outside it, and machines built before it are not counted)."""
    coverage = TransitionCoverage() if coverage is None else coverage
    original = Machine.__init__

    def init(self: Machine[Any], spec: MachineSpec[Any], tracer: Tracer | None = None) -> None:
        original(self, spec, _chain(tracer, coverage.watch(spec)))

    Machine.__init__ = init  # type: ignore[method-assign]
    try:
        yield coverage
    finally:
        Machine.__init__ = original  # type: ignore[method-assign]
