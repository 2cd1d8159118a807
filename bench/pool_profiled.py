"""`iotfsm platform …` with the pool worker's loop thread under cProfile (bench/pool.py --profile).

cProfile sees only the thread it was enabled on, and a worker steps, commits and acks on its own
loop thread, so the loop is wrapped here, in the benchmark, never in the library. The profile is
written when the loop ends (SIGTERM stops the command cleanly): `python -m pstats FILE`.

    python bench/pool_profiled.py OUT.prof platform --broker amqp://… …
"""

from __future__ import annotations

import cProfile
import sys

from iotfsm.adapters.amqp.worker import PoolWorker
from iotfsm.cli import main


def profiled(out: str) -> None:
    run = PoolWorker._run

    def _run(self: PoolWorker) -> None:
        profile = cProfile.Profile()
        profile.enable()
        try:
            run(self)
        finally:
            profile.disable()
            profile.dump_stats(out)

    PoolWorker._run = _run  # type: ignore[method-assign]


if __name__ == "__main__":
    profiled(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
