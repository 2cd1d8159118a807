"""Security: what is followed, what is cut off, what is signed, what is logged, what is trusted.

Already covered elsewhere, and not repeated here (RELIABILITY.md lists them):
`test_http_transfer.py` (only http/https fetched, a redirect to file: refused, at most three
redirects, a server sending more than the size cut off, a body without length read up to the size
only, https verified against a plain listener, signatures kept out of logs and errors),
`test_file_service.py` (expired, forged and extended URLs 403, hostile names, signatures out of
the log), `test_credentials.py` (secrets out of reprs, forged passwords refused),
`test_log_upload.py` (forged log signatures refused), `test_mqtt_transport.py` (a broker
certificate from another CA refused).

Added here: a whole run of every feature over a real Mosquitto with every log record captured
and searched for every secret; file: URLs and redirects to other schemes (or from https down to
http) refused end to end; TLS verified by default against a real TLS server with an untrusted
certificate, for downloads, MQTT and log upload; signed URLs fuzzed; constant-time comparisons.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mqtt_fixtures import mosquitto_broker, mosquitto_tls_broker
from reliability_helpers import PRODUCT, SOAK, World, blob, topics

from iotfsm.adapters.connect import MqttOptions
from iotfsm.adapters.http.file_service import FileService, PostRequest
from iotfsm.adapters.http.log_upload import LogUploader, LogUploadOptions
from iotfsm.adapters.http.transfer import (
    ConnectionLostError,
    UnsupportedUrlError,
    download,
)
from iotfsm.adapters.identity.credentials import DeviceCredentials
from iotfsm.device import Device
from iotfsm.fsm import ManualClock
from iotfsm.fsm.trace import StepRecord
from iotfsm.testing import Mosquitto, Pair, wait_for
from iotfsm.testing.mosquitto import (
    CertificateAuthority,
    ServerCertificate,
    issue_server_certificate,
    make_ca,
)

__all__ = ["mosquitto_broker", "mosquitto_tls_broker"]

PSK = "vX6PQqazsGsMyf5SMfs6OA6y"
NOW = 1_700_000_000.0
MD5_ZERO = "0" * 32


# ---- servers ---------------------------------------------------------------------------------


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class Serve:
    """A handler on 127.0.0.1, plain or TLS, for the duration of a `with` block."""

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], cert: ServerCertificate | None = None
    ) -> None:
        self.server = _Quiet(("127.0.0.1", 0), handler)
        self.scheme = "http"
        if cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert.cert_file, cert.key_file)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> str:
        self.thread.start()
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def answering(body: bytes, *, endless: bool = False) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            if not endless:
                self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(200 if endless else 1):
                    self.wfile.write(body)
            except OSError:
                pass

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def redirecting(location: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", location())
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, ServerCertificate]:
    """A private CA (trusted by nobody by default) and a certificate it issued for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder)
    return ca, issue_server_certificate(ca, folder)


def fetch(url: str, dest: Path, size: int, md5: str, **kw: Any) -> Path:
    return download(
        url, dest / "fw", size=size, md5=md5, identity={"v": "1"}, checkpoint=dest / "ck", **kw
    ).path


# ---- secrets and logs ------------------------------------------------------------------------


class Everything(logging.Handler):
    """Every record of every logger, formatted with its arguments and exception text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def everything() -> Iterator[Everything]:
    root = logging.getLogger()
    handler, level = Everything(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_no_secret_reaches_any_log_in_a_run_of_every_feature(
    mosquitto_broker: Mosquitto, tmp_path: Path, everything: Everything
) -> None:
    """Over a real Mosquitto (so the device logs in with its key), with a step tracer that logs
    every step the way an application might, and a cut download on the way."""
    trace = logging.getLogger("app.trace")
    seen_urls: list[str] = []
    seen_signatures: list[str] = []

    def log_step(record: StepRecord) -> None:
        trace.debug("step %r", record)

    with Pair(tmp_path, product=PRODUCT, broker_url=mosquitto_broker.url, on_step=log_step) as pair:
        files = pair.platform.files
        for method in ("signed_get_url", "signed_put_url"):
            original = getattr(files, method)

            def spy(*args: Any, _original: Any = original) -> str:
                url: str = _original(*args)
                seen_urls.append(url)
                return url

            setattr(files, method, spy)
        handle = pair.platform.logs.handle

        def spy_handle(request: PostRequest) -> Any:
            seen_signatures.append(request.headers.get("x-tc-signature", ""))
            return handle(request)

        files._post_routes["/device/reportlog"] = (spy_handle, 256 * 1024)

        app = logging.getLogger("app.device")
        pair.platform.register_device(PRODUCT, "sec-1", PSK)
        options = LogUploadOptions(pair.platform.log_url, interval=0.05, retry_min=0.05)
        device = pair.device(
            "sec-1", psk=PSK, logger=app, log_upload=options, on_step=log_step
        ).start()
        wait_for("the device to connect", lambda: device.connected)
        pair.platform.set_log_level(PRODUCT, "sec-1", 4)
        pair.run_until("level 4", lambda: device.log_level == 4)
        app.info("the application logs a line that goes up")
        pair.platform.set_config(PRODUCT, {"mode": "secure"})
        image = pair.platform.publish_image(blob(300_000, 5))
        files.hooks.cut_at(image.file_id, [100_000])  # before the offer, so the first GET meets it
        pair.platform.deploy_firmware(
            PRODUCT, ["sec-1"], "2.0", pair.platform.image_path(image.file_id)
        )
        pair.run_until("the firmware", lambda: device.version == "2.0", timeout=30)
        pair.platform.offer_resource(PRODUCT, ["sec-1"], "faces.db", blob(50_000, 6))
        source = tmp_path / "capture.bin"
        source.write_bytes(blob(40_000, 7))
        device.upload(source, "capture.bin")
        pair.run_until(
            "the delivery and the upload",
            lambda: (
                pair.platform.deliveries(PRODUCT, "sec-1")[0].state == "done"
                and any(u.stored for u in pair.platform.uploads(PRODUCT, "sec-1"))
            ),
            timeout=30,
        )
        wait_for(
            "the log lines to arrive", lambda: bool(pair.platform.device_logs(PRODUCT, "sec-1"))
        )
        password = device.runtime.transport.settings.password  # type: ignore[attr-defined]
        url_secret = (pair.platform.data_dir / "url-secret").read_bytes()

    key = base64.b64decode(PSK)
    secrets = {
        "device key": PSK,
        "device key (hex)": key.hex(),
        "MQTT password": password,
        "MQTT password digest": password.split(";")[0],
        "URL secret (hex)": url_secret.hex(),
        "URL secret (base64)": base64.b64encode(url_secret).decode(),
        "log upload key": PSK[:24],
    }
    for i, url in enumerate(seen_urls):
        secrets[f"URL signature {i}"] = url.rsplit("signature=", 1)[1]
    for i, signature in enumerate(seen_signatures):
        secrets[f"log signature {i}"] = signature
    assert len(seen_urls) >= 4 and seen_signatures  # the run did sign things
    text = "\n".join(everything.lines)
    assert "sec-1" in text and "step" in text  # the logs were captured
    leaked = [name for name, secret in secrets.items() if secret and secret in text]
    assert not leaked, f"secrets in the logs: {leaked}"
    credentials = DeviceCredentials(PRODUCT, "sec-1", PSK)
    assert PSK not in repr(credentials) and password not in repr(device.runtime.transport.settings)  # type: ignore[attr-defined]


# ---- what is followed ------------------------------------------------------------------------


def test_a_file_url_is_never_followed_even_with_the_right_size_and_md5(tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "shadow"
    secret.parent.mkdir()
    secret.write_bytes(b"root:$6$not-for-devices\n" * 100)
    md5 = hashlib.md5(secret.read_bytes()).hexdigest()
    size = secret.stat().st_size
    with Serve(redirecting(secret.as_uri)) as base:
        world = World(tmp_path / "w" / "world")
        try:
            device = world.device("victim").start()
            world.drive(until=lambda: True)
            forger = world.broker.connect("forger")
            forger.set_handlers(lambda *a: None, lambda up: None)
            forger.start()
            for i, url in enumerate([secret.as_uri(), f"file://localhost{secret}", f"{base}/fw"]):
                offer = {
                    "type": "update_firmware",
                    "file_size": size,
                    "md5sum": md5,
                    "url": url,
                    "version": f"6.{i}",
                }
                forger.publish(topics("ota", "victim")["down"], json.dumps(offer).encode(), 0)
                world.drive(until=lambda: device.state("ota") == "idle")
            fails = [
                m["report"]
                for m in world.wire("$ota/report/")
                if m["type"] == "report_progress" and m["report"]["progress"]["state"] == "fail"
            ]
            assert [f["version"] for f in fails] == ["6.0", "6.1", "6.2"]
            assert device.version == "1.0"
            copies = [
                p
                for p in device.state_dir.rglob("*")
                if p.is_file() and p.read_bytes() == secret.read_bytes()
            ]
            assert not copies
        finally:
            world.close()


@pytest.mark.parametrize(
    "target",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/fw",
        "gopher://127.0.0.1/",
        "data:,firmware",
        "javascript:alert(1)",
        "//127.0.0.1:1/x",
    ],
)
def test_redirects_to_another_scheme_are_refused(target: str, tmp_path: Path) -> None:
    with Serve(redirecting(lambda: target)) as base:
        if target.startswith("//"):  # scheme-relative: stays http, and the port is closed
            with pytest.raises(ConnectionLostError):
                fetch(f"{base}/fw", tmp_path, 10, MD5_ZERO, timeout=2)
            return
        with pytest.raises(UnsupportedUrlError):
            fetch(f"{base}/fw", tmp_path, 10, MD5_ZERO)
    assert not (tmp_path / "fw").exists()


def test_a_redirect_from_https_down_to_http_is_refused(
    pki: tuple[CertificateAuthority, ServerCertificate], tmp_path: Path
) -> None:
    ca, cert = pki
    body = b"firmware over a downgraded link"
    trust = ssl.create_default_context(cafile=str(ca.cert_file))
    md5 = hashlib.md5(body).hexdigest()
    with Serve(answering(body)) as plain:
        down = Serve(redirecting(lambda: f"{plain}/fw"), cert)
        with down as secure, pytest.raises(UnsupportedUrlError, match="https"):
            fetch(f"{secure}/fw", tmp_path, len(body), md5, ssl_context=trust)
    # upwards is fine: http redirected to https
    target = Serve(answering(body), cert)
    with target as secure, Serve(redirecting(lambda: f"{secure}/fw")) as entry:
        path = fetch(f"{entry}/fw", tmp_path, len(body), md5, ssl_context=trust)
    assert path.read_bytes() == body


def test_a_server_sending_more_than_the_offer_is_cut_off_on_the_device(tmp_path: Path) -> None:
    chunk = blob(10_000, 9)
    size = 25_000
    expected = (chunk * 3)[:size]
    with Serve(answering(chunk, endless=True)) as base:
        world = World(tmp_path / "w" / "world")
        try:
            device = world.device("greedy").start()
            world.drive(until=lambda: True)
            forger = world.broker.connect("forger")
            forger.set_handlers(lambda *a: None, lambda up: None)
            forger.start()
            offer = {
                "type": "update_firmware",
                "file_size": size,
                "md5sum": hashlib.md5(expected).hexdigest(),
                "url": f"{base}/fw",
                "version": "7.0",
            }
            forger.publish(topics("ota", "greedy")["down"], json.dumps(offer).encode(), 0)
            world.drive(until=lambda: device.version == "7.0")
            assert (device.state_dir / "ota" / "firmware-7.0.bin").read_bytes() == expected
        finally:
            world.close()


# ---- TLS is verified by default -------------------------------------------------------------


def test_downloads_verify_tls_by_default(
    pki: tuple[CertificateAuthority, ServerCertificate], tmp_path: Path
) -> None:
    ca, cert = pki
    body = b"signed by a CA nobody trusts"
    md5 = hashlib.md5(body).hexdigest()
    with Serve(answering(body), cert) as secure:
        with pytest.raises(ConnectionLostError, match="not trusted"):
            fetch(f"{secure}/fw", tmp_path, len(body), md5, timeout=5)
        # the same server is fine once its CA is trusted, but not under another host name
        trust = ssl.create_default_context(cafile=str(ca.cert_file))
        assert (
            fetch(f"{secure}/fw", tmp_path, len(body), md5, ssl_context=trust).read_bytes() == body
        )
    other = issue_server_certificate(ca, tmp_path / "other", hosts=("files.example",), name="other")
    with (
        Serve(answering(body), other) as misnamed,
        pytest.raises(ConnectionLostError, match="not trusted"),
    ):
        fetch(f"{misnamed}/fw", tmp_path, len(body), md5, ssl_context=trust, timeout=5)


def test_a_device_does_not_log_in_to_a_broker_it_cannot_verify(
    mosquitto_tls_broker: Mosquitto, tmp_path: Path, everything: Everything
) -> None:
    fast = MqttOptions(backoff_min=0.05, backoff_max=0.2)
    untrusting = Device(
        PRODUCT,
        "tls-1",
        PSK,
        broker=mosquitto_tls_broker.tls_url,
        state_dir=tmp_path / "a",
        mqtt=fast,
    )
    trusting = Device(
        PRODUCT,
        "tls-2",
        PSK,
        broker=mosquitto_tls_broker.tls_url,
        state_dir=tmp_path / "b",
        mqtt=MqttOptions(ca_file=mosquitto_tls_broker.ca_file, backoff_min=0.05, backoff_max=0.2),
    )
    with untrusting, trusting:
        wait_for("the device with the CA to connect", lambda: trusting.connected)
        wait_for(
            "the TLS refusal in the log",
            lambda: any(
                "certificate" in line.lower()
                for line in everything.lines
                if "tls-1" in line or "TLS" in line
            ),
        )
        assert not untrusting.connected


def test_log_upload_verifies_tls_by_default(
    pki: tuple[CertificateAuthority, ServerCertificate],
) -> None:
    ca, cert = pki
    got: list[bytes] = []

    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(self.rfile.read(int(self.headers["Content-Length"])))
            answer = b'{"Response":{"RequestId":"r"}}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with Serve(Endpoint, cert) as secure:
        options = LogUploadOptions(
            f"{secure}/device/reportlog", interval=0.05, retry_min=0.05, retry_max=0.1, timeout=2.0
        )
        untrusting = LogUploader(options, PRODUCT, "l-1", PSK)
        trust = ssl.create_default_context(cafile=str(ca.cert_file))
        trusting = LogUploader(options, PRODUCT, "l-2", PSK, ssl_context=trust)
        try:
            for uploader in (untrusting, trusting):
                uploader.set_remote_level(4)
                uploader.handle(
                    logging.LogRecord("app", logging.ERROR, __file__, 1, "a line", (), None)
                )
            wait_for("the trusting uploader's line", lambda: any(b"l-2" in g for g in got))
            wait_for("a failed attempt of the other", lambda: untrusting.failed_attempts > 0)
            assert not any(b"l-1" in g for g in got)
        finally:
            untrusting.close()
            trusting.close()


# ---- signed URLs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FileService, ManualClock]]:
    clock = ManualClock(NOW)
    with FileService(tmp_path_factory.mktemp("files"), clock=clock) as svc:
        svc.publish_file(b"firmware A", name="fw-a")
        svc.publish_file(b"firmware B", name="fw-b")
        yield svc, clock


def status_of(svc: FileService, method: str, url: str, body: bytes = b"") -> int:
    parts = urlsplit(url)
    host, port = svc.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Length": str(len(body))}
        if method == "PUT":
            headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
        conn.request(method, target, body=body if method == "PUT" else None, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@st.composite
def tampered(draw: st.DrawFn, url: str) -> str:
    """The URL with one change an attacker could make to its path or query."""
    parts = urlsplit(url)
    query = parts.query
    kind = draw(st.sampled_from(["flip", "drop", "extend", "repeat", "path", "append", "case"]))
    if kind == "flip":
        i = draw(st.integers(0, len(query) - 1))
        new = draw(st.sampled_from("0123456789abcdef=&x"))
        if new == query[i]:
            new = "z"
        query = query[:i] + new + query[i + 1 :]
    elif kind == "drop":
        params = query.split("&")
        params.pop(draw(st.integers(0, len(params) - 1)))
        query = "&".join(params)
    elif kind == "extend":
        expires = int(query.split("expires=")[1].split("&")[0])
        query = query.replace(
            f"expires={expires}", f"expires={expires + draw(st.integers(1, 10**6))}"
        )
    elif kind == "repeat":
        query += "&expires=9999999999"
    elif kind == "path":
        return url.replace(
            parts.path, parts.path[:-1] + ("b" if parts.path.endswith("a") else "a"), 1
        )
    elif kind == "append":
        query += "&" + draw(st.sampled_from(["size=1", "md5=" + MD5_ZERO, "signature=00", "x=1"]))
    else:
        query = query.replace("signature=", "SIGNATURE=")
    return url.replace(parts.query, query, 1)


@settings(max_examples=600 if SOAK else 80, deadline=None)
@given(data=st.data())
def test_signed_urls_cannot_be_forged_or_extended(
    service: tuple[FileService, ManualClock], data: st.DataObject
) -> None:
    svc, _ = service
    get_url = svc.signed_get_url("fw-a", 60)
    put_url = svc.signed_put_url("up-1", 5, hashlib.md5(b"hello").hexdigest(), 60)
    method, url = data.draw(st.sampled_from([("GET", get_url), ("PUT", put_url)]))
    bad = data.draw(tampered(url))
    body = b"hello" if method == "PUT" else b""
    status = status_of(svc, method, bad, body)
    unsigned = ("&x=1",) if method == "PUT" else ("&x=1", "&size=1", "&md5=")
    if any(extra in bad for extra in unsigned):  # a parameter the signature does not cover
        assert status == 200
        return
    assert status in (400, 403, 404, 405), (bad, status)


def test_an_expired_url_stays_expired_and_a_valid_one_works(
    service: tuple[FileService, ManualClock],
) -> None:
    svc, clock = service
    url = svc.signed_get_url("fw-b", 30)
    assert status_of(svc, "GET", url) == 200
    clock.advance(31)
    assert status_of(svc, "GET", url) == 403


def test_signature_checks_are_constant_time(
    service: tuple[FileService, ManualClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every check of a signature or password goes through `hmac.compare_digest`."""
    svc, _ = service
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    url = svc.signed_get_url("fw-a", 60)
    assert status_of(svc, "GET", url) == 200
    assert status_of(svc, "GET", url[:-2] + "00") == 403
    assert len(calls) == 2
    credentials = DeviceCredentials(PRODUCT, "dev-1", PSK)
    login = credentials.login()
    assert credentials.verify_password(login.username, login.password)
    assert not credentials.verify_password(login.username, "0" * 64 + ";hmacsha256")
    assert len(calls) >= 4
    before = len(calls)
    world_dir = svc.data_dir.parent / "log-endpoint"
    world = World(world_dir / "world")
    try:
        world.platform.register_device(PRODUCT, "dev-1", PSK)
        uploader = LogUploader(
            LogUploadOptions(world.platform.log_url, interval=0.05),
            PRODUCT,
            "dev-1",
            PSK,
            now=world.clock.now,
        )
        uploader.set_remote_level(4)
        uploader.handle(logging.LogRecord("app", logging.ERROR, __file__, 1, "a line", (), None))
        wait_for("the line", lambda: bool(world.platform.device_logs(PRODUCT, "dev-1")))
        uploader.close()
    finally:
        world.close()
    assert len(calls) > before
