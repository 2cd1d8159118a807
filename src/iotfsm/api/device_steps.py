"""Steps of devices that run in the platform's process (the demo, tests), in the same feed as
the platform's own, so the console can draw a device's own machine next to the platform's.

A real device's machine runs on the device; the platform never sees its steps. When the devices
are in-process (`iotfsm demo --web`, the browser tests), their runtimes can trace into the feed:
their records appear in `/steps` and `/steps/stream` with `machine` set to the device machine's
own name (`ota.device`), while the platform's keep the feature's name (`ota`). The product and
device filters select both; the `machine` filter, which names features, selects the platform's.
"""

from __future__ import annotations

from ..fsm.trace import StepRecord, Tracer
from .feed import StepFeed

ROLE_SUFFIX = ".device"


def device_tracer(feed: StepFeed) -> Tracer:
    """A tracer for `Device(on_step=...)`: each of the device's steps joins `feed`."""

    def trace(record: StepRecord) -> None:
        if record.machine.endswith(ROLE_SUFFIX):
            feed.observe(record.machine, record)

    return trace
