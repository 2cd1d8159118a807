"""RRPC, broadcast and shadow through the management API against a live server: the HTTP call
waits for the device's answer on a worker thread while the test drives the platform, a device
that never answers makes a 504 at the call's deadline, and bad input changes nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_fixtures import PRODUCT, ApiWorld, error_of

from iotfsm.machines import DeviceKey


@pytest.fixture
def world(tmp_path: Path) -> Iterator[ApiWorld]:
    with ApiWorld(tmp_path) as w:
        yield w


class Pending:
    """One API request on its own thread, so the test can drive the platform meanwhile."""

    def __init__(self, send: Any) -> None:
        self.response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, args=(send,), daemon=True)
        self._thread.start()

    def _run(self, send: Any) -> None:
        self.response = send()

    def done(self) -> bool:
        return self.response is not None


def test_an_rrpc_call_returns_the_devices_answer(world: ApiWorld) -> None:
    asked: list[bytes] = []

    def answer(payload: bytes, process_id: str) -> bytes:
        asked.append(payload)
        return b"pong " + payload

    world.platform.register_device(PRODUCT, "dev-1")
    world.device("dev-1", on_rrpc=answer).start()
    world.settle()
    call = Pending(
        lambda: world.http.post(
            "/devices/API0000001/dev-1/rrpc", json={"payload": "ping", "timeout": 5}
        )
    )
    world.run_until("the API call to be answered", call.done)
    assert call.response is not None and call.response.status_code == 200, call.response
    assert call.response.json() == {"answer": "pong ping", "size": 9}
    assert asked == [b"ping"]


def test_a_call_nobody_answers_is_a_504_at_its_deadline(world: ApiWorld) -> None:
    world.platform.register_device(PRODUCT, "mute")
    world.device("mute", on_rrpc=lambda payload, pid: None).start()  # holds it open, never answers
    world.settle()
    call = Pending(
        lambda: world.http.post(
            "/devices/API0000001/mute/rrpc", json={"payload": "ping", "timeout": 2}
        )
    )
    key = DeviceKey(PRODUCT, "mute")
    world.run_until(
        "the call to reach the device",
        lambda: (
            world.platform.runtime.sessions.get("rrpc", {}).get(key) is not None
            and world.platform.runtime.sessions["rrpc"][key].state != "idle"
        ),
    )
    assert not call.done()
    world.advance(2.0)
    world.run_until("the API call to end", call.done)
    assert call.response is not None and call.response.status_code == 504
    assert error_of(call.response)["code"] == "timeout"


def test_bad_rrpc_calls_are_refused_and_send_nothing(world: ApiWorld) -> None:
    world.platform.register_device(PRODUCT, "dev-1")
    before = len(world.broker.record or [])
    url = "/devices/API0000001/dev-1/rrpc"
    for body in (
        {"payload": 5},
        {"payload": "x", "timeout": 0},
        {"payload": "x", "timeout": 3600},
        {"payload": "x", "extra": 1},
        {"payload": "x" * 20_000},
    ):
        answer = world.http.post(url, json=body)
        assert answer.status_code == 400, (body, answer.text)
    assert (
        world.http.post("/devices/API0000001/nobody/rrpc", json={"payload": "x"}).status_code == 404
    )
    assert world.reader.post(url, json={"payload": "x"}).status_code == 403
    assert world.anonymous.post(url, json={"payload": "x"}).status_code == 401
    world.settle()
    rrpc = [d for d in (world.broker.record or [])[before:] if d.topic.startswith("$rrpc/")]
    assert rrpc == []


def test_a_broadcast_reaches_the_online_devices(world: ApiWorld) -> None:
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    for name, inbox in got.items():
        world.platform.register_device(PRODUCT, name)
        world.device(name, on_broadcast=inbox.append).start()
    world.settle()
    answer = world.http.post("/products/API0000001/broadcast", json={"payload": "hello"})
    assert answer.status_code == 200 and answer.json() == {"devices": 2}
    world.settle()
    assert got == {"a": [b"hello"], "b": [b"hello"]}
    assert world.http.post("/products/bad name/broadcast", json={"payload": "x"}).status_code in (
        400,
        404,
    )


def test_the_desired_shadow_reaches_the_device_and_reads_back(world: ApiWorld) -> None:
    deltas: list[dict[str, Any]] = []
    world.platform.register_device(PRODUCT, "lamp")

    def on_delta(delta: dict[str, Any]) -> dict[str, Any]:
        deltas.append(delta)
        return delta

    world.device("lamp", on_shadow_delta=on_delta).start()
    world.settle()
    url = "/devices/API0000001/lamp/shadow"
    answer = world.http.patch(url + "/desired", json={"state": {"color": "red"}})
    assert answer.status_code == 202, answer.text
    world.settle()
    assert deltas and deltas[-1] == {"color": "red"}
    document = world.reader.get(url).json()["document"]
    assert document["state"]["desired"] == {"color": "red"}
    bad_bodies: list[dict[str, Any]] = [{"state": {}}, {"state": []}, {"state": "red"}, {}]
    for bad in bad_bodies:
        assert world.http.patch(url + "/desired", json=bad).status_code == 400, bad
    assert world.reader.get(url).json()["document"]["version"] == document["version"]
