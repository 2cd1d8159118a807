"""Sessions as small JSON documents, so a device survives a reboot and a platform a restart.

Restoring assigns state, context and timers; it never replays callbacks, so restoring a session
that was mid-download does not start a second download. The declaration's name and version travel
with the document: a snapshot from an incompatible declaration is refused, not misread.
"""

from __future__ import annotations

import operator
import types
import typing
from collections.abc import Callable, Hashable
from typing import Any

import attrs
import cattrs

from .machine import Machine
from .session import Session
from .spec import MachineSpec

FORMAT = 1


class SnapshotError(ValueError):
    """A snapshot cannot be restored into this machine; the message says why."""


def snapshot(session: Session, converter: cattrs.Converter | None = None) -> dict[str, Any]:
    """A JSON-ready dict of the session (key excluded: the store that keeps it knows the key)."""
    conv = converter or cattrs.Converter()
    return {
        "format": FORMAT,
        "machine": session.machine.spec.name,
        "version": session.machine.spec.version,
        "state": session.state,
        "context": conv.unstructure(session.ctx, session.machine.spec.context_type),
        "timers": {
            name: [gen, deadline] for name, (gen, deadline) in (session.timers or {}).items()
        },
        "gen": session.gen,
    }


def restore(
    machine: Machine[Any], key: Any, doc: Any, converter: cattrs.Converter | None = None
) -> Session:
    """Rebuild a session from `snapshot` output. Raises SnapshotError on any mismatch."""
    spec = machine.spec
    if not isinstance(doc, dict):
        raise SnapshotError(f"a snapshot is a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise SnapshotError(f"snapshot format {doc.get('format')!r} is not {FORMAT}")
    if doc.get("machine") != spec.name or doc.get("version") != spec.version:
        raise SnapshotError(
            f"snapshot of {doc.get('machine')!r} v{doc.get('version')} does not fit "
            f"{spec.name!r} v{spec.version}; migrate it or start the session afresh"
        )
    state = doc.get("state")
    if state not in spec.state_names:
        raise SnapshotError(f"snapshot state {state!r} is not a state of {spec.name!r}")
    conv = converter or cattrs.Converter()
    try:
        ctx = conv.structure(doc.get("context"), spec.context_type)
        timers = {
            str(name): (int(gen), float(deadline))
            for name, (gen, deadline) in dict(doc.get("timers") or {}).items()
        }
        gen = int(doc.get("gen", 0))
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        raise SnapshotError(
            f"snapshot of {spec.name!r} has a malformed context or timers: {exc}"
        ) from exc
    if any(g > gen for g, _ in timers.values()):
        raise SnapshotError("snapshot timer generation is newer than the session's counter")
    session = machine.new_session(key, ctx)
    session.state = state
    session.timers = timers or None
    session.gen = gen
    return session


Probe = Callable[[Session], Hashable]

_IMMUTABLE = frozenset({str, int, float, bool, bytes, type(None)})


def _immutable(tp: Any) -> bool:
    """Whether a value of type `tp` can only change by being replaced (never in place)."""
    if tp in _IMMUTABLE:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType, typing.Literal):
        return typing.get_origin(tp) is typing.Literal or all(
            _immutable(arg) for arg in typing.get_args(tp)
        )
    if isinstance(tp, type) and attrs.has(tp) and getattr(tp, "__attrs_frozen__", False):
        attrs.resolve_types(tp)
        return all(_immutable(f.type) for f in attrs.fields(tp))
    return False


def change_probe(spec: MachineSpec[Any]) -> Probe | None:
    """A cheap value that differs before and after a step whenever the session's snapshot would:
    its state, timers, timer generation and every context field, compared shallowly. So a store
    need not snapshot a session that a step left as it was (an answered `get_log_level` asks
    only for a reply). None when the context is no attrs class or a field's type could change in
    place (a list, a dict, a mutable object), which no shallow look can see: such sessions are
    snapshotted after every step that fired."""
    ctype = spec.context_type
    if not (isinstance(ctype, type) and attrs.has(ctype)):
        return None
    attrs.resolve_types(ctype)
    names = [f.name for f in attrs.fields(ctype)]
    if not all(_immutable(f.type) for f in attrs.fields(ctype)):
        return None
    fields: Callable[[Any], Any] = operator.attrgetter(*names) if names else (lambda ctx: ())

    def probe(session: Session) -> Hashable:
        timers = session.timers
        return (
            session.state,
            session.gen,
            tuple(timers.items()) if timers else None,
            fields(session.ctx),
        )

    return probe
