"""Step records: what happened in one step, for logs, test assertions and diagram highlighting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .effects import Effect


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


Tracer = Callable[[StepRecord], None]
"""Receives every step of a machine when tracing is on; `list.append` is a fine tracer."""
