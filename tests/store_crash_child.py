"""A process that commits one batch, saves a second without committing, and waits to be killed.

Run by tests/test_store_contract.py: the store's location comes on stdin (a PostgreSQL DSN may
carry the test cluster's password, which must not be in argv).
"""

from __future__ import annotations

import sys
import time

from iotfsm.adapters.store.location import open_store
from iotfsm.machines.feature import DeviceKey


def main() -> None:
    store = open_store(sys.stdin.readline().strip())
    store.save("ota", DeviceKey("P", "kept"), {"state": "idle", "n": 1})
    store.save("ota", DeviceKey("P", "changed"), {"state": "idle", "n": 1})
    store.commit()
    store.put("deployments", "P/1.0", {"version": "1.0"})
    store.save("ota", DeviceKey("P", "changed"), {"state": "downloading", "n": 2})
    store.save("ota", DeviceKey("P", "lost"), {"state": "idle", "n": 1})
    store.delete_session("ota", DeviceKey("P", "kept"))
    print("ready", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
