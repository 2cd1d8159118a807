"""The device's URL policy (issue 15, part 3): trusted bases compared on scheme, host, port and
path prefix; link-local addresses always refused, in every spelling; a refused URL fails the
transfer with -2 before a byte moves, also when it is a redirect target or an upload."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from firmware_attacker import AttackerServer, attacker, forged_offer
from hypothesis import given, settings
from hypothesis import strategies as st

from iotfsm.adapters.http.url_policy import (
    UrlPolicy,
    ip_literal,
    is_link_local,
    parse_base,
    url_problem,
)
from iotfsm.adapters.transfer_runner import TransferRunner
from iotfsm.fsm.events import Event
from iotfsm.machines.transfer import StartUpload, TransferFailed
from iotfsm.testing import Pair, wait_for

BASE = "http://good.example/fw"
POLICY = UrlPolicy([BASE], resolve=lambda host, port: [])
IMAGE = b"attacker's image " * 1000
PRODUCT = "URLS000001"


@pytest.mark.parametrize(
    "url",
    [
        "http://good.example/fw/a.bin?expires=1&signature=x",
        "http://good.example/fw",
        "http://good.example/fw/",
        "http://GOOD.EXAMPLE/fw/a.bin",
        "http://good.example./fw/a.bin",
        "http://good.example:80/fw/a.bin",
        "http://good.example/fw/sub/dir/a.bin",
    ],
)
def test_urls_under_the_base_are_admitted(url: str) -> None:
    assert POLICY.problem(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://good.example.evil/fw/a.bin",
        "http://evil.good.example/fw/a.bin",
        "http://good.examplex/fw/a.bin",
        "http://good.example/fwx/a.bin",
        "http://good.example/f",
        "http://good.example/",
        "http://good.example/FW/a.bin",
        "https://good.example/fw/a.bin",
        "http://good.example:8080/fw/a.bin",
        "http://good.example:443/fw/a.bin",
        "http://good.example/fw/../x",
        "http://good.example/fw/./../x",
        "http://good.example/fw/..",
        "http://good.example/fw/%2e%2e/x",
        "http://good.example/fw/%2E%2e/x",
        "http://good.example/fw/%252e%252e/x",
        "http://good.example/fw/..%2fx",
        "http://good.example/fw%2f..%2fx",
        "http://good.example/fw/%5c../x",
        "http://good.example/fw\\..\\x",
        "http://good.example\\@evil.example/fw/a",
        "http://evil.example\\@good.example/fw/a",
        "http://good.example@evil.example/fw/a",
        "http://user:pw@good.example/fw/a",
        "http://good.example/fw/a b",
        "http://good.example/fw/a\r\nHost: evil",
        "http://good.example:99999/fw/a",
        "ftp://good.example/fw/a",
        "file:///fw/a",
        "//good.example/fw/a",
        "good.example/fw/a",
        "",
    ],
)
def test_tricks_around_the_base_are_refused(url: str) -> None:
    assert POLICY.problem(url) is not None


LINK_LOCAL = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.0.1:8080/x",
    "http://[fe80::1]/x",
    "http://[FE80::abcd]/x",
    "http://[febf::1]/x",
    "http://[fe80::1%25eth0]/x",
    "http://[::ffff:169.254.169.254]/x",
    "http://[::ffff:a9fe:a9fe]/x",
    "http://[64:ff9b::a9fe:a9fe]/x",
    "http://[2002:a9fe:a9fe::]/x",
    "http://[::169.254.169.254]/x",
    "http://2852039166/x",
    "http://0xa9fea9fe/x",
    "http://0251.0376.0251.0376/x",
    "http://169.254.43518/x",
    "http://0xa9.0xfe.0xa9.0xfe/x",
    "http://169.254.169.254./x",
    "https://169.254.169.254/x",
]


@pytest.mark.parametrize("url", LINK_LOCAL)
def test_link_local_is_refused_with_and_without_bases(url: str) -> None:
    assert "link-local" in (url_problem(url) or "")
    assert UrlPolicy(resolve=lambda h, p: []).problem(url) is not None
    parts = urlsplit(url)
    with pytest.raises(ValueError, match="link-local"):  # not even as a trusted base
        parse_base(f"{parts.scheme}://{parts.netloc}/")


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "10.0.0.1", "[::1]", "[fec0::1]", "169.253.255.255", "169.255.0.1"]
)
def test_neighbours_of_link_local_are_not_refused_by_that_rule(host: str) -> None:
    assert url_problem(f"http://{host}/x") is None


def test_a_host_name_resolving_to_link_local_is_refused() -> None:
    policy = UrlPolicy(resolve=lambda host, port: ["10.0.0.1", "169.254.169.254"])
    assert "resolves to the link-local" in (policy.problem("http://metadata.example/x") or "")
    v6 = UrlPolicy(resolve=lambda host, port: ["fe80::1%2"])
    assert v6.problem("http://metadata.example/x") is not None
    assert UrlPolicy(resolve=lambda host, port: ["10.0.0.1"]).problem("http://a.example/") is None


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ("ftp://x/", "only http and https"),
        ("http:///fw", "no host"),
        ("http://x/fw?a=1", "query or fragment"),
        ("http://x/fw#a", "query or fragment"),
        ("http://169.254.169.254/", "link-local"),
        ("http://u@x/", "user information"),
        ("http://x/fw/../y", "'..'"),
    ],
)
def test_bad_bases_are_refused_with_a_clear_error(base: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_base(base)


def test_a_base_is_compared_by_its_effective_port_and_canonical_address() -> None:
    policy = UrlPolicy(["https://[0:0::1]/fw/"], resolve=lambda h, p: [])
    assert policy.problem("https://[::1]:443/fw/a") is None
    assert policy.problem("http://[::1]/fw/a") is not None
    assert UrlPolicy(["http://127.0.0.1/fw"]).problem("http://2130706433/fw/a") is None


SEGMENT = st.text(alphabet="abc.%2e/\\", min_size=0, max_size=12)


@settings(max_examples=400, deadline=None)
@given(SEGMENT, SEGMENT)
def test_no_generated_path_escapes_the_base(before: str, after: str) -> None:
    """Whatever the path, an admitted URL's path starts at the base and holds no dot segment,
    however encoded, so no server that decodes once or twice reads it as outside the base."""
    url = f"http://good.example/fw/{before}/{after}"
    if POLICY.problem(url) is None:
        path = url[len("http://good.example") :]
        assert path.startswith("/fw/")
        for text in (path, unquote(path), unquote(unquote(path))):
            assert ".." not in text.split("/") and "." not in text.split("/")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=20))
def test_no_generated_host_but_the_base_s_is_admitted(host: str) -> None:
    admitted = POLICY.problem(f"http://{host}/fw/a.bin") is None
    assert admitted == (host.rstrip(".").lower() == "good.example")


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_ipv4_spelling_of_a_link_local_address_is_seen(number: int) -> None:
    address = ip_literal(str(number))
    assert address is not None and int(address) == number
    mapped = ip_literal(f"::ffff:{address}")
    assert mapped is not None
    assert is_link_local(address) == is_link_local(mapped) == (number >> 16 == 0xA9FE)


# ---- on the device --------------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with Pair(tmp_path, product=PRODUCT) as p:
        yield p


@pytest.fixture
def evil() -> Iterator[AttackerServer]:
    yield from attacker(IMAGE, redirect_to="http://169.254.169.254/latest/meta-data/")


def _fail_codes(pair: Pair) -> list[str]:
    return [
        m["report"]["progress"]["result_code"]
        for m in pair.wire("$ota/report/")
        if m["type"] == "report_progress" and m["report"]["progress"]["state"] == "fail"
    ]


def _forge(pair: Pair, device: str, url: str, version: str = "6.6") -> None:
    client = pair.broker.connect("attacker")
    client.set_handlers(lambda topic, data: None, lambda up: None)
    client.start()
    client.publish(f"$ota/update/{PRODUCT}/{device}", forged_offer(IMAGE, url, version), 0)


def test_a_device_with_trusted_bases_fetches_nothing_elsewhere_and_installs_from_them(
    pair: Pair, evil: AttackerServer
) -> None:
    base = f"{pair.platform.files.public_base}/files/"
    dev = pair.device("dev-1", "0.1", trusted_url_bases=[base]).start()
    pair.run_until("the device to be idle", lambda: dev.state("ota") == "idle")
    _forge(pair, "dev-1", f"{evil.base}/fw.bin")
    pair.run_until("the fail report", lambda: "-2" in _fail_codes(pair))
    assert evil.requests == []
    assert dev.version == "0.1"
    assert not (dev.state_dir / "ota" / "firmware" / "data").exists()
    pair.platform.deploy_firmware(PRODUCT, ["dev-1"], "0.2", IMAGE)
    pair.run_until("the device to run 0.2", lambda: dev.version == "0.2")


@pytest.mark.parametrize("path", ["/redirect", None])
def test_link_local_is_refused_without_bases_also_behind_a_redirect(
    pair: Pair, evil: AttackerServer, path: str | None
) -> None:
    dev = pair.device("dev-1", "0.1").start()
    pair.run_until("the device to be idle", lambda: dev.state("ota") == "idle")
    url = f"{evil.base}{path}" if path else "http://169.254.169.254/latest/meta-data/"
    _forge(pair, "dev-1", url)
    pair.run_until("the fail report", lambda: "-2" in _fail_codes(pair))
    assert evil.requests == (["/redirect"] if path else [])
    assert dev.version == "0.1"


def test_an_upload_to_a_url_outside_the_bases_sends_nothing(
    tmp_path: Path, evil: AttackerServer
) -> None:
    runner = TransferRunner(tmp_path, url_check=UrlPolicy(["http://good.example/"]).check)
    source = tmp_path / "secret.bin"
    source.write_bytes(b"device data")
    md5 = hashlib.md5(b"device data").hexdigest()
    seen: list[Event] = []
    done = threading.Event()

    def post(event: Event) -> None:
        seen.append(event)
        done.set()

    runner.start_upload(StartUpload(1, f"{evil.base}/up", str(source), 11, md5), post)
    wait_for("the upload outcome", done.is_set)
    runner.stop()
    assert isinstance(seen[0], TransferFailed) and seen[0].code == -2
    assert "under none of the trusted bases" in seen[0].reason
    assert evil.requests == []
