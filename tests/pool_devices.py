"""Simulated devices for the pool tests: many raw MQTT clients per process, one selector thread.

Each device logs in to RabbitMQ's MQTT plugin with its Tencent key credentials, reports its
version, and on an offer downloads the image for real over HTTP (from any worker of the pool: the
URL's host is replaced by one of the workers' file services, the next one tried when a worker is
gone, as a client tries the next address of a name), checks its md5, reports downloading,
burning and done, then its new version. It counts what it sent and what it was answered; an
answer that comes with no report waiting for one is a duplicate. A report left unanswered for
`RESEND` seconds is sent again (the devices' own recovery), and counted as a resend.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import random
import selectors
import socket
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

RESEND = 30.0
OLD = "1.0.0"


class SimDevice:
    def __init__(self, fleet: Fleet, product: str, name: str, username: str, password: str):
        self.fleet = fleet
        self.name = name
        self.up = f"$ota/report/{product}/{name}"
        self.down = f"$ota/update/{product}/{name}"
        self.version = OLD
        self.state = "new"
        self.outstanding = 0
        self.sent_at = 0.0
        self.resend_after = RESEND
        self.connected = False
        self.sock: Any = None
        self.history: list[str] = []
        """What happened to this device, with times: a stuck one's story for the failure."""
        self.counts = {"reports": 0, "rsp": 0, "duplicates": 0, "offers": 0, "resends": 0,
                       "uplinks": 0, "downloads": 0, "failed_fetches": 0,
                       "reconnects": 0}  # fmt: skip
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{product}{name}",
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=True,
        )
        self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.on_socket_open = _nodelay

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.note(f"connack {reason}")
        if reason.is_failure:
            self.fleet.refused += 1
            return
        self.connected = True
        client.subscribe(self.down, 1)

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        self.note(f"disconnected {_rc}")
        self.connected = False

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, _codes: Any, _p: Any) -> None:
        if self.state == "new":
            self.state = "reporting"
            self.report()
        elif self.state != "done":  # back after a lost connection: report again, as devices do
            self.report()

    def note(self, what: str) -> None:
        self.history.append(f"{time.time():.3f} {what}")
        del self.history[:-12]

    def publish(self, doc: dict[str, Any], qos: int) -> None:
        self.note(f"sent {doc.get('type')} {doc.get('report')} qos {qos}")
        self.counts["uplinks"] += 1
        self.client.publish(self.up, json.dumps(doc, separators=(",", ":")), qos)

    def report(self) -> None:
        self.counts["reports"] += 1
        self.outstanding += 1
        self.sent_at = time.monotonic()
        self.publish({"type": "report_version", "report": {"version": self.version}}, 1)

    def check_resend(self, now: float) -> None:
        if self.outstanding and self.state != "done" and now - self.sent_at > self.resend_after:
            self.counts["resends"] += 1
            self.resend_after *= 2
            self.report()

    def _progress(self, state: str, target: str, percent: int | None = None) -> None:
        progress: dict[str, Any] = {"state": state, "result_code": "0", "result_msg": ""}
        if percent is not None:
            progress["percent"] = str(percent)
        report = {"progress": progress, "version": target}
        self.publish({"type": "report_progress", "report": report}, 0 if percent else 1)

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        doc = json.loads(message.payload)
        kind = doc.get("type")
        self.note(f"got {kind}")
        if kind == "report_version_rsp":
            self.counts["rsp"] += 1
            if self.outstanding == 0:
                self.counts["duplicates"] += 1
                return
            self.outstanding -= 1
            self.resend_after = RESEND
            if self.version != OLD and self.outstanding == 0:
                self.state = "done"
        elif kind == "update_firmware":
            self.counts["offers"] += 1
            if self.version != OLD:
                return  # already on the target: a stale offer
            data = self.fleet.fetch(str(doc["url"]), int(doc["file_size"]))
            if data is None or hashlib.md5(data).hexdigest() != doc["md5sum"]:
                self.counts["failed_fetches"] += 1
                self._progress("fail", str(doc["version"]))
                return
            self.counts["downloads"] += 1
            target = str(doc["version"])
            self._progress("downloading", target, 100)
            self._progress("burning", target)
            self._progress("done", target)
            self.version = target
            self.report()


def _nodelay(_client: paho.Client, _userdata: Any, sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Fleet:
    def __init__(
        self,
        host: str,
        port: int,
        product: str,
        logins: list[tuple[str, str, str]],
        file_services: list[tuple[str, int]],
    ) -> None:
        self.host, self.port = host, port
        self.file_services = file_services
        self.refused = 0
        self.devices = [SimDevice(self, product, *login) for login in logins]
        self.selector = selectors.DefaultSelector()

    def fetch(self, url: str, size: int) -> bytes | None:
        """GET the URL from one of the workers (any serves any URL), the next when one is gone."""
        parts = urlsplit(url)
        start = random.randrange(len(self.file_services))
        for n in range(len(self.file_services)):
            host, port = self.file_services[(start + n) % len(self.file_services)]
            target = urlunsplit(("http", f"{host}:{port}", parts.path, parts.query, ""))
            try:
                with urllib.request.urlopen(target, timeout=5) as answer:
                    data: bytes = answer.read()
                    if len(data) == size:
                        return data
            except (urllib.error.URLError, OSError, http.client.HTTPException):
                continue
        return None

    def connect(self) -> None:
        for device in self.devices:
            device.client.connect(self.host, self.port, keepalive=120)
            self._watch(device)

    def _watch(self, device: SimDevice) -> None:
        if device.sock is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.unregister(device.sock)
        device.sock = device.client.socket()
        if device.sock is not None:
            self.selector.register(device.sock, selectors.EVENT_READ, device)

    def revive(self) -> None:
        """Reconnect the devices whose connection was lost (paho's manual loop does not)."""
        for device in self.devices:
            lost = not device.connected and device.state != "new"
            if lost or (device.state == "new" and device.client.socket() is None):
                device.counts["reconnects"] += 1
                with contextlib.suppress(OSError):
                    device.client.reconnect()
                self._watch(device)

    def pump(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            if key.data is not None:
                key.data.client.loop_read()
        for device in self.devices:
            if device.client.want_write():
                device.client.loop_write()

    def totals(self) -> dict[str, int]:
        total: dict[str, int] = {"done": 0, "devices": len(self.devices), "refused": self.refused}
        for device in self.devices:
            total["done"] += device.state == "done"
            for name, value in device.counts.items():
                total[name] = total.get(name, 0) + value
        return total


def run(
    conn: Any,
    broker: tuple[str, int],
    product: str,
    logins: list[tuple[str, str, str]],
    file_services: list[tuple[str, int]],
) -> None:
    """A device process: connect everything, run until told to quit, answer `totals` asks."""
    fleet = Fleet(*broker, product, logins, file_services)
    fleet.connect()
    fleet.selector.register(conn.fileno(), selectors.EVENT_READ, None)
    last_misc = time.monotonic()
    while True:
        for key, _ in fleet.selector.select(0.05):
            if key.data is None:
                command = conn.recv()
                if command == "quit":
                    for device in fleet.devices:
                        device.client.disconnect()
                    conn.send(fleet.totals())
                    return
                if command == "stuck":
                    conn.send(
                        [
                            (d.name, d.state, d.version, d.outstanding, d.counts, d.history)
                            for d in fleet.devices
                            if d.state != "done"
                        ][:5]
                    )
                    continue
                conn.send(fleet.totals())
                continue
            key.data.client.loop_read()
        for device in fleet.devices:
            if device.client.want_write():
                device.client.loop_write()
        now = time.monotonic()
        if now - last_misc > 1.0:
            last_misc = now
            for device in fleet.devices:
                device.client.loop_misc()
                device.check_resend(now)
            fleet.revive()
