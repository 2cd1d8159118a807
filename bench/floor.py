"""The floor of the per-message path: a hand-written platform of dicts, json.loads and json.dumps.

What any Python consumer of these reports does at least, whatever its framework: split the topic
into product and device, parse the JSON, dispatch on `type` through a dict, keep a little state per
device in a dict, and encode the answer the protocol asks for (`get_log_level` and
`report_version` are answered; `report_progress` is recorded). No validation beyond what `json`
does and a KeyError on a missing field: that is the point of a floor.

`bench/per_message.py` measures the platform's runtime against it in one process, and
`bench/mqtt.py` runs it as the decode-and-reply subscriber on the platform's own MQTT client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

Reply = tuple[str, bytes] | None
"""(topic, payload) to publish at QoS 0, or None when the message needs no answer."""


class DictPlatform:
    """Answers the bench load as the platform would, with plain dicts."""

    __slots__ = ("_dumps", "_handlers", "_loads", "states")

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], dict[str, Any]] = {}
        self._loads = json.loads
        self._dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        self._handlers: dict[str, Callable[[str, str, dict[str, Any], dict[str, Any]], Reply]] = {
            "get_log_level": self._log_level,
            "report_version": self._version,
            "report_progress": self._progress,
        }

    def handle(self, topic: str, payload: bytes | bytearray) -> Reply:
        _, product, device = topic.rsplit("/", 2)
        doc = self._loads(payload)
        state = self.states.get((product, device))
        if state is None:
            state = self.states[(product, device)] = {"level": 0, "reported": "", "percent": 0}
        return self._handlers[doc["type"]](product, device, state, doc)

    def _log_level(self, product: str, device: str, state: dict[str, Any], doc: Any) -> Reply:
        reply = {
            "type": "get_log_level",
            "clientToken": doc["clientToken"],
            "log_level": state["level"],
            "result": 0,
            "timestamp": int(time.time()),
        }
        return f"$log/operation/result/{product}/{device}", self._dumps(reply).encode()

    def _version(self, product: str, device: str, state: dict[str, Any], doc: Any) -> Reply:
        state["reported"] = version = doc["report"]["version"]
        reply = {
            "type": "report_version_rsp",
            "result_code": 0,
            "result_msg": "success",
            "version": version,
        }
        return f"$ota/update/{product}/{device}", self._dumps(reply).encode()

    def _progress(self, product: str, device: str, state: dict[str, Any], doc: Any) -> Reply:
        progress = doc["report"]["progress"]
        state["state"] = progress["state"]
        state["percent"] = int(progress["percent"])
        return None
