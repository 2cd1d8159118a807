"""Device log upload to the platform's endpoint over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotfsm.adapters.http.log_endpoint import LogLine
from iotfsm.adapters.http.log_upload import (
    TENCENT_LOG_HOST,
    LogUploader,
    LogUploadOptions,
    level_prefix,
    report_url,
    sign_headers,
)
from iotfsm.adapters.mqtt.memory_broker import MemoryBroker
from iotfsm.device import Device
from iotfsm.fsm import ManualClock
from iotfsm.platform import Platform
from iotfsm.testing.waiting import wait_for

PRODUCT = "S3EUVBRJLB"
PSK = "vX6PQqazsGsMyf5SMfs6OA6y"
NOW = 1_700_000_000.0
FAST = {"interval": 0.05, "retry_min": 0.05, "retry_max": 0.2, "timeout": 2.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class World:
    def __init__(self, tmp_path: Path, port: int = 0) -> None:
        self.tmp_path = tmp_path
        self.clock = ManualClock(NOW)
        self.broker = MemoryBroker(scheduler=self.clock)
        self.platform = Platform(self.broker, clock=self.clock, http_port=port).start()
        self.devices: list[Device] = []

    def device(self, name: str, logger: logging.Logger, **options: Any) -> Device:
        self.platform.register_device(PRODUCT, name, PSK)
        upload = LogUploadOptions(self.platform.log_url, **{**FAST, **options})
        d = Device(
            PRODUCT,
            name,
            PSK,
            broker=self.broker,
            state_dir=self.tmp_path / name,
            clock=self.clock,
            logger=logger,
            log_upload=upload,
        ).start()
        self.devices.append(d)
        return d

    def texts(self, name: str) -> list[str]:
        return [line.text for line in self.platform.device_logs(PRODUCT, name)]

    def close(self) -> None:
        for d in self.devices:
            d.stop()
        self.platform.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


def app_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(f"tests.upload.{name}")
    logger.setLevel(logging.NOTSET)
    logger.propagate = False
    return logger


def log_all_levels(logger: logging.Logger, tag: str) -> None:
    logger.debug("%s debug", tag)
    logger.info("%s info", tag)
    logger.warning("%s warning", tag)
    logger.error("%s error", tag)


def uploader(device: Device) -> LogUploader:
    assert device.log_uploader is not None
    return device.log_uploader


# ---- the level decides what goes ------------------------------------------------------------


def test_level_2_uploads_errors_and_warnings_only(world: World) -> None:
    logger = app_logger("level2")
    device = world.device("dev-1", logger)
    world.platform.set_log_level(PRODUCT, "dev-1", 2)
    assert uploader(device).remote_level == 2

    log_all_levels(logger, "boot")
    assert uploader(device).drain(5.0)

    texts = world.texts("dev-1")
    assert [t[:3] for t in texts] == ["WRN", "ERR"]
    assert texts[0].endswith("|tests.upload.level2|boot warning")
    assert texts[1].endswith("|tests.upload.level2|boot error")
    lines = world.platform.device_logs(PRODUCT, "dev-1")
    assert [(x.seq, x.level, x.received_at) for x in lines] == [(1, "WRN", NOW), (2, "ERR", NOW)]
    assert world.platform.device_logs(PRODUCT, "dev-1", since=1) == lines[1:]


def test_the_handler_itself_filters_by_the_remote_level(world: World) -> None:
    # the device lowers its logger to the remote level; the handler must hold even when another
    # handler of the application keeps the logger at DEBUG
    logger = app_logger("filter")
    device = world.device("dev-2", logger)
    world.platform.set_log_level(PRODUCT, "dev-2", 2)
    logger.setLevel(logging.DEBUG)
    log_all_levels(logger, "x")
    assert uploader(device).drain(5.0)
    assert [t[:3] for t in world.texts("dev-2")] == ["WRN", "ERR"]


def test_level_0_uploads_nothing(world: World) -> None:
    logger = app_logger("level0")
    device = world.device("dev-3", logger)
    assert device.log_level == 0  # the platform answered its default
    logger.setLevel(logging.DEBUG)
    log_all_levels(logger, "quiet")
    logger.critical("even this")
    assert uploader(device).drain(2.0)
    assert world.texts("dev-3") == []
    assert not [r for r in world.platform.files.hooks.requests() if r.method == "POST"]


def test_level_4_uploads_everything_and_followers_see_it(world: World) -> None:
    seen: list[LogLine] = []
    stop = world.platform.follow_logs(seen.append, PRODUCT, "dev-4")
    logger = app_logger("level4")
    device = world.device("dev-4", logger)
    world.platform.set_log_level(PRODUCT, "dev-4", 4)
    log_all_levels(logger, "all")
    assert uploader(device).drain(5.0)
    assert [line.level for line in seen] == ["DBG", "INF", "WRN", "ERR"]
    stop()
    logger.error("after stop")
    assert uploader(device).drain(5.0)
    assert len(seen) == 4
    assert len(world.texts("dev-4")) == 5


# ---- signatures -----------------------------------------------------------------------------


def post(
    world: World, body: bytes, headers: dict[str, str], host: str | None = None
) -> tuple[int, dict[str, Any]]:
    address = world.platform.files.address
    conn = http.client.HTTPConnection(*address, timeout=5)
    try:
        all_headers = {"Content-Type": "application/json", **headers}
        if host is not None:
            all_headers["Host"] = host
        conn.request("POST", "/device/reportlog", body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def body_of(device: str, *lines: str) -> bytes:
    doc = {"ProductId": PRODUCT, "DeviceName": device, "Message": list(lines)}
    return json.dumps(doc, separators=(",", ":")).encode()


def test_a_forged_signature_is_rejected_and_nothing_stored(world: World) -> None:
    world.platform.register_device(PRODUCT, "dev-5", PSK)
    body = body_of("dev-5", "ERRforged")
    forged = sign_headers(
        "AAAAAAAAAAAAAAAAAAAAAAAA",
        "127.0.0.1",
        body,
        algorithm="hmacsha256",
        timestamp=int(NOW),
        nonce=7,
    )
    status, answer = post(world, body, forged)
    assert status == 401
    assert answer["Response"]["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert answer["Response"]["RequestId"]
    assert world.texts("dev-5") == []
    assert world.platform.logs.refused == 1


def test_every_kind_of_bad_request_is_refused_without_storing(world: World) -> None:
    world.platform.register_device(PRODUCT, "dev-6", PSK)
    body = body_of("dev-6", "ERRx")
    good = sign_headers(PSK, "127.0.0.1", body, algorithm="hmacsha256", timestamp=int(NOW), nonce=1)
    stale = sign_headers(
        PSK, "127.0.0.1", body, algorithm="hmacsha256", timestamp=int(NOW) - 301, nonce=2
    )
    unknown_body = body_of("nobody", "ERRx")
    unknown = sign_headers(
        PSK, "127.0.0.1", unknown_body, algorithm="hmacsha256", timestamp=int(NOW), nonce=3
    )
    cases: list[tuple[bytes, dict[str, str], int, str]] = [
        (body, {}, 401, "AuthFailure.MissingParameter"),
        (body, {**good, "X-TC-Signature": ""}, 401, "AuthFailure.MissingParameter"),
        (body, {**good, "X-TC-Algorithm": "md5"}, 401, "AuthFailure.InvalidAlgorithm"),
        (body, {**good, "X-TC-Signature": "%%%"}, 401, "AuthFailure.SignatureFailure"),
        (body, stale, 401, "AuthFailure.SignatureExpire"),
        (body_of("dev-6", "ERRtampered"), good, 401, "AuthFailure.SignatureFailure"),
        (unknown_body, unknown, 401, "AuthFailure.SignatureFailure"),
        (b"[1,2]", good, 400, "InvalidParameter"),
        (
            b'{"ProductId":"S3EUVBRJLB","DeviceName":"dev-6","Message":[1]}',
            good,
            400,
            "InvalidParameter",
        ),
        (
            b'{"ProductId":"S3EUVBRJLB","DeviceName":"../x","Message":[]}',
            good,
            400,
            "InvalidParameter",
        ),
    ]
    for sent, headers, status, code in cases:
        got, answer = post(world, sent, headers)
        assert (got, answer["Response"]["Error"]["Code"]) == (status, code), (sent, headers)
    assert world.texts("dev-6") == []
    assert world.platform.logs.refused == len(cases)


def test_sdk_flavours_and_a_verbatim_retry_are_accepted_once(world: World) -> None:
    world.platform.register_device(PRODUCT, "dev-7", PSK)
    # the C SDK: hmacsha1 over a SHA-1 body digest, the host of the URL without its port
    c_body = body_of("dev-7", "ERRfrom C")
    c_sdk = sign_headers(
        PSK, "127.0.0.1", c_body, algorithm="hmacsha1", timestamp=int(NOW), nonce=-5
    )
    # the Java SDK: hmacsha256, Tencent's gateway host whatever the URL; the docs' header case
    j_body = body_of("dev-7", "INFfrom Java")
    java = sign_headers(
        PSK, TENCENT_LOG_HOST, j_body, algorithm="hmacsha256", timestamp=int(NOW), nonce=9
    )
    java["X-TC-Algorithm"] = "HmacSha256"
    assert post(world, c_body, c_sdk)[0] == 200
    status, answer = post(world, j_body, java)
    assert status == 200 and set(answer["Response"]) == {"RequestId"}
    # a retry of the same request (lost answer) is answered again and stored once
    assert post(world, j_body, java)[0] == 200
    assert world.texts("dev-7") == ["ERRfrom C", "INFfrom Java"]
    # the same nonce and timestamp with another body is a replay
    replay = body_of("dev-7", "ERRreplayed")
    forged = {
        **java,
        "X-TC-Signature": sign_headers(
            PSK, TENCENT_LOG_HOST, replay, algorithm="hmacsha256", timestamp=int(NOW), nonce=9
        )["X-TC-Signature"],
    }
    status, answer = post(world, replay, forged)
    assert (status, answer["Response"]["Error"]["Message"]) == (401, "nonce already used")


def test_signing_matches_the_documented_string_to_sign() -> None:
    body = b'{"DeviceName":"AAAAAA","Message":["INFmqtt connect success."],"ProductId":"G8N9HB"}'
    text = (
        "POST\nap-guangzhou.gateway.tencentdevices.com\n/device/reportlog\n\nhmacsha256\n"
        f"1551000065\n5456\n{hashlib.sha256(body).hexdigest()}"
    )
    expected = base64.b64encode(hmac.new(PSK.encode(), text.encode(), hashlib.sha256).digest())
    headers = sign_headers(
        PSK, TENCENT_LOG_HOST, body, algorithm="hmacsha256", timestamp=1551000065, nonce=5456
    )
    assert headers == {
        "X-TC-Algorithm": "hmacsha256",
        "X-TC-Timestamp": "1551000065",
        "X-TC-Nonce": "5456",
        "X-TC-Signature": expected.decode(),
    }
    # the key is at most the first 24 characters of the secret, as the SDKs cut it
    longer = sign_headers(
        PSK + "extra",
        TENCENT_LOG_HOST,
        body,
        algorithm="hmacsha256",
        timestamp=1551000065,
        nonce=5456,
    )
    assert longer == headers
    sha1_text = text.replace("hmacsha256", "hmacsha1").replace(
        hashlib.sha256(body).hexdigest(), hashlib.sha1(body).hexdigest()
    )
    sha1 = base64.b64encode(hmac.new(PSK.encode(), sha1_text.encode(), hashlib.sha1).digest())
    assert (
        sign_headers(
            PSK, TENCENT_LOG_HOST, body, algorithm="hmacsha1", timestamp=1551000065, nonce=5456
        )["X-TC-Signature"]
        == sha1.decode()
    )


def test_small_helpers(tmp_path: Path) -> None:
    assert [level_prefix(n) for n in (50, 40, 30, 20, 10, 5)] == [
        "ERR",
        "ERR",
        "WRN",
        "INF",
        "DBG",
        "DBG",
    ]
    assert report_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/device/reportlog"
    assert report_url("https://gw.example/") == "https://gw.example/device/reportlog"
    assert report_url("http://gw.example/custom/path") == "http://gw.example/custom/path"
    with pytest.raises(ValueError, match="must be http"):
        report_url("ftp://x")
    with pytest.raises(ValueError, match="interval must be positive"):
        LogUploadOptions("http://x", interval=0)
    with pytest.raises(ValueError, match="needs the device key"):
        Device(PRODUCT, "d", broker=MemoryBroker(), state_dir=tmp_path, log_upload="http://x")


# ---- an unreachable endpoint ----------------------------------------------------------------


def test_lines_wait_for_the_endpoint_and_the_dropped_count_is_reported(tmp_path: Path) -> None:
    world = World(tmp_path, port=free_port())
    try:
        logger = app_logger("offline")
        device = world.device("dev-8", logger, buffer_lines=20, batch_lines=8)
        world.platform.set_log_level(PRODUCT, "dev-8", 1)
        world.platform.files.stop()  # the endpoint goes down
        for n in range(1, 31):
            logger.error("line %02d", n)
        up = uploader(device)
        wait_for("a failed attempt", lambda: up.failed_attempts >= 2, timeout=10)
        assert up.pending <= 20
        assert not up.drain(0.5)
        assert world.texts("dev-8") == []

        world.platform.files.start()  # back, on the same address
        assert up.drain(10.0)

        texts = world.texts("dev-8")
        assert texts[0] == "WRN10 log lines dropped (offline buffer full or refused)"
        assert [t.rsplit("|", 1)[1] for t in texts[1:]] == [f"line {n:02d}" for n in range(11, 31)]
        assert (up.dropped_lines, up.sent_lines) == (10, 21)
    finally:
        world.close()


def test_logging_never_waits_for_a_stuck_endpoint(tmp_path: Path) -> None:
    # a listener that never answers: every upload hangs until its timeout
    with socket.socket() as stuck:
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(100)
        url = f"http://127.0.0.1:{stuck.getsockname()[1]}"
        options = LogUploadOptions(
            url, interval=0.01, timeout=1.0, close_timeout=0.2, buffer_lines=50
        )
        handler = LogUploader(options, PRODUCT, "dev-9", PSK)
        handler.set_remote_level(4)
        logger = app_logger("stuck")
        logger.addHandler(handler)
        try:
            logger.error("first")  # the sender takes it and hangs on the request
            wait_for("the sender to be stuck", lambda: handler.sending and handler.pending == 1)
            started = time.monotonic()
            for n in range(1000):
                logger.error("line %d", n)
            assert time.monotonic() - started < 1.0
            assert handler.dropped_lines == 1000 - 50
        finally:
            logger.removeHandler(handler)
            started = time.monotonic()
            handler.close()
            assert time.monotonic() - started < 3.0


def test_a_refused_batch_is_dropped_not_retried_forever(world: World) -> None:
    logger = app_logger("refused")
    device = world.device("dev-10", logger)
    world.platform.register_device(PRODUCT, "dev-10", "QUFBQUFBQUFBQUFBQUFBQUFBQUFB")  # key rotated
    world.platform.set_log_level(PRODUCT, "dev-10", 1)
    logger.error("lost")
    up = uploader(device)
    wait_for("the refusal", lambda: up.dropped_lines == 1)
    world.platform.register_device(PRODUCT, "dev-10", PSK)  # key restored
    logger.error("after")
    assert up.drain(5.0)
    texts = world.texts("dev-10")
    assert texts[0].startswith("WRN1 log lines dropped")
    assert texts[1].endswith("|after")
