"""A pool worker that dies right after its first commit of a delivery, before its answers and ack.

Run by tests/test_pool_redelivery.py as a separate process (its death must close its database and
broker connections as a real crash does). The store's commit is wrapped here, in the test's child,
never in the library: once a commit has written a step (the store has nothing pending) the process
exits at once with status 9, as a SIGKILL between commit and ack would leave it. The DSN (with the
test cluster's password) and the broker password come on stdin, not in argv.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from iotfsm.adapters.identity.broker_account import BrokerAccount
from iotfsm.pool import PoolPlatform


def main() -> None:
    dsn, password = sys.stdin.readline().split()
    broker, data_dir, partitions = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    pool = PoolPlatform(
        broker,
        dsn,
        data_dir=data_dir,
        login=BrokerAccount("iotfsm-platform", password),
        partitions=partitions,
    )
    store = pool.worker.store
    commit = store.commit

    def commit_then_die() -> None:
        commit()
        if pool.worker.delivered and not store.pending:
            os._exit(9)

    store.commit = commit_then_die  # type: ignore[method-assign]
    pool.start()
    print("started", flush=True)
    sys.stdin.readline()  # the parent never writes again: block until the crash


if __name__ == "__main__":
    main()
