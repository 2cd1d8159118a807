"""The engine: declarations, validation, compiled machines, sessions, steps, effects, timers.

Knows nothing about Tencent, MQTT or HTTP; the `machines` package declares features with it and
the `adapters` package runs them.
"""

from .clock import Clock, ManualClock, RealClock, Scheduler
from .effects import CancelTimer, Effect, Log, Publish, SetTimer
from .events import Connected, Disconnected, Event, TimerFired, timer
from .machine import Machine, run
from .session import Session
from .snapshot import SnapshotError, restore, snapshot
from .spec import ANY_STATE, Action, DeclarationError, Guard, MachineSpec, On, State
from .stepper import StepIgnoredError, Stepper
from .trace import StepRecord, Tracer

__all__ = [
    "ANY_STATE",
    "Action",
    "CancelTimer",
    "Clock",
    "Connected",
    "DeclarationError",
    "Disconnected",
    "Effect",
    "Event",
    "Guard",
    "Log",
    "Machine",
    "MachineSpec",
    "ManualClock",
    "On",
    "Publish",
    "RealClock",
    "Scheduler",
    "Session",
    "SetTimer",
    "SnapshotError",
    "State",
    "StepIgnoredError",
    "StepRecord",
    "Stepper",
    "TimerFired",
    "Tracer",
    "restore",
    "run",
    "snapshot",
    "timer",
]
