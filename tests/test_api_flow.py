"""Operator actions through the management API against real devices (memory broker, firmware
over real HTTP): a deployment watched on the server-sent step stream, a campaign paused,
resumed and cancelled with its per-wave counts, config, log level, uploaded logs, resources."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_fixtures import PRODUCT, ApiWorld

from iotfsm.adapters.http.log_upload import LogUploadOptions
from iotfsm.testing import wait_for

PSK = "vX6PQqazsGsMyf5SMfs6OA6y"

IMAGE = random.Random(20).randbytes(30_000)
OCTETS = {"content-type": "application/octet-stream"}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[ApiWorld]:
    with ApiWorld(tmp_path) as w:
        yield w


class Stream:
    """Reads `/steps/stream` on a thread, keeping every event it parses."""

    def __init__(self, world: ApiWorld, after: int | None = None, **params: str) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None]] = []
        headers = {"Authorization": f"Bearer {world.read_token}"}
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        self._client = httpx.Client(
            base_url=world.api.url + "/api/v1",
            headers=headers,
            timeout=httpx.Timeout(10.0, read=None),
        )
        self.opened = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(params,), daemon=True)
        self._thread.start()
        assert self.opened.wait(10), "the stream did not open"

    def _read(self, params: dict[str, str]) -> None:
        with self._client.stream("GET", "/steps/stream", params=params) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            kind, seq = "message", None
            try:
                for line in answer.iter_lines():
                    self.opened.set()
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("id: "):
                        seq = line[4:]
                    elif line.startswith("data: "):
                        self.events.append((kind, json.loads(line[6:]), seq))
                        kind, seq = "message", None
            except httpx.HTTPError:
                return  # closed by the test

    def wait(self, what: str, found: Callable[[list[dict[str, Any]]], bool]) -> None:
        wait_for(what, lambda: found([e for k, e, _ in list(self.events) if k == "step"]))

    def close(self) -> None:
        self._client.close()


def test_a_deployment_moves_through_the_live_stream(world: ApiWorld) -> None:
    device = world.device("dev-1", version="1.0").start()
    world.settle()
    stream = Stream(world, product=PRODUCT, device="dev-1", machine="ota")
    upload = world.http.put(f"/firmware/{PRODUCT}/1.1", content=IMAGE, headers=OCTETS)
    assert upload.status_code == 201, upload.text
    deployed = world.http.post(
        "/deployments", json={"product": PRODUCT, "version": "1.1", "devices": ["dev-1"]}
    )
    assert deployed.status_code == 201, deployed.text
    wait_for("the device to run 1.1", lambda: device.version == "1.1")

    def ran(steps: list[dict[str, Any]]) -> bool:
        return any(s["dest"] == "succeeded" for s in steps)

    stream.wait("the stream to show the success", ran)
    steps = [e for k, e, _ in stream.events if k == "step"]
    assert {(s["product"], s["device"], s["machine"]) for s in steps} == {(PRODUCT, "dev-1", "ota")}
    path = [s["dest"] for s in steps if s["handled"] and s["source"] != s["dest"]]
    assert path[0] == "offered" and path[-1] == "succeeded" and "downloading" in path
    seqs = [int(seq) for k, _, seq in stream.events if k == "step" and seq]
    assert seqs == sorted(seqs)
    stream.close()

    detail = world.reader.get(f"/devices/{PRODUCT}/dev-1").json()
    assert detail["version"] == "1.1" and detail["firmware"]["state"] == "succeeded"
    recent = world.reader.get(f"/devices/{PRODUCT}/dev-1/steps").json()["items"]
    assert {s["machine"] for s in recent} >= {"ota"}
    listed = world.reader.get("/deployments", params={"product": PRODUCT}).json()
    assert [d["version"] for d in listed["items"]] == ["1.1"]
    images = world.reader.get("/firmware").json()["items"]
    assert [(i["version"], i["size"]) for i in images] == [("1.1", len(IMAGE))]


def test_in_process_device_steps_join_the_feed_with_their_role(world: ApiWorld) -> None:
    feed = world.api.ctx.feed
    world.device("dev-1", on_step=lambda r: feed.observe(r.machine, r)).start()
    world.settle()
    mine = world.reader.get("/steps", params={"role": "device", "device": "dev-1"}).json()
    assert mine["items"] and {s["role"] for s in mine["items"]} == {"device"}
    assert {s["machine"] for s in mine["items"]} >= {"ota.device"}
    ota = world.reader.get("/steps", params={"machine": "ota.device"}).json()["items"]
    assert ota and all(s["machine"] == "ota.device" for s in ota)
    platform = world.reader.get("/steps", params={"role": "platform"}).json()["items"]
    assert platform and {s["role"] for s in platform} == {"platform"}
    assert "ota" in {s["machine"] for s in platform}


def test_a_reconnecting_reader_gets_what_it_missed(world: ApiWorld) -> None:
    world.device("dev-1").start()
    world.settle()
    seen = world.reader.get("/steps", params={"limit": 2000}).json()["items"]
    assert len(seen) >= 4
    middle = seen[len(seen) // 2]["seq"]
    stream = Stream(world, after=middle)
    missed = [s["seq"] for s in seen if s["seq"] > middle]
    stream.wait("the backlog", lambda steps: [s["seq"] for s in steps][: len(missed)] == missed)
    stream.close()
    bad = world.reader.get("/steps/stream", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400


def test_stopping_the_server_ends_open_streams(world: ApiWorld) -> None:
    stream = Stream(world)
    began = time.monotonic()
    world.api.stop()
    assert time.monotonic() - began < 5.0
    stream._thread.join(5.0)
    assert not stream._thread.is_alive()
    stream.close()


def test_a_slow_reader_loses_steps_and_is_told(world: ApiWorld) -> None:
    from iotfsm.api import feed

    sub_feed = world.api.ctx.feed
    loop_holder: list[Any] = []
    import asyncio

    loop = asyncio.new_event_loop()
    loop_holder.append(loop)
    slow = sub_feed.subscribe(feed.StepFilter(), loop)
    for i in range(5):
        world.device(f"dev-{i}").start()
    world.settle()
    while sub_feed.dropped == 0:  # more steps than the reader's buffer holds
        world.platform.set_product_log_level(PRODUCT, 1)
        world.settle()
    taken, lost = slow.take()
    assert len(taken) == feed.BUFFER and lost == sub_feed.dropped > 0
    slow.close()
    loop.close()
    assert world.reader.get("/overview").json()["steps_dropped"] == lost


def test_a_campaign_paused_resumed_and_cancelled_with_wave_counts(world: ApiWorld) -> None:
    names = [f"dev-{i}" for i in range(4)]
    for name in names:
        world.device(name, version="1.0").start()
    world.settle()
    world.http.put(f"/firmware/{PRODUCT}/2.0", content=IMAGE, headers=OCTETS)
    made = world.http.post(
        "/campaigns",
        json={
            "product": PRODUCT,
            "version": "2.0",
            "waves": [names[:2], names[2:]],
            "id": "c-api",
            "settings": {"advance": "operator"},
        },
    )
    assert made.status_code == 201, made.text
    assert made.json()["id"] == "c-api" and [w["size"] for w in made.json()["waves"]] == [2, 2]

    def status() -> dict[str, Any]:
        doc: dict[str, Any] = world.reader.get("/campaigns/c-api").json()
        return doc

    world.run_until("wave 1 to succeed", lambda: status()["waves"][0]["succeeded"] == 2)
    paused = world.http.post("/campaigns/c-api/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    again = world.http.post("/campaigns/c-api/pause")
    assert again.status_code == 422 and again.json()["error"]["code"] == "refused"
    resumed = world.http.post("/campaigns/c-api/resume")
    assert resumed.status_code == 200 and resumed.json()["state"] != "paused"
    cancelled = world.http.post("/campaigns/c-api/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    final = status()
    assert final["waves"][0]["succeeded"] == 2
    assert sum(final["waves"][1][k] for k in ("pending", "cancelled", "running")) == 2
    assert any("paus" in h["note"] for h in final["history"])
    listed = world.reader.get("/campaigns", params={"state": "cancelled"}).json()
    assert [c["id"] for c in listed["items"]] == ["c-api"] and listed["items"][0]["history"] == []
    trail = [
        (e["method"], e["path"], e["status"]) for e in world.reader.get("/audit").json()["items"]
    ]
    assert ("POST", "/api/v1/campaigns/c-api/pause", 422) in trail
    assert ("POST", "/api/v1/campaigns/c-api/cancel", 200) in trail


def test_config_log_level_logs_and_resources(world: ApiWorld) -> None:
    got: list[dict[str, Any]] = []
    received: list[str] = []
    logger = logging.getLogger("tests.api.flow")
    logger.propagate = False
    world.device(
        "dev-1",
        psk=PSK,
        logger=logger,
        on_config=got.append,
        on_resource=lambda path, name: received.append(name),
        log_upload=LogUploadOptions(world.platform.log_url, interval=0.05, timeout=2.0),
    ).start()
    world.settle()
    pushed = world.http.put(f"/products/{PRODUCT}/config", json={"payload": {"rate": 5}})
    assert pushed.status_code == 200 and pushed.json()["version"] == 1
    wait_for("the config to arrive", lambda: got == [{"rate": 5}])
    history = world.reader.get(f"/products/{PRODUCT}/config/history").json()["items"]
    assert [h["payload"] for h in history] == [{"rate": 5}]
    off = world.http.put(f"/products/{PRODUCT}/config/enabled", json={"enabled": False})
    assert off.json()["enabled"] is False

    level = world.http.put(f"/devices/{PRODUCT}/dev-1/log-level", json={"level": 4})
    assert level.status_code == 202
    wait_for(
        "the level",
        lambda: world.reader.get(f"/devices/{PRODUCT}/dev-1/log-level").json() == {"level": 4},
    )
    logger.error("api test line")
    wait_for(
        "the uploaded line",
        lambda: any(
            "api test line" in x["text"]
            for x in world.reader.get(f"/devices/{PRODUCT}/dev-1/logs").json()["items"]
        ),
    )

    offered = world.http.put(
        f"/resources/{PRODUCT}/model.bin",
        params={"device": "dev-1"},
        content=b"weights",
        headers=OCTETS,
    )
    assert offered.status_code == 201, offered.text
    assert [d["state"] for d in offered.json()["items"]] == ["queued"]
    wait_for("the resource", lambda: received == ["model.bin"])
    wait_for(
        "the delivery to end",
        lambda: world.reader.get("/resources/deliveries").json()["items"][0]["state"] == "done",
    )
