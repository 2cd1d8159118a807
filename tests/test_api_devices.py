"""The device registry through the management API: a real HTTP client against a platform
serving `/api/v1` on 127.0.0.1; pagination and filters done by the server; tokens and scopes;
every change in the audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import PRODUCT, ApiWorld, error_of

from iotfsm.testing import wait_for


@pytest.fixture
def world(tmp_path: Path) -> Iterator[ApiWorld]:
    with ApiWorld(tmp_path) as w:
        yield w


def test_register_list_enable_disable_remove(world: ApiWorld) -> None:
    made = world.http.post("/devices", json={"product": PRODUCT, "device": "dev-1"})
    assert made.status_code == 201, made.text
    assert made.json() == {
        "product": PRODUCT,
        "device": "dev-1",
        "registered": True,
        "enabled": True,
        "auth": "key",
        "last_seen": None,
        "version": "",
        "states": {},
    }
    assert world.platform.registry.get(PRODUCT, "dev-1") is not None
    again = world.http.post("/devices", json={"product": PRODUCT, "device": "dev-1"})
    assert again.status_code == 409 and error_of(again)["code"] == "conflict"

    off = world.http.post(f"/devices/{PRODUCT}/dev-1/disable")
    assert off.status_code == 200 and off.json()["enabled"] is False
    entry = world.platform.registry.get(PRODUCT, "dev-1")
    assert entry is not None and not entry.enabled
    on = world.http.post(f"/devices/{PRODUCT}/dev-1/enable")
    assert on.json()["enabled"] is True

    gone = world.http.delete(f"/devices/{PRODUCT}/dev-1")
    assert gone.status_code == 204
    assert world.platform.registry.get(PRODUCT, "dev-1") is None
    missing = world.http.get(f"/devices/{PRODUCT}/dev-1")
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"


def test_pages_and_filters_are_the_servers(world: ApiWorld) -> None:
    for i in range(23):
        world.platform.register_device(PRODUCT, f"dev-{i:02d}")
    world.platform.register_device("OTHER00001", "dev-x")
    world.platform.registry.disable(PRODUCT, "dev-07")

    first = world.reader.get("/devices", params={"product": PRODUCT, "limit": 10}).json()
    assert (first["total"], first["offset"], first["limit"]) == (23, 0, 10)
    assert [d["device"] for d in first["items"]] == [f"dev-{i:02d}" for i in range(10)]
    last = world.reader.get("/devices", params={"product": PRODUCT, "offset": 20}).json()
    assert [d["device"] for d in last["items"]] == ["dev-20", "dev-21", "dev-22"]

    every = world.reader.get("/devices").json()
    assert every["total"] == 24
    disabled = world.reader.get("/devices", params={"enabled": "false"}).json()
    assert [d["device"] for d in disabled["items"]] == ["dev-07"]
    named = world.reader.get("/devices", params={"q": "-1"}).json()
    assert {d["device"] for d in named["items"]} == {f"dev-1{i}" for i in range(10)}
    assert world.reader.get("/devices", params={"state": "downloading"}).json()["total"] == 0


def test_state_version_and_last_seen_come_from_the_sessions(world: ApiWorld) -> None:
    device = world.device("dev-1", version="1.4").start()
    world.device("dev-2", version="1.4")  # registered, never connects
    wait_for("the report", lambda: world.platform.firmware_status(PRODUCT, "dev-1").reported != "")
    world.settle()
    detail = world.reader.get(f"/devices/{PRODUCT}/dev-1").json()
    assert detail["version"] == "1.4"
    assert detail["states"]["ota"] == "idle"
    assert detail["firmware"]["reported"] == "1.4"
    assert isinstance(detail["last_seen"], float)
    quiet = world.reader.get(f"/devices/{PRODUCT}/dev-2").json()
    assert quiet["last_seen"] is None and quiet["states"] == {}

    by_version = world.reader.get("/devices", params={"version": "1.4"}).json()
    assert [d["device"] for d in by_version["items"]] == ["dev-1"]
    idle = world.reader.get("/devices", params={"state": "idle", "feature": "ota"}).json()
    assert [d["device"] for d in idle["items"]] == ["dev-1"]
    overview = world.reader.get("/overview").json()
    assert overview["devices"] == 2 and overview["by_version"] == {"1.4": 1, "": 1}
    assert overview["online_recently"] == 1
    device.stop()


def test_tokens_scopes_and_the_audit_trail(world: ApiWorld) -> None:
    no_token = world.anonymous.get("/devices")
    assert no_token.status_code == 401 and error_of(no_token)["code"] == "unauthorized"
    wrong = world.anonymous.get("/devices", headers={"Authorization": "Bearer iotfsm_nope"})
    assert wrong.status_code == 401
    basic = world.anonymous.get("/devices", headers={"Authorization": "Basic b3BzOm9wcw=="})
    assert basic.status_code == 401

    refused = world.reader.post("/devices", json={"product": PRODUCT, "device": "dev-9"})
    assert refused.status_code == 403 and error_of(refused)["code"] == "forbidden"
    assert world.platform.registry.get(PRODUCT, "dev-9") is None
    assert world.reader.get("/devices").status_code == 200

    world.http.post("/devices", json={"product": PRODUCT, "device": "dev-9"})
    trail = world.reader.get("/audit").json()["items"]
    assert [(e["token"], e["method"], e["path"], e["status"]) for e in trail] == [
        ("ops", "POST", "/api/v1/devices", 201),
        ("viewer", "POST", "/api/v1/devices", 403),
    ]
    assert trail[0]["result"] == "ok"

    world.api.ctx.tokens.revoke("ops")
    world.api.ctx.tokens._read_at = float("-inf")  # as if the second passed
    assert world.http.get("/devices").status_code == 401


def test_tokens_are_kept_hashed(world: ApiWorld) -> None:
    stored = world.platform.store.items("api_tokens")
    text = repr(stored)
    assert world.write_token not in text and world.read_token not in text
    assert {name for name, _ in stored} == {"ops", "viewer"}
    assert all(len(doc["sha256"]) == 64 for _, doc in stored)


def test_the_console_cookie_needs_its_header_for_changes(world: ApiWorld) -> None:
    bad = world.anonymous.post("/session", json={"token": "iotfsm_nope"})
    assert bad.status_code == 401
    login = world.anonymous.post("/session", json={"token": world.write_token})
    assert login.status_code == 200 and login.json() == {"name": "ops", "scopes": ["write"]}
    assert "httponly" in login.headers["set-cookie"].lower()
    assert world.anonymous.get("/session").json()["name"] == "ops"
    forged = world.anonymous.post("/devices", json={"product": PRODUCT, "device": "dev-c"})
    assert forged.status_code == 403
    assert world.platform.registry.get(PRODUCT, "dev-c") is None
    made = world.anonymous.post(
        "/devices",
        json={"product": PRODUCT, "device": "dev-c"},
        headers={"X-Iotfsm-Console": "1"},
    )
    assert made.status_code == 201
    world.anonymous.delete("/session")
    assert world.anonymous.get("/session").status_code == 401
