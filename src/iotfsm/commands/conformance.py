"""`iotfsm conformance device`: play the platform against any device and check the protocol.

The kit is a real `Platform` (MQTT, the HTTP file service with its fault hooks) that walks a
device through the scenarios the declarations imply, one after the other, and prints a
pass/fail table; under a failed scenario, the last messages the device sent during it. The
device may be anything that speaks the protocol: `iotfsm device`, or firmware on Tencent's C
SDK pointed at the same broker. Start the kit first, then (re)start the device: the first
scenario waits for the report a device sends after it connects.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from ..machines import ota
from ..machines.feature import DeviceKey
from ..platform import Platform
from .common import check_ca, parse_address, wait_connected

EXAMPLE = """example:
  iotfsm conformance device --broker mqtt://127.0.0.1:1883 --product-id S3EUVBRJLB \\
      --device-name dev-1
"""

WRONG_MD5 = "0" * 32


@attrs.frozen
class Result:
    name: str
    passed: bool
    detail: str
    messages: tuple[str, ...] = ()
    """For a failed scenario, the last messages the device sent during it (topic and payload):
    where the protocol broke."""


class ScenarioFailedError(Exception):
    """A scenario's expectation did not hold; the message says what the device did instead."""


SHOWN = 8
"""Messages of the device shown under a failed scenario (the last ones it sent during it)."""
SHOWN_BYTES = 300
"""Of each message's payload."""


class Kit:
    """The platform side of the scenarios, against one device."""

    def __init__(self, platform: Platform, key: DeviceKey, timeout: float, size: int) -> None:
        self.platform, self.key, self.timeout, self.size = platform, key, timeout, size
        self._releases = 0
        self.heard: list[tuple[str, bytes]] = []
        """Every (topic, payload) the platform received since `listen`, in order."""

    def listen(self) -> None:
        """Keep a copy of every message the platform's runtime receives (then steps as usual)."""
        runtime = self.platform.runtime
        deliver = runtime.on_message

        def tap(topic: str, payload: bytes) -> None:
            self.heard.append((topic, payload))
            deliver(topic, payload)

        runtime.transport.set_handlers(tap, runtime.on_connection)

    def said(self, since: int) -> tuple[str, ...]:
        """The last messages heard after the first `since`, one line each, payloads cut short."""
        shown = []
        for topic, payload in self.heard[since:][-SHOWN:]:
            text = payload[:SHOWN_BYTES].decode("utf-8", "replace")
            cut = " ..." if len(payload) > SHOWN_BYTES else ""
            shown.append(f"{topic}  {text}{cut}")
        return tuple(shown)

    def wait(self, what: str, predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise ScenarioFailedError(f"no {what} within {self.timeout:g} s; {self.status()}")
            time.sleep(0.05)

    def status(self) -> str:
        s = self.platform.firmware_status(*self.key)
        return (
            f"ota: {s.state}, reported {s.reported!r}, target {s.target!r}, {s.percent} %,"
            f" result {s.result_code} {s.result_msg!r}"
        )

    def image(self) -> tuple[str, bytes]:
        self._releases += 1
        return f"conformance-{self._releases}", secrets.token_bytes(self.size)

    def deploy(self, version: str, data: bytes) -> str:
        """Serve the image and offer it; returns its file id (for the file service's hooks)."""
        self.platform.deploy_firmware(self.key.product, [self.key.device], version, data)
        return f"fw-{hashlib.md5(data).hexdigest()}"

    def succeeded(self, version: str) -> None:
        def done() -> bool:
            s = self.platform.firmware_status(*self.key)
            return s.state == "succeeded" and s.reported == version

        self.wait(f"report of version {version}", done)

    def fails_with(self, code: int, offer: Callable[[], object]) -> None:
        """Offer, and wait for the device's fail report with `code`; then drop the task."""
        offer()
        try:
            self.wait(
                f"report_progress fail with result_code {code}",
                lambda: self.platform.firmware_status(*self.key).result_code == code,
            )
        finally:
            self.platform.cancel_firmware(*self.key)

    def gets(self, path: str) -> list[tuple[str | None, int]]:
        return [(r.range, r.status) for r in self.platform.files.hooks.requests() if r.name == path]


def _reports_version(kit: Kit) -> str:
    kit.wait("report_version", lambda: bool(kit.platform.firmware_status(*kit.key).reported))
    return f"reported {kit.platform.firmware_status(*kit.key).reported!r} and got its answer"


def _ota_done(kit: Kit) -> str:
    version, data = kit.image()
    kit.deploy(version, data)
    kit.succeeded(version)
    return f"{version}: downloaded, burnt, reported done and the new version"


def _range_resume(kit: Kit) -> str:
    version, data = kit.image()
    file_id = f"fw-{hashlib.md5(data).hexdigest()}"
    kit.platform.files.publish_file(data, name=file_id)
    kit.platform.files.hooks.cut_after(file_id, len(data) // 3)
    kit.deploy(version, data)
    kit.succeeded(version)
    resumed = [(r, s) for r, s in kit.gets(file_id) if r and not r.startswith("bytes=0-")]
    if not resumed or any(status != 206 for _, status in resumed):
        raise ScenarioFailedError(f"no resumed GET with Range after the cut: {kit.gets(file_id)}")
    return f"cut at {len(data) // 3} bytes, resumed with {resumed[0][0]} (206)"


def _range_ignored(kit: Kit) -> str:
    version, data = kit.image()
    file_id = f"fw-{hashlib.md5(data).hexdigest()}"
    kit.platform.files.publish_file(data, name=file_id)
    hooks = kit.platform.files.hooks
    hooks.cut_after(file_id, len(data) // 3)
    hooks.ignore_range = True
    try:
        kit.deploy(version, data)
        kit.succeeded(version)
    finally:
        hooks.ignore_range = False
    gets = kit.gets(file_id)
    answered_whole = [i for i, (r, status) in enumerate(gets) if r and status == 200]
    if not answered_whole:
        raise ScenarioFailedError(f"the device never asked for a Range after the cut: {gets}")
    if len(gets) > answered_whole[0] + 1:
        # A device that keeps the 200's body as the whole file is done after that request;
        # one that appended it to the partial fails the md5 and must fetch it all again.
        raise ScenarioFailedError(
            f"after the 200 to its Range request the image was not usable (the device fetched"
            f" it again: {gets}); a 200 must replace the partial file, never extend it"
        )
    return "asked for a Range, got 200 with the whole file, started over: done"


def _wrong_md5(kit: Kit) -> str:
    version, data = kit.image()
    ref = kit.platform.files.publish_file(data, name=f"fw-{hashlib.md5(data).hexdigest()}")
    deploy = ota.DeployFirmware(version, ref.file_id, ref.size, WRONG_MD5)
    kit.fails_with(-4, lambda: kit.platform.runtime.post("ota", kit.key, deploy))
    return "an image whose md5 differs from the offer's was reported fail -4"


def _not_found(kit: Kit) -> str:
    deploy = ota.DeployFirmware("conformance-404", "fw-missing", 1024, WRONG_MD5)
    kit.fails_with(-2, lambda: kit.platform.runtime.post("ota", kit.key, deploy))
    return "a 404 was reported fail -2"


def _expired(kit: Kit) -> str:
    version, data = kit.image()
    ttl, kit.platform.url_ttl = kit.platform.url_ttl, -60.0
    try:
        kit.fails_with(-3, lambda: kit.deploy(version, data))
    finally:
        kit.platform.url_ttl = ttl
    return "an expired signed URL (403) was reported fail -3"


def _resource(kit: Kit) -> str:
    data = secrets.token_bytes(kit.size)
    kit.platform.offer_resource(kit.key.product, [kit.key.device], "conformance.bin", data)

    def delivered() -> bool:
        found = kit.platform.deliveries(*kit.key)
        return any(d.name == "conformance.bin" and d.state == "done" for d in found)

    kit.wait("report_download_progress done for conformance.bin", delivered)
    return "a pushed download task was fetched and reported done"


def _asked(kit: Kit, feature: str) -> bool:
    return kit.key in kit.platform.runtime.sessions[feature]


def _log_level(kit: Kit) -> str:
    kit.wait("get_log_level", lambda: _asked(kit, "log_level"))
    kit.platform.set_log_level(*kit.key, 3)
    return "asked get_log_level after connecting; level 3 pushed"


def _config(kit: Kit) -> str:
    kit.wait("config get", lambda: _asked(kit, "config"))
    kit.platform.set_config(kit.key.product, {"conformance": 1})
    kit.wait(
        "config to be served",
        lambda: kit.platform.runtime.session("config", kit.key).state == "serving",
    )
    return "asked for its config after connecting; a new version was pushed"


SCENARIOS: tuple[tuple[str, Callable[[Kit], str]], ...] = (
    ("report_version answered", _reports_version),
    ("log level get", _log_level),
    ("config get and push", _config),
    ("ota offer, download, burn, done", _ota_done),
    ("ota cut download resumes with Range", _range_resume),
    ("ota 200 to a Range request restarts", _range_ignored),
    ("ota wrong md5 reported -4", _wrong_md5),
    ("ota 404 reported -2", _not_found),
    ("ota expired URL reported -3", _expired),
    ("resource offer downloaded, done", _resource),
)


def run_scenarios(kit: Kit, only: set[str] | None = None) -> list[Result]:
    """Every scenario in order; a failure is recorded and the next one runs."""
    results = []
    for name, scenario in SCENARIOS:
        if only and name not in only:
            continue
        since = len(kit.heard)
        try:
            results.append(Result(name, True, scenario(kit)))
        except ScenarioFailedError as exc:
            results.append(Result(name, False, str(exc), kit.said(since)))
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="role", required=True)
    device = sub.add_parser(
        "device",
        help="play the platform against a device",
        description=__doc__.split("\n\n")[0] + "\n\n" + EXAMPLE if __doc__ else EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    device.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    device.add_argument("--product-id", required=True)
    device.add_argument("--device-name", required=True)
    device.add_argument("--tls-ca", type=Path, help="CA file that signed the broker's certificate")
    device.add_argument("--http", default="127.0.0.1:0", help="HOST:PORT of the file service")
    device.add_argument("--public-base", help="base URL the device reaches the file service by")
    device.add_argument("--timeout", type=float, default=90.0, help="seconds per scenario")
    device.add_argument("--size", type=int, default=200_000, help="bytes per test image")
    device.add_argument("--json", action="store_true", help="print the results as JSON")
    device.add_argument(
        "--only",
        action="append",
        choices=[name for name, _ in SCENARIOS],
        metavar="SCENARIO",
        help="run only this scenario (repeatable); default: every scenario",
    )
    device.set_defaults(run=run)

    from . import conformance_platform

    platform = sub.add_parser(
        "platform",
        help="play a device against a platform",
        description=(conformance_platform.__doc__ or "").split("\n\n")[0]
        + "\n\n"
        + conformance_platform.EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conformance_platform.add_arguments(platform)
    platform.set_defaults(run=conformance_platform.run)


def run(args: argparse.Namespace) -> int:
    host, port = parse_address("--http", args.http)
    with tempfile.TemporaryDirectory(prefix="iotfsm-conformance-") as data_dir:
        platform = Platform(
            args.broker,
            data_dir=Path(data_dir),
            http_host=host,
            http_port=port,
            public_base=args.public_base,
            products=[args.product_id],
            mqtt=check_ca(args.tls_ca),
        )
        # the kit's platform answers the device under test, and only it
        platform.register_device(args.product_id, args.device_name)
        platform.start()
        try:
            transport = platform.runtime.transport
            if not wait_connected(
                lambda: transport.connected, threading.Event(), 15.0, args.broker
            ):
                return 1
            key = DeviceKey(args.product_id, args.device_name)
            kit = Kit(platform, key, args.timeout, args.size)
            kit.listen()
            sys.stderr.write("conformance kit ready: (re)start the device now\n")
            sys.stderr.flush()
            results = run_scenarios(kit, set(args.only or ()))
        finally:
            platform.stop()
    print_results(results, args.json)
    return 0 if all(r.passed for r in results) else 1


def print_results(results: list[Result], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps([attrs.asdict(r) for r in results], indent=2) + "\n")
        return
    width = max(len(r.name) for r in results)
    for r in results:
        sys.stdout.write(f"{r.name:<{width}}  {'pass' if r.passed else 'FAIL'}  {r.detail}\n")
        if r.messages:
            sys.stdout.write(f"{'':<{width}}        the device's last messages in it:\n")
        for message in r.messages:
            sys.stdout.write(f"{'':<{width}}        < {message}\n")
    failed = [r.name for r in results if not r.passed]
    verdict = "all scenarios passed" if not failed else f"FAILED: {', '.join(failed)}"
    sys.stdout.write(verdict + "\n")
