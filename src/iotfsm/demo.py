"""The demo scenario: a platform and N devices in one process, every outcome checked.

It is the README's first command, so it shows each feature working end to end and fails loudly
(non-zero exit) when any check fails. The platform's HTTP file service is real (127.0.0.1);
messages go over the embedded broker, or over a real MQTT broker with `broker_url`. Time is
virtual: whenever nothing is happening the clock jumps to the next timer, so the retry after a
cut connection costs no wall time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from .adapters.http.log_upload import LogUploadOptions
from .campaigns import CampaignSettings
from .demo_web import WebDemo
from .device import Device
from .fsm.trace import Tracer
from .machines.feature import DeviceKey
from .platform import FirmwareStatus
from .testing.pair import Pair

PRODUCT = "DEMO000001"
DEMO_PSK = "vX6PQqazsGsMyf5SMfs6OA6y"
"""The public sample key from PROTOCOL.md; the log endpoint verifies signatures made with it."""
FIRMWARE_SIZE = 1024 * 1024


@attrs.frozen
class Check:
    name: str
    passed: bool
    detail: str


@attrs.define
class DemoReport:
    devices: int
    broker: str
    checks: list[Check] = attrs.field(factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)


Progress = Callable[[str, str, int], None]
"""`progress(device, feature, percent)`: for live progress bars."""


@attrs.define
class _App:
    """What one demo device's application saw."""

    logger: logging.Logger
    configs: list[dict[str, Any]] = attrs.Factory(list)
    resources: dict[str, bytes] = attrs.Factory(dict)
    uploads: list[tuple[str, bool, int, str]] = attrs.Factory(list)
    installed: list[tuple[str, str]] = attrs.Factory(list)
    """(version, md5 of the image) for each burn."""
    broadcasts: list[bytes] = attrs.Factory(list)
    deltas: list[dict[str, Any]] = attrs.Factory(list)

    def burn(self, image: Path, version: str) -> None:
        self.installed.append((version, hashlib.md5(image.read_bytes()).hexdigest()))

    def rrpc(self, payload: bytes, process_id: str) -> bytes:
        """An RRPC handler: answers `{"uptime": …}` to `{"ask": "uptime"}`, an error else."""
        asked = json.loads(payload) if payload.startswith(b"{") else {}
        if asked == {"ask": "uptime"}:
            return json.dumps({"uptime": 42, "process_id": process_id}).encode()
        return b'{"error":"unknown request"}'

    def shadow_delta(self, delta: dict[str, Any]) -> None:
        self.deltas.append(delta)  # applied: None reports the delta as it is


def run_demo(
    devices: int = 3,
    broker_url: str | None = None,
    on_check: Callable[[Check], None] | None = None,
    on_progress: Progress | None = None,
    *,
    web: WebDemo | None = None,
    on_web: Callable[[WebDemo], None] | None = None,
) -> DemoReport:
    """Run the scenario and return every check's outcome.

    With `web`, the platform also serves the API and the console (`on_web` is told where, before
    the devices start, so a browser opened at once sees every step), and the fleet keeps running
    after the checks until `web` says stop."""
    report = DemoReport(devices, broker_url or "memory")

    def check(name: str, passed: bool, detail: str) -> None:
        report.checks.append(Check(name, passed, detail))
        if on_check is not None:
            on_check(report.checks[-1])

    def progress(device: str, feature: str, pct: int) -> None:
        if on_progress is not None:
            on_progress(device, feature, pct)

    rng = random.Random(2026)
    with (
        tempfile.TemporaryDirectory(prefix="iotfsm-demo-") as tmp,
        Pair(tmp, product=PRODUCT, broker_url=broker_url) as pair,
    ):
        tracer: Tracer | None = None
        if web is not None:
            web.start(pair)
            tracer = web.device_tracer()
            if on_web is not None:
                on_web(web)
        try:
            _run_scenario(
                pair,
                devices,
                tracer=tracer,
                check=check,
                progress=progress,
                rng=rng,
                root=Path(tmp),
            )
            if web is not None:
                web.hold(pair)
        finally:
            if web is not None:
                web.close()
    return report


def _run_scenario(
    pair: Pair,
    devices: int,
    *,
    tracer: Tracer | None,
    check: Callable[[str, bool, str], None],
    progress: Progress,
    rng: random.Random,
    root: Path,
) -> None:
    platform = pair.platform
    names = [f"demo-{i + 1}" for i in range(devices)]
    apps = {n: _App(logging.getLogger(f"iotfsm.demo.app.{n}")) for n in names}
    fleet: dict[str, Device] = {}
    for name in names:
        app = apps[name]
        app.logger.propagate = False
        fleet[name] = pair.device(
            name,
            version="1.0",
            psk=DEMO_PSK,
            logger=app.logger,
            on_config=app.configs.append,
            on_resource=lambda path, res, app=app: app.resources.update({res: path.read_bytes()}),
            on_upload_finished=lambda *outcome, app=app: app.uploads.append(outcome),
            burn=app.burn,
            log_upload=LogUploadOptions(platform.log_url, interval=0.2),
            on_rrpc=app.rrpc,
            on_broadcast=app.broadcasts.append,
            on_shadow_delta=app.shadow_delta,
            on_step=tracer,
        ).start()
    pair.run_until("every device to connect", lambda: all(d.connected for d in fleet.values()))
    pair.run_until(
        "every device to be answered",
        lambda: all(d.state("log_level") == "listening" for d in fleet.values()),
    )

    scenario = _Scenario(pair, fleet, apps, check, progress, rng, root, tracer)
    for step in (
        scenario.log_level,
        scenario.config,
        scenario.ota,
        scenario.upload,
        scenario.download,
        scenario.messaging,
        scenario.campaign,
        scenario.wire,
    ):
        step()


@attrs.define
class _Scenario:
    """The checks, in order; each step leaves the fleet ready for the next."""

    pair: Pair
    fleet: dict[str, Device]
    apps: dict[str, _App]
    check: Callable[[str, bool, str], None]
    progress: Progress
    rng: random.Random
    root: Path
    tracer: Tracer | None = None

    def status(self, name: str) -> FirmwareStatus:
        return self.pair.platform.firmware_status(PRODUCT, name)

    def log_level(self) -> None:
        first = next(iter(self.fleet))
        self.pair.platform.set_log_level(PRODUCT, first, 2)
        self.pair.run_until("level 2 on the device", lambda: self.fleet[first].log_level == 2)
        log = self.apps[first].logger
        log.error("sensor bus error")
        log.warning("battery low")
        log.info("sampled 12 values")
        log.debug("raw frame 0x1f")
        uploader = self.fleet[first].log_uploader
        assert uploader is not None
        uploader.flush()
        logs = self.pair.platform.device_logs
        self.pair.run_until("the log lines", lambda: len(logs(PRODUCT, first)) >= 2)
        levels = sorted({line.level for line in logs(PRODUCT, first)})
        self.check(
            f"log level: platform set 2 on {first}; ERROR and WARNING lines reached the "
            "platform, INFO and DEBUG did not",
            levels == ["ERR", "WRN"],
            f"levels uploaded: {levels}",
        )
        others = [n for n in self.fleet if n != first]
        self.check(
            "log level: the other devices kept level 0",
            all(self.fleet[n].log_level == 0 for n in others),
            f"{len(others)} devices",
        )
        self.progress(first, "log level", 100)

    def config(self) -> None:
        payload = {"baud": 9600, "mode": "demo"}
        self.pair.platform.set_config(PRODUCT, payload)
        apps = self.apps.values()
        self.pair.run_until("the config on every device", lambda: all(a.configs for a in apps))
        self.check(
            "config: a push reached every device's callback exactly once",
            all(a.configs == [payload] for a in apps),
            f"{sum(len(a.configs) for a in apps)} callbacks for {len(self.apps)} devices",
        )
        for name in self.fleet:
            self.progress(name, "config", 100)

    def ota(self) -> None:
        image = self.rng.randbytes(FIRMWARE_SIZE)
        cut = FIRMWARE_SIZE * 2 // 5
        # cut first, offer after: a connected device starts its GET the moment the offer
        # arrives, and a GET that began before `cut_at` would never be cut
        ref = self.pair.platform.publish_image(image)
        self.pair.platform.files.hooks.cut_at(ref.file_id, [cut])
        deployment = self.pair.platform.deploy_firmware(
            PRODUCT, list(self.fleet), "1.1", self.pair.platform.image_path(ref.file_id)
        )

        def done() -> bool:
            for name in self.fleet:
                self.progress(name, "ota", self.status(name).percent)
            return all(self.status(n).state == "succeeded" for n in self.fleet)

        self.pair.run_until("every device to run 1.1", done)
        requests = self.pair.platform.files.hooks.requests()
        resumed = [r.range for r in requests if r.method == "GET" and r.range is not None]
        self.check(
            "ota: a download cut at 40 % resumed from its checkpoint with Range",
            len(resumed) == 1 and str(resumed[0]).startswith(f"bytes={cut}-"),
            f"range requests: {resumed}",
        )
        self.check(
            "ota: every device burned 1.1 (md5 verified), the platform confirmed the version",
            all(a.installed == [("1.1", deployment.md5)] for a in self.apps.values())
            and all(d.version == "1.1" for d in self.fleet.values()),
            f"versions {sorted({d.version for d in self.fleet.values()})}",
        )

    def upload(self) -> None:
        sent: dict[str, bytes] = {}
        for name, device in self.fleet.items():
            data = self.rng.randbytes(256 * 1024)
            path = self.root / f"{name}-capture.bin"
            path.write_bytes(data)
            sent[name] = data
            device.upload(path, "capture.bin")

        def stored() -> bool:
            infos = {u.device: u for u in self.pair.platform.uploads(PRODUCT)}
            for name in self.fleet:
                self.progress(name, "upload", infos[name].percent if name in infos else 0)
            # both sides: the platform stored it, and each device's app heard its outcome (that
            # callback runs on the device's thread a moment after the platform's record)
            return all(
                n in infos and infos[n].stored and infos[n].state == "done" for n in self.fleet
            ) and all(a.uploads for a in self.apps.values())

        self.pair.run_until("every upload stored", stored)
        copies = {u.device: Path(u.path).read_bytes() for u in self.pair.platform.uploads(PRODUCT)}
        self.check(
            "upload: every device's file is stored byte-identical (Content-MD5 checked)",
            all(copies.get(n) == sent[n] for n in self.fleet)
            and all(a.uploads == [("capture.bin", True, 0, "done")] for a in self.apps.values()),
            f"{len(copies)} files of {256 * 1024} bytes",
        )

    def download(self) -> None:
        data = self.rng.randbytes(192 * 1024)
        self.pair.platform.offer_resource(PRODUCT, list(self.fleet), "faces.db", data)

        def delivered() -> bool:
            for name in self.fleet:
                got = "faces.db" in self.apps[name].resources
                self.progress(name, "download", 100 if got else 0)
            records = self.pair.platform.deliveries(PRODUCT)
            return all("faces.db" in a.resources for a in self.apps.values()) and all(
                r.state == "done" for r in records
            )

        self.pair.run_until("every delivery", delivered)
        self.check(
            "download: every device received faces.db byte-identical, done on both sides",
            all(a.resources.get("faces.db") == data for a in self.apps.values()),
            f"{len(data)} bytes to {len(self.fleet)} devices",
        )

    def messaging(self) -> None:
        """RRPC, broadcast and the device shadow (seed 004 §1.2-1.3)."""
        platform = self.pair.platform
        first = next(iter(self.fleet))
        key = DeviceKey(PRODUCT, first)
        ask = b'{"ask":"uptime"}'
        calls = {n: platform.call_async(DeviceKey(PRODUCT, n), ask) for n in self.fleet}
        self.pair.run_until("every RRPC answer", lambda: all(c.done() for c in calls.values()))
        answers = {n: json.loads(c.result()) for n, c in calls.items()}
        issued = {
            n: platform.runtime.session("rrpc", DeviceKey(PRODUCT, n)).ctx.last_id for n in calls
        }
        self.check(
            "rrpc: a call to every device answered on its request's processId",
            all(a == {"uptime": 42, "process_id": str(issued[n])} for n, a in answers.items()),
            f"{len(answers)} answers; processIds (per device) {sorted(set(issued.values()))}",
        )
        sent = platform.broadcast(PRODUCT, b'{"notice":"maintenance at 02:00"}')
        apps = self.apps.values()
        self.pair.run_until("the broadcast", lambda: all(a.broadcasts for a in apps))
        self.check(
            "broadcast: one call reached every device of the product once",
            sent == len(self.fleet)
            and all(a.broadcasts == [b'{"notice":"maintenance at 02:00"}'] for a in apps),
            f"published to {sent} devices",
        )
        platform.set_desired(PRODUCT, first, {"color": "blue"})

        def reported() -> bool:
            doc = platform.shadow(PRODUCT, first)
            state = doc["state"]
            return bool(
                state["reported"].get("color") == "blue"
                and state["delta"] == {}
                # over a real broker the platform's answer reaches the device a moment later
                and self.fleet[first].shadow["version"] == doc["version"]
            )

        self.pair.run_until("the shadow round trip", reported)
        doc = platform.shadow(*key)
        self.check(
            "shadow: desired -> delta -> applied on the device -> reported, no delta left",
            self.apps[first].deltas == [{"color": "blue"}]
            and self.fleet[first].shadow["version"] == doc["version"],
            f"version {doc['version']}, reported {doc['state']['reported']}",
        )
        for name in self.fleet:
            self.progress(name, "messaging", 100)

    def campaign(self) -> None:
        """Two waves on three extra devices: wave 1's burn failure (-5) aborts wave 2."""
        from .machines.campaign import AbortRule

        def broken_burn(image: Path, version: str) -> None:
            raise RuntimeError("flash write error")

        waves = [["camp-1", "camp-bad"], ["camp-2"]]
        extra = {
            n: self.pair.device(
                n,
                version="1.0",
                burn=broken_burn if n == "camp-bad" else None,
                on_step=self.tracer,
            ).start()
            for wave in waves
            for n in wave
        }
        self.pair.run_until(
            "the campaign devices", lambda: all(d.connected for d in extra.values())
        )
        settings = CampaignSettings(abort=(AbortRule(40, min_finished=2, codes=(-5,)),))
        platform = self.pair.platform
        image = self.rng.randbytes(64 * 1024)
        cid = platform.start_campaign(PRODUCT, "1.2", image, waves, settings=settings)
        self.pair.run_until(
            "the campaign to end", lambda: platform.campaign_status(cid).state == "aborted"
        )
        status = platform.campaign_status(cid)
        counts = [(w.succeeded, w.failed, w.pending) for w in status.waves]
        self.check(
            "campaign: wave 1's burn failure (-5) aborted it, wave 2 never started",
            counts == [(1, 1, 0), (0, 0, 1)]
            and extra["camp-1"].version == "1.2"
            and extra["camp-2"].version == "1.0",
            f"(ok, failed, pending) per wave: {counts}; {status.reason}",
        )

    def wire(self) -> None:
        platform = self.pair.platform
        devices = self.fleet.values()
        rejected = platform.runtime.rejected + sum(d.runtime.rejected for d in devices)
        steps = platform.runtime.steps + sum(d.runtime.steps for d in devices)
        self.check(
            "wire: every message decoded on both sides",
            rejected == 0,
            f"{steps} steps, {rejected} messages rejected",
        )
