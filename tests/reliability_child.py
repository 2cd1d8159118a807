"""A fork server for the crash tests: one interpreter imports iotfsm, then forks a device process
per request, so twenty SIGKILLs cost twenty forks instead of twenty interpreter starts.

Protocol on stdin/stdout, one JSON object per line:
    {"spawn": {...Device arguments..., "log": "path"}}  ->  {"pid": 1234}
    {"reap": 1234}                                      ->  {"status": <wait status>}
Each child runs `Device(...)` until it is killed; its log goes to the given file. The server
itself starts no thread before it forks, so a child inherits nothing half-held.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import Any

from iotfsm.adapters.connect import MqttOptions
from iotfsm.device import Device


def run_device(spec: dict[str, Any]) -> None:
    log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    logging.basicConfig(level=logging.INFO, format=f"{os.getpid()} %(name)s: %(message)s")
    device = Device(
        spec["product"],
        spec["device"],
        spec["psk"],
        broker=spec["broker"],
        state_dir=spec["state_dir"],
        version=spec["version"],
        chunk_size=spec["chunk_size"],
        mqtt=MqttOptions(backoff_min=0.05, backoff_max=0.5),
    )
    device.start()
    threading.Event().wait()  # until SIGKILL (or SIGTERM's default action)


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        if "spawn" in request:
            pid = os.fork()
            if pid == 0:
                try:
                    sys.stdin.close()
                    run_device(request["spawn"])
                finally:
                    os._exit(1)
            answer: dict[str, int] = {"pid": pid}
        else:
            _, status = os.waitpid(int(request["reap"]), 0)
            answer = {"status": status}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
