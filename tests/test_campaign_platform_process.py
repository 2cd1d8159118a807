"""Campaign faces against a real `iotfsm platform` process over Mosquitto: a `[[campaigns]]`
table in its desired-state file and an `iotfsm campaign start` from another process are each
started once, a changed declared `state` pauses one, and a SIGKILL plus restart starts nobody
again and re-applies nothing."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from mqtt_fixtures import mosquitto_broker
from test_agents_e2e import Agent

from iotfsm.testing import Mosquitto, wait_for
from iotfsm.testing.server import free_port

__all__ = ["mosquitto_broker"]

PRODUCT = "CAMPPROC01"
NAMES = ["d1", "d2", "d3"]


def desired(state: str) -> str:
    return f"""
[[devices]]
product = "{PRODUCT}"
devices = {json.dumps(NAMES)}

[[campaigns]]
id = "declared"
product = "{PRODUCT}"
version = "2.0"
file = "fw.bin"
waves = [["d1"], ["d2", "d3"]]
advance = "operator"
state = "{state}"
"""


def iotfsm(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "iotfsm", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def campaigns(data: Path) -> dict[str, dict[str, Any]]:
    done = iotfsm("campaign", "status", "--data-dir", str(data), "--json")
    assert done.returncode == 0, done.stderr
    return {c["id"]: c for c in json.loads(done.stdout)}


def test_declared_and_queued_campaigns_across_a_sigkill(
    mosquitto_broker: Mosquitto, tmp_path: Path
) -> None:
    image = tmp_path / "fw.bin"
    image.write_bytes(random.Random(6).randbytes(4_000))
    path = tmp_path / "desired.toml"
    path.write_text(desired("running"))
    data = tmp_path / "platform"
    args = ["platform", "--broker", mosquitto_broker.url, "--data-dir", str(data)]
    args += ["--http", f"127.0.0.1:{free_port()}", "--desired", str(path), "--events", "jsonl"]
    platform = Agent(*args)

    def saw(event: str, what: str) -> None:
        wait_for(what, lambda: platform.seen(event=event, what=what), timeout=30)

    try:
        saw("applied", f"campaign declared started ({PRODUCT} -> 2.0, running)")
        start = ["campaign", "start", "--data-dir", str(data), "--id", "queued"]
        start += ["--product", PRODUCT, "--version", "2.0", "--image", str(image)]
        queued = iotfsm(*start, "--wave", "d2", "--advance", "operator")
        assert queued.returncode == 0 and queued.stdout.strip() == "queued", queued.stderr
        saw("campaign", "campaign queued start")
        wait_for(
            "both waiting",
            lambda: [c["state"] for c in campaigns(data).values()] == ["waiting", "waiting"],
        )
        path.write_text(desired("paused"))
        saw("applied", "campaign declared paused")
        platform.kill()
        before = campaigns(data)
        assert before["declared"]["state"] == "paused"

        platform = Agent(*args)
        # a command the loop refuses proves it runs, past the desired state's first apply
        assert iotfsm("campaign", "next-wave", "queued", "--data-dir", str(data)).returncode == 0
        wait_for(
            "the loop",
            lambda: any(
                e.get("what", "").startswith("campaign queued next-wave refused")
                for e in platform.events
            ),
            timeout=30,
        )
        assert not platform.seen(event="applied")  # nothing declared is started or moved again
        after = campaigns(data)
        assert after == before
        assert [w["running"] for w in after["declared"]["waves"]] == [1, 0]
        launched = [t for _, t in after["declared"]["history"] if t.startswith("launched")]
        assert len(launched) == 1
    finally:
        platform.stop()
