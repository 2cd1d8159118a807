"""Example events per trigger: what a test planner may step into a machine to take its edges.

A declaration knows its triggers but not how to build an event that passes a guard: an offer must
name the firmware being downloaded, an outcome must carry the current transfer's number. So each
declaration that wants generated tests offers, per trigger, a pure function from the session's
context to a few events (a matching one, a stale one, a malformed one). Timers need none: the
planner fires the timers a session has armed.

    Examples(ota.DEVICE, DeviceKey("P", "d"), {
        Connected: always(Connected()),
        TransferDone: lambda ctx: [TransferDone(ctx.transfer, "/tmp/fw.bin")],
        ...
    })
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from .events import TIMER_PREFIX, Event
from .spec import DeclarationError, MachineSpec

ExampleFn = Callable[[Any], Iterable[Event]]
"""`examples(ctx) -> events`: pure; may return nothing when no such event makes sense now."""


class ExamplesError(DeclarationError):
    """Example events do not fit their declaration; the message names the trigger and the fix."""


def always(*events: Event) -> ExampleFn:
    """Examples that do not depend on the context (Connected(), a command without fields)."""

    def constant(ctx: Any) -> tuple[Event, ...]:
        return events

    return constant


def _by_trigger(mapping: Mapping[Any, ExampleFn]) -> dict[str, ExampleFn]:
    return {k if isinstance(k, str) else k.trigger: fn for k, fn in mapping.items()}


@attrs.frozen(eq=False)
class Examples:
    """Example events for every non-timer trigger of `spec`, for sessions keyed `key`.

    Checked when built, like the declaration: a trigger without examples could never be taken by
    a generated test, and an example for a trigger the machine does not bind is a typo.
    """

    spec: MachineSpec[Any]
    key: Any
    events: Mapping[str, ExampleFn] = attrs.field(converter=_by_trigger)
    starts: tuple[Callable[[Any], Any], ...] = ()
    """Other contexts a session may start from, beside the declaration's: a role facade that
    configures its sessions (a device given the platform's firmware key) reaches edges the
    default context never does."""

    def __attrs_post_init__(self) -> None:
        bound = {t.trigger_name for t in self.spec.transitions}
        needed = {t for t in bound if not t.startswith(TIMER_PREFIX)}
        missing = sorted(needed - set(self.events))
        if missing:
            self._fail(f"no examples for {missing}; add a function ctx -> events for each")
        extra = sorted(set(self.events) - needed)
        if extra:
            self._fail(f"examples for {extra}, which the machine does not bind (or are timers)")
        ctx = self.spec.context(self.key)
        for trigger in sorted(self.events):
            self.candidates(trigger, ctx)

    def candidates(self, trigger: str, ctx: Any) -> list[Event]:
        """The example events for `trigger` in a session with context `ctx`."""
        events = list(self.events[trigger](ctx))
        for event in events:
            if not isinstance(event, Event) or event.trigger != trigger:
                self._fail(f"the examples for {trigger} gave {event!r}; return {trigger} events")
        return events

    def _fail(self, detail: str) -> None:
        raise ExamplesError(f"examples of machine {self.spec.name!r}: {detail}")
