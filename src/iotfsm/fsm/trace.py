"""Step records: what happened in one step, for logs, test assertions and diagram highlighting."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from .effects import Effect

if TYPE_CHECKING:
    from .spec import On


@attrs.frozen
class StepRecord:
    machine: str
    key: Any
    source: str
    trigger: str
    dest: str
    effects: tuple[Effect, ...]
    handled: bool
    """False when no transition fired (wrong state, guards refused, or a stale timer)."""
    transition: On | None = attrs.field(default=None, eq=False)
    """The declared transition that fired (None when none did): transition coverage counts it.
    Left out of equality, so a test compares what happened, not which declaration object."""


Tracer = Callable[[StepRecord], None]
"""Receives every step of a machine when tracing is on; `list.append` is a fine tracer."""
