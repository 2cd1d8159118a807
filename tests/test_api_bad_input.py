"""Hostile and malformed calls to the management API: each gets a 4xx with a JSON error that
says what is wrong, and the platform's records are exactly as they were."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from api_fixtures import PRODUCT, ApiWorld, error_of


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    with ApiWorld(tmp_path_factory.mktemp("api-bad")) as w:
        w.platform.register_device(PRODUCT, "dev-1")
        yield w


def _records(world: ApiWorld) -> Any:
    """Every table a call could change (the audit trail aside: refusals are audited)."""
    store = world.platform.store
    tables = ("registry", "api_firmware", "deployments", "campaigns", "deliveries", "configs")
    return {t: store.items(t) for t in tables}, world.platform.campaigns.ids()


JSON = {"content-type": "application/json"}


Refusal = tuple[str, str, bytes, dict[str, str], int, str]
"""method, path, body, headers, expected status, expected error code"""


@pytest.mark.parametrize(
    "refusal",
    [
        ("POST", "/devices", b"{not json", JSON, 400, "bad_request"),
        ("POST", "/devices", b"[1, 2]", JSON, 400, "bad_request"),
        ("POST", "/devices", b'{"product": "P", "device": NaN}', JSON, 400, "bad_request"),
        ("POST", "/devices", b"\xff\xfe", JSON, 400, "bad_request"),
        ("POST", "/devices", b'{"product": "API0000001"}', JSON, 400, "bad_request"),
        (
            "POST",
            "/devices",
            b'{"product": "API0000001", "device": "d", "admin": true}',
            JSON,
            400,
            "bad_request",
        ),
        ("POST", "/devices", b'{"product": 7, "device": "d"}', JSON, 400, "bad_request"),
        (
            "POST",
            "/devices",
            b'{"product": "API0000001", "device": "d", "auth": "root"}',
            JSON,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/devices",
            b'{"product": "API0000001", "device": "../../etc"}',
            JSON,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/devices",
            b'{"product": "API0000001", "device": "a/b/#"}',
            JSON,
            400,
            "bad_request",
        ),
        ("POST", "/devices", b'{"product": "x", "device": "d"}', {}, 415, "unsupported_media_type"),
        ("PUT", "/devices/API0000001/dev-1/log-level", b'{"level": "4"}', JSON, 400, "bad_request"),
        (
            "PUT",
            "/devices/API0000001/dev-1/log-level",
            b'{"level": true}',
            JSON,
            400,
            "bad_request",
        ),
        ("PUT", "/devices/API0000001/dev-1/log-level", b'{"level": 9}', JSON, 400, "bad_request"),
        ("PUT", "/devices/API0000001/ghost/log-level", b'{"level": 1}', JSON, 404, "not_found"),
        ("PUT", "/products/API0000001/config", b'{"payload": [1]}', JSON, 400, "bad_request"),
        ("PUT", "/products/API0000001/config", b'{"payload": "x"}', JSON, 400, "bad_request"),
        ("PUT", "/products/bad%2Fname/config", b'{"payload": {}}', JSON, 404, "not_found"),
        ("PUT", "/products/b%20d/config", b'{"payload": {}}', JSON, 400, "bad_request"),
        (
            "POST",
            "/deployments",
            b'{"product": "API0000001", "version": "9.9", "devices": ["dev-1"]}',
            JSON,
            404,
            "not_found",
        ),
        (
            "POST",
            "/deployments",
            b'{"product": "API0000001", "version": "9.9", "devices": "everyone"}',
            JSON,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/campaigns",
            b'{"product": "API0000001", "version": "9.9", "waves": "dev-1"}',
            JSON,
            400,
            "bad_request",
        ),
        ("POST", "/campaigns/c-none/pause", b"", {}, 404, "not_found"),
        (
            "PUT",
            "/firmware/API0000001/1.0",
            b"abc",
            {"content-type": "text/plain"},
            415,
            "unsupported_media_type",
        ),
        (
            "PUT",
            "/firmware/API0000001/1.0",
            b"",
            {"content-type": "application/octet-stream"},
            400,
            "bad_request",
        ),
        (
            "PUT",
            "/firmware/API0000001/%00",
            b"a",
            {"content-type": "application/octet-stream"},
            400,
            "bad_request",
        ),
        (
            "PUT",
            "/resources/API0000001/.secret?device=dev-1",
            b"a",
            {"content-type": "application/octet-stream"},
            400,
            "bad_request",
        ),
        (
            "PUT",
            "/resources/API0000001/r.bin?device=ghost",
            b"a",
            {"content-type": "application/octet-stream"},
            404,
            "not_found",
        ),
        ("GET", "/devices?limit=0", b"", {}, 400, "bad_request"),
        ("GET", "/devices?limit=abc", b"", {}, 400, "bad_request"),
        ("GET", "/devices?offset=-1", b"", {}, 400, "bad_request"),
        ("GET", "/devices?enabled=yes", b"", {}, 400, "bad_request"),
        ("GET", "/devices?feature=nope", b"", {}, 400, "bad_request"),
        ("GET", "/devices?product=a&product=b", b"", {}, 400, "bad_request"),
        ("GET", "/devices?stat=idle", b"", {}, 400, "bad_request"),
        ("GET", "/firmware?product=", b"", {}, 400, "bad_request"),
        ("GET", "/nowhere", b"", {}, 404, "not_found"),
        ("PATCH", "/devices", b"", {}, 405, "method_not_allowed"),
    ],
)
def test_refused_with_a_json_error_and_nothing_changes(world: ApiWorld, refusal: Refusal) -> None:
    method, path, content, headers, status, code = refusal
    before = _records(world)
    answer = world.http.request(method, path, content=content, headers=headers)
    assert answer.status_code == status, answer.text
    assert error_of(answer)["code"] == code
    assert _records(world) == before


def test_huge_bodies_are_refused_before_they_are_read(world: ApiWorld) -> None:
    before = _records(world)
    big = b'{"product": "' + b"A" * (70 * 1024) + b'", "device": "d"}'
    answer = world.http.post("/devices", content=big, headers=JSON)
    assert answer.status_code == 413 and error_of(answer)["code"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        yield b'{"product": "'
        for _ in range(100):
            yield b"A" * 1024

    streamed = world.http.post("/devices", content=chunks(), headers=JSON)
    assert streamed.status_code == 413
    image = b"x" * (1024 * 1024 + 1)  # this world's --api-max-image is 1 MiB
    octets = {"content-type": "application/octet-stream"}
    too_big = world.http.put("/firmware/API0000001/2.0", content=image, headers=octets)
    assert too_big.status_code == 413 and error_of(too_big)["code"] == "too_large"
    assert _records(world) == before
    assert not list((world.platform.data_dir / "api-incoming").iterdir())


def test_a_version_names_one_image(world: ApiWorld) -> None:
    octets = {"content-type": "application/octet-stream"}
    first = world.http.put("/firmware/API0000001/3.0", content=b"one image", headers=octets)
    assert first.status_code == 201
    same = world.http.put("/firmware/API0000001/3.0", content=b"one image", headers=octets)
    assert same.status_code == 200 and same.json() == first.json()
    before = _records(world)
    other = world.http.put("/firmware/API0000001/3.0", content=b"another", headers=octets)
    assert other.status_code == 409 and error_of(other)["code"] == "conflict"
    assert _records(world) == before


def test_campaign_windows_are_checked_by_the_platform(world: ApiWorld) -> None:
    octets = {"content-type": "application/octet-stream"}
    assert world.http.put("/firmware/API0000001/4.0", content=b"img", headers=octets).is_success
    body: dict[str, Any] = {
        "product": PRODUCT,
        "version": "4.0",
        "waves": [["dev-1"]],
        "settings": {"daily_windows": [{"start": "22:00", "end": "04:00", "tz": "Mars/Base"}]},
    }
    before = _records(world)
    refused = world.http.post("/campaigns", json=body)
    assert refused.status_code == 422 and "time zone" in error_of(refused)["message"]
    body["settings"]["daily_windows"][0]["start"] = "25:00"
    malformed = world.http.post("/campaigns", json=body)
    assert malformed.status_code == 400 and "start" in error_of(malformed)["message"]
    assert _records(world) == before
    body["settings"]["daily_windows"][0].update(start="22:00", tz="Europe/Berlin")
    body["settings"]["intervals"] = [{"start": 0, "end": 4e9}]
    made = world.http.post("/campaigns", json=body)
    assert made.status_code == 201, made.text
    plan = world.platform.campaigns.context(made.json()["id"]).plan
    assert plan is not None and plan.daily_windows[0].tz == "Europe/Berlin"
