"""Testing code built on iotfsm: a platform and devices in one process, a real Mosquitto.

- `iotfsm.testing.Pair`: a Platform and Devices over the memory broker on a manual clock.
- `iotfsm.testing.Mosquitto`: a private Mosquitto on a free port (optionally TLS).
- `iotfsm.testing.wait_for`: bounded waiting for outcomes on other threads.
- `iotfsm.testing.paths(spec)`: shortest executable paths that take every transition of a
  declaration; `run_path` steps one through a declaration (and your effect handlers), `shrink`
  cuts a failing one down; `iotfsm.testing.generated.generated_paths` makes pytest cases of them.
- pytest fixtures (`iotfsm_pair`, `iotfsm_broker`, `iotfsm_clock`, `mosquitto`) load by themselves
  when iotfsm is installed (the `pytest11` entry point `iotfsm.testing.pytest_plugin`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# `paths` is also the name of its module: once anything imports `iotfsm.testing.paths` (the
# pytest helper `generated` does), the import system binds the module to the package's `paths`,
# and a lazy name would never be looked up again. The planner is light (the engine only), so its
# names are bound now, over the module.
from .paths import Edge, Path, PathError, Plan, Step, edges, paths, plan, run_path, shrink

if TYPE_CHECKING:
    from .mosquitto import Mosquitto
    from .pair import Pair
    from .waiting import wait_for

_LAZY = {
    "Mosquitto": ".mosquitto",
    "Pair": ".pair",
    "wait_for": ".waiting",
}
"""Each public name and the module that defines it, imported on first use (PEP 562): the pytest
plugin, `iotfsm diagram` and the transition coverage import `iotfsm.testing.coverage`, and
need neither the Platform and Devices of `Pair` nor the certificates of `Mosquitto`."""


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)

__all__ = [
    "Edge",
    "Mosquitto",
    "Pair",
    "Path",
    "PathError",
    "Plan",
    "Step",
    "edges",
    "paths",
    "plan",
    "run_path",
    "shrink",
    "wait_for",
]
