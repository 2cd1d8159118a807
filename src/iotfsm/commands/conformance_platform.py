"""`iotfsm conformance platform`: play a device against any platform and check its answers.

The kit logs in as the device (Tencent's key credentials, the key from `--psk-file` or
$IOTFSM_PSK, never argv; or `--cert` and `--key`), sends what a device sends and checks what comes
back on the device's own topics: every report_version answered with result 0 (a non-zero answer
makes the C SDK ignore every later offer), get_log_level answered with the same clientToken and a
level 0-4, a config get answered with a payload exactly when result is 0, an upload granted a URL
that accepts the PUT with its Content-MD5 and every report answered, and a malformed message
survived.
"""

from __future__ import annotations

import argparse
import hashlib
import queue
import secrets
import tempfile
import time
from pathlib import Path

from ..adapters.codec import Codec, DecodeError
from ..adapters.connect import MqttOptions, transport_for
from ..adapters.http.transfer import TransferError, upload
from ..adapters.topics import Topics
from ..machines import all_features, config, log_level, ota, resources
from ..machines.feature import DeviceKey
from ..machines.messages import Message
from .common import CommandError, add_login_arguments, login_options
from .conformance import Result, ScenarioFailedError, print_results

EXAMPLE = """example:
  iotfsm conformance platform --broker mqtt://127.0.0.1:1883 --product-id S3EUVBRJLB \\
      --device-name dev-1 --psk-file dev-1.psk
"""


class DeviceKit:
    """One device connection: send messages, take the answers as they arrive."""

    def __init__(
        self, broker: str, key: DeviceKey, psk: str | None, options: MqttOptions, timeout: float
    ) -> None:
        self.key, self.timeout = key, timeout
        features = list(all_features())
        self.codec, self.topics = Codec(features), Topics(features)
        self.inbox: queue.Queue[Message | str] = queue.Queue()
        """Answers as they arrive; a string says why one could not be decoded."""
        self.transport = transport_for(broker, key, psk, options)
        self.transport.set_handlers(self._on_message, lambda up: None)
        for topic_filter in self.topics.filters("device", device=key):
            self.transport.subscribe(topic_filter, 1)

    def _on_message(self, topic: str, payload: bytes) -> None:
        route = self.topics.parse(topic)
        try:
            _, message = self.codec.decode_any([f.name for f in route.features], "down", payload)
        except DecodeError as exc:
            self.inbox.put(str(exc))
            return
        self.inbox.put(message)

    def start(self) -> None:
        self.transport.start()
        deadline = time.monotonic() + self.timeout
        while not self.transport.connected:
            if time.monotonic() > deadline:
                raise CommandError(f"cannot log in to the broker within {self.timeout:g} s")
            time.sleep(0.05)

    def send(self, feature: str, message: Message | bytes, qos: int = 1) -> None:
        payload = message if isinstance(message, bytes) else self.codec.encode(message)
        self.transport.publish(self.topics.topic(feature, "up", self.key), payload, qos)

    def expect(self, what: str, kind: type[Message]) -> Message:
        """The next message of `kind` (others are set aside), or a failure naming `what`."""
        deadline = time.monotonic() + self.timeout
        seen: list[str] = []
        while True:
            left = deadline - time.monotonic()
            try:
                message = self.inbox.get(timeout=max(0.0, left))
            except queue.Empty:
                raise ScenarioFailedError(
                    f"no {what} within {self.timeout:g} s (received instead: {seen or 'nothing'})"
                ) from None
            if isinstance(message, str):
                raise ScenarioFailedError(f"an undecodable answer: {message}")
            if isinstance(message, kind):
                return message
            seen.append(type(message).TYPE)


def _report_version(kit: DeviceKit) -> str:
    kit.send("ota", ota.ReportVersion.of("1.0.0"))
    rsp = kit.expect("report_version_rsp", ota.ReportVersionRsp)
    assert isinstance(rsp, ota.ReportVersionRsp)
    if rsp.result_code != 0:
        raise ScenarioFailedError(
            f"report_version_rsp result_code {rsp.result_code} ({rsp.result_msg!r}): must be 0,"
            " the C SDK ignores every later offer after a non-zero answer"
        )
    return "answered result 0"


def _log_level(kit: DeviceKit) -> str:
    token = f"{kit.key.product}-{secrets.randbelow(10**6)}"
    kit.send("log_level", log_level.GetLogLevel(token), 0)
    while True:
        reply = kit.expect("get_log_level reply", log_level.LogLevelReply)
        assert isinstance(reply, log_level.LogLevelReply)
        if reply.client_token == token:
            break
    if reply.result != 0 or reply.log_level not in log_level.LEVELS:
        raise ScenarioFailedError(f"reply result {reply.result}, log_level {reply.log_level}")
    return f"answered level {reply.log_level} with the ask's clientToken"


def _config(kit: DeviceKit) -> str:
    kit.send("config", config.ConfigGet(), 0)
    reply = kit.expect("config reply", config.ConfigReply)
    assert isinstance(reply, config.ConfigReply)
    if (reply.result == config.OK) != (reply.payload is not None):
        raise ScenarioFailedError(
            f"reply result {reply.result} with payload {reply.payload!r}: a payload comes with"
            " result 0 and only then"
        )
    return f"answered result {reply.result}"


def _upload(kit: DeviceKit) -> str:
    data = secrets.token_bytes(4096)
    md5 = hashlib.md5(data).hexdigest()
    name = f"conformance-{secrets.token_hex(3)}.log"
    kit.send("resource_upload", resources.CreateUploadTask(len(data), name, md5))
    rsp = kit.expect("create_upload_task_rsp", resources.CreateUploadTaskRsp)
    assert isinstance(rsp, resources.CreateUploadTaskRsp)
    if (rsp.name, rsp.size, rsp.md5sum.lower()) != (name, len(data), md5) or not rsp.url:
        raise ScenarioFailedError(f"the grant does not match the request: {rsp!r}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            upload(rsp.url, path, md5=md5, size=len(data), timeout=kit.timeout)
        except TransferError as exc:
            raise ScenarioFailedError(f"the PUT to the granted URL failed: {exc}") from None
    progress = resources.ResourceProgress("done")
    kit.send("resource_upload", resources.ReportUploadProgress(name, progress))
    answer = kit.expect("report_upload_progress_rsp", resources.ReportUploadProgressRsp)
    assert isinstance(answer, resources.ReportUploadProgressRsp)
    if answer.result_code != 0:
        raise ScenarioFailedError(f"report_upload_progress_rsp result_code {answer.result_code}")
    return f"granted, PUT {len(data)} bytes with Content-MD5, done report answered"


def _malformed(kit: DeviceKit) -> str:
    kit.send("ota", b'{"type": "report_version", "report": ')
    kit.send("ota", ota.ReportVersion.of("1.0.0"))
    kit.expect("report_version_rsp after a malformed message", ota.ReportVersionRsp)
    return "a truncated JSON message changed nothing: the next report was answered"


SCENARIOS = (
    ("report_version answered 0", _report_version),
    ("get_log_level answered", _log_level),
    ("config get answered", _config),
    ("resource upload granted and answered", _upload),
    ("malformed message survived", _malformed),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    parser.add_argument("--product-id", required=True)
    parser.add_argument("--device-name", required=True)
    parser.add_argument("--tls-ca", type=Path, help="CA file that signed the broker's certificate")
    add_login_arguments(parser, device=True)  # the key from a file or $IOTFSM_PSK, never argv
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per answer")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        options, psk = login_options(args, device=True)
        key = DeviceKey(args.product_id, args.device_name)
        kit = DeviceKit(args.broker, key, psk, options, args.timeout)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    kit.start()
    results = []
    try:
        for name, scenario in SCENARIOS:
            try:
                results.append(Result(name, True, scenario(kit)))
            except ScenarioFailedError as exc:
                results.append(Result(name, False, str(exc)))
    finally:
        kit.transport.stop()
    print_results(results, args.json)
    return 0 if all(r.passed for r in results) else 1
