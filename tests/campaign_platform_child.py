"""A platform process for the campaign Mosquitto test, so that the test can SIGKILL it mid-campaign.

    python campaign_platform_child.py DATA_DIR BROKER_URL

Runs `Platform` (open registry, real clock) on the data directory and obeys one JSON command per
line on stdin, answering one JSON line on stdout:
    {"start": {"waves": [[...], ...], "rate": 1200, "abort_percent": 10, ...}} -> {"id": "c-..."}
    {"pause": ID} / {"resume": ID}                                           -> {"ok": true}
    {"state": ID}       -> {"state": "running"}
    {"status": ID}      -> {"state": ..., "reason": ..., "devices": {name: [state, started, starts]}}
Startup prints {"ready": true} once the platform is started (and its campaigns restored).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from iotfsm.adapters.connect import MqttOptions
from iotfsm.campaigns import CampaignSettings
from iotfsm.machines.campaign import AbortRule, Rate
from iotfsm.platform import Platform

IMAGE = b"campaign firmware " * 1000


def answer(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def start(platform: Platform, spec: dict[str, Any]) -> dict[str, Any]:
    settings = CampaignSettings(
        rate=Rate(spec["rate"]),
        abort=(AbortRule(spec["abort_percent"], spec["min_finished"], (-5,)),),
        success_percent=spec["success_percent"],
        device_timeout=spec["device_timeout"],
    )
    cid = platform.start_campaign(
        spec["product"], "2.0", IMAGE, spec["waves"], settings=settings, campaign_id="rollout"
    )
    return {"id": cid}


def status(platform: Platform, cid: str) -> dict[str, Any]:
    st = platform.campaign_status(cid)
    runs = platform.campaigns.context(cid).devices
    return {
        "state": st.state,
        "reason": st.reason,
        "wave": st.wave,
        "devices": {d: [r.state, r.started, r.starts] for d, r in runs.items()},
    }


def main() -> None:
    data_dir, broker = sys.argv[1], sys.argv[2]
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s"
    )
    mqtt = MqttOptions(backoff_min=0.05, backoff_max=0.5)
    platform = Platform(broker, data_dir=data_dir, open_registry=True, mqtt=mqtt).start()
    deadline = time.monotonic() + 30
    while not platform.runtime.transport.connected and time.monotonic() < deadline:
        time.sleep(0.01)  # offers published before the connection would be lost
    answer({"ready": platform.runtime.transport.connected})
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if "start" in command:
                answer(start(platform, command["start"]))
            elif "pause" in command:
                platform.pause_campaign(command["pause"])
                answer({"ok": True})
            elif "resume" in command:
                platform.resume_campaign(command["resume"])
                answer({"ok": True})
            elif "state" in command:
                answer({"state": platform.campaign_status(command["state"]).state})
            elif "status" in command:
                answer(status(platform, command["status"]))
        except Exception as exc:  # the test reads the error instead of a hung pipe
            answer({"error": repr(exc)})
    platform.stop()


if __name__ == "__main__":
    main()
