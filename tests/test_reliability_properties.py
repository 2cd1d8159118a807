"""A platform and two devices under random interleavings: commands, forged and garbage messages,
faults, disconnects, restarts of either role, clock jumps (hypothesis `RuleBasedStateMachine`).

After every step, once everything is quiet, the invariants hold:
- no uncaught exception (nothing logged at ERROR by the library, nothing escaping a thread);
- the platform never reports an OTA success unless the device reported the target version;
- no file is written outside the platform's data directory and the devices' state directories;
- every session in a non-final state that waits for something has a live timer (at a quiet
  moment no transfer or burn is in flight, so the timer is all there is).
At the end of each run the faults stop, every device reconnects, and the world must come to rest
with each flow finished: OTA tasks succeeded or failed, no delivery half done on the device.

CI runs a fixed set of examples (derandomized, so a failure reproduces); `IOTFSM_SOAK=1` runs
many more with fresh random seeds.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from reliability_helpers import PRODUCT, SOAK, World, blob, topics

from iotfsm.adapters.mqtt.memory_broker import (
    Delay,
    Disconnect,
    Drop,
    Duplicate,
    Fault,
    MemoryTransport,
    Reorder,
)

pytestmark = pytest.mark.timeout(7200 if SOAK else 120)

DEVICES = ("d1", "d2")
FEATURES = ("ota", "resource_download", "resource_upload", "config", "log_level")
VERSIONS = ("2.0", "3.0")
IMAGES = {v: blob(40_000 + 10_000 * i, 10 + i) for i, v in enumerate(VERSIONS)}
RESOURCES = {"a.bin": blob(30_000, 20), "b.bin": blob(50_000, 21)}
JUMPS = (0.5, 3.0, 10.0, 31.0, 301.0, 3600.0)

HOSTILE_NAMES = ("../escape", "..", "a/b", ".hidden", "x" * 65, "nul\u0000", "ok.bin")
FORGED_DOWN: list[dict[str, Any]] = [
    {
        "type": "update_firmware",
        "file_size": 10,
        "md5sum": "0" * 32,
        "url": "file:///etc/passwd",
        "version": "9.9",
    },
    {
        "type": "update_firmware",
        "file_size": 10**15,
        "md5sum": "0" * 32,
        "url": "http://127.0.0.1:9/x",
        "version": "9.8",
    },
    {"type": "update_firmware", "file_size": "12", "md5sum": "nothex", "url": "", "version": ""},
    {"type": "report_version_rsp", "result_code": -1, "result_msg": "no", "version": "0"},
    {"type": "get_log_level", "clientToken": "x", "log_level": 9, "result": 0},
    {"type": "get_log_level", "clientToken": f"{PRODUCT}-1", "log_level": 1},
    {"type": "push", "result": 0, "payload": {"forged": True}},
    {"type": "reply", "result": 1003},
    {
        "type": "create_upload_task_rsp",
        "size": 1,
        "name": "zzz",
        "md5sum": "0" * 32,
        "url": "http://127.0.0.1:9/u",
    },
    {"type": "report_upload_progress_rsp", "result_code": -7, "result_msg": "go away"},
    {"type": "report_download_progress_rsp", "result_code": 5, "result_msg": "stop"},
]
FORGED_UP: list[dict[str, Any]] = [
    {"type": "report_version", "report": {"version": "7.7"}},
    {
        "type": "report_progress",
        "report": {
            "progress": {"state": "done", "result_code": "0", "result_msg": ""},
            "version": "2.0",
        },
    },
    {
        "type": "report_progress",
        "report": {
            "progress": {"state": "fail", "result_code": "-5", "result_msg": "time_out"},
            "version": "3.0",
        },
    },
    {
        "type": "report_progress",
        "report": {
            "progress": {
                "state": "downloading",
                "percent": "250",
                "result_code": "0",
                "result_msg": "",
            },
            "version": "2.0",
        },
    },
    {
        "type": "report_download_progress",
        "name": "a.bin",
        "progress": {"state": "done", "result_code": 0, "result_msg": ""},
    },
    {
        "type": "report_upload_progress",
        "name": "nothing",
        "progress": {"state": "done", "result_code": 0, "result_msg": ""},
    },
    {"type": "get"},
    {"type": "get_log_level", "clientToken": "t"},
]


def forged_task(name: str, url: str) -> dict[str, Any]:
    return {"type": "download", "size": 5, "name": name, "md5sum": "1" * 32, "url": url}


def forged_upload(name: str) -> dict[str, Any]:
    return {"type": "create_upload_task", "size": 4, "name": name, "md5sum": "2" * 32}


class Flows(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="iotfsm-rel-"))
        self.world = World(self.tmp / "world")
        for name in DEVICES:
            self.world.device(name, version="1.0").start()
        self.forger: MemoryTransport = self.world.broker.connect("forger")
        self.forger.set_handlers(lambda topic, payload: None, lambda up: None)
        self.forger.start()
        self.files: set[str] = set()
        self.settle()

    # -- helpers --

    def settle(self) -> None:
        self.world.drive(until=lambda: True)

    def client(self, name: str) -> str:
        return str(self.world.find(name).runtime.transport.client_id)  # type: ignore[attr-defined]

    # -- commands --

    @rule(version=st.sampled_from(VERSIONS), who=st.sampled_from([*DEVICES, "*"]))
    def deploy(self, version: str, who: str) -> None:
        devices: Any = "*" if who == "*" else [who]
        deployment = self.world.platform.deploy_firmware(PRODUCT, devices, version, IMAGES[version])
        self.files.add(deployment.file_id)

    @rule(who=st.sampled_from(DEVICES))
    def cancel(self, who: str) -> None:
        self.world.platform.cancel_firmware(PRODUCT, who)

    @rule(who=st.sampled_from(DEVICES), name=st.sampled_from(sorted(RESOURCES)))
    def offer(self, who: str, name: str) -> None:
        [delivery] = self.world.platform.offer_resource(PRODUCT, [who], name, RESOURCES[name])
        self.files.add(f"res-{delivery.md5}")

    @rule(who=st.sampled_from(DEVICES), size=st.integers(1, 70_000), seed=st.integers(0, 3))
    def upload(self, who: str, size: int, seed: int) -> None:
        source = self.world.root / "sources" / f"{who}-{seed}.bin"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(blob(size, seed))
        self.world.find(who).upload(source, f"up-{seed}.bin")

    @rule(port=st.integers(1, 5), enabled=st.booleans())
    def config(self, port: int, enabled: bool) -> None:
        self.world.platform.set_config(PRODUCT, {"port": port})
        self.world.platform.enable_config(PRODUCT, enabled)

    @rule(who=st.sampled_from(DEVICES))
    def request_config(self, who: str) -> None:
        self.world.find(who).request_config()

    @rule(who=st.sampled_from(DEVICES), level=st.integers(0, 4))
    def log_level(self, who: str, level: int) -> None:
        self.world.platform.set_log_level(PRODUCT, who, level)

    # -- the network and the peers --

    @rule(
        kind=st.sampled_from(["drop", "duplicate", "reorder", "delay", "disconnect"]),
        who=st.sampled_from(DEVICES),
        feature=st.sampled_from(FEATURES),
        direction=st.sampled_from(["up", "down"]),
        times=st.integers(1, 3),
        after=st.integers(0, 2),
    )
    def fault(
        self, *, kind: str, who: str, feature: str, direction: str, times: int, after: int
    ) -> None:
        topic = topics(feature, who)[direction]
        rule: Fault
        if kind == "drop":
            rule = Drop(topic, times=times, after=after)
        elif kind == "duplicate":
            rule = Duplicate(topic, times=times, after=after)
        elif kind == "reorder":
            rule = Reorder(topic, times=times, after=after)
        elif kind == "delay":
            rule = Delay(topic, seconds=4.0, times=times, after=after)
        else:
            topic = topics(feature, who)["down"]  # the device's connection breaks
            rule = Disconnect(topic, times=1, after=after, reconnect_after=7.0)
        self.world.broker.inject(rule)

    @rule()
    def clear_faults(self) -> None:
        self.world.broker.clear_faults()

    @rule(nbytes=st.integers(0, 60_000))
    def cut_downloads(self, nbytes: int) -> None:
        for file_id in self.files:
            self.world.platform.files.hooks.cut_after(file_id, nbytes)

    @rule(who=st.sampled_from(DEVICES), up=st.booleans())
    def connection(self, who: str, up: bool) -> None:
        client = self.client(who)
        if up:
            self.world.broker.reconnect(client)
        else:
            self.world.broker.disconnect(client)

    @rule(up=st.booleans())
    def platform_connection(self, up: bool) -> None:
        client = str(self.world.platform.runtime.transport.client_id)  # type: ignore[attr-defined]
        if up:
            self.world.broker.reconnect(client)
        else:
            self.world.broker.disconnect(client)

    @rule(who=st.sampled_from(DEVICES), doc=st.sampled_from(FORGED_DOWN))
    def forge_down(self, who: str, doc: dict[str, Any]) -> None:
        feature = {
            "update_firmware": "ota",
            "report_version_rsp": "ota",
            "get_log_level": "log_level",
            "push": "config",
            "reply": "config",
        }.get(doc["type"], "resource_upload")
        self.forger.publish(topics(feature, who)["down"], json.dumps(doc).encode(), 0)

    @rule(who=st.sampled_from(DEVICES), name=st.sampled_from(HOSTILE_NAMES), real=st.booleans())
    def forge_task(self, who: str, name: str, real: bool) -> None:
        url = "http://127.0.0.1:9/x"
        if real and self.files:
            url = self.world.platform.files.signed_get_url(sorted(self.files)[0], 600)
        topic = topics("resource_download", who)["down"]
        self.forger.publish(topic, json.dumps(forged_task(name, url)).encode(), 0)

    @rule(who=st.sampled_from(DEVICES), doc=st.sampled_from(FORGED_UP))
    def forge_up(self, who: str, doc: dict[str, Any]) -> None:
        feature = {
            "report_version": "ota",
            "report_progress": "ota",
            "get": "config",
            "get_log_level": "log_level",
        }.get(doc["type"], "resource_upload")
        self.forger.publish(topics(feature, who)["up"], json.dumps(doc).encode(), 1)

    @rule(who=st.sampled_from(DEVICES), name=st.sampled_from(HOSTILE_NAMES))
    def forge_upload(self, who: str, name: str) -> None:
        topic = topics("resource_upload", who)["up"]
        self.forger.publish(topic, json.dumps(forged_upload(name)).encode(), 1)

    @rule(who=st.sampled_from(DEVICES), payload=st.binary(max_size=64))
    def garbage(self, who: str, payload: bytes) -> None:
        self.forger.publish(topics("ota", who)["down"], payload, 0)
        self.forger.publish(topics("resource_upload", who)["up"], payload, 0)

    # -- restarts and time --

    @rule(who=st.sampled_from(DEVICES))
    def restart_device(self, who: str) -> None:
        self.world.restart_device(who)

    @rule()
    def restart_platform(self) -> None:
        self.world.restart_platform()

    @rule(seconds=st.sampled_from(JUMPS))
    def jump(self, seconds: float) -> None:
        self.world.clock.advance(seconds)

    @precondition(lambda self: self.world.clock.next_deadline() is not None)
    @rule()
    def next_timer(self) -> None:
        due = self.world.clock.next_deadline()
        assert due is not None
        self.world.clock.advance(max(0.0, due - self.world.clock.now()))

    # -- invariants --

    @invariant()
    def holds(self) -> None:
        self.settle()  # checks the invariants at the quiet moment

    def teardown(self) -> None:
        try:
            self.world.broker.clear_faults()
            self.world.platform.files.hooks.clear()
            self.platform_connection(up=True)
            for name in DEVICES:
                self.world.broker.reconnect(self.client(name))
            self.world.drive(max_jumps=1000)
            for name in DEVICES:
                device = self.world.find(name)
                assert device.state("ota") in ("idle", "offline"), device.state("ota")
                assert device.state("resource_download") in ("idle",)
                assert device.state("resource_upload") in ("idle",)
                status = self.world.platform.firmware_status(PRODUCT, name)
                assert status.state in ("idle", "succeeded", "failed"), status
                if status.state == "succeeded":
                    assert device.version == status.target, (device.version, status)
        finally:
            self.world.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


Flows.TestCase.settings = settings(
    max_examples=400 if SOAK else 30,
    stateful_step_count=40 if SOAK else 25,
    deadline=None,
    derandomize=not SOAK,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)
test_random_interleavings_keep_every_invariant = Flows.TestCase
