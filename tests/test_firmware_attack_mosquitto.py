"""Issue 15's first measured attack, re-run over a real Mosquitto that admits anonymous clients:
an attacker publishes `update_firmware` on a device's downlink, pointing at the attacker's HTTP
server on 127.0.0.1 with an image whose md5 is right. A device with the platform's public key
refuses it before burn (and deletes it); one with trusted URL bases does not even fetch it. Both
keep their version and state directory, and still install the platform's signed firmware."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from firmware_attacker import AttackerServer, attacker, forged_offer, tree
from mqtt_fixtures import (
    ClientFactory,
    fast_settings,
    mosquitto_broker,
    mqtt_clients,
    unique_client_id,
)

from iotfsm.adapters.connect import MqttOptions
from iotfsm.adapters.identity.firmware_signing import generate_key_pair
from iotfsm.platform import Platform
from iotfsm.testing import Mosquitto, Pair, wait_for

__all__ = ["mosquitto_broker", "mqtt_clients"]

PRODUCT = "ATCK000001"
IMAGE = b"\x7fELF attacker payload " * 4000


@pytest.fixture
def evil() -> Iterator[AttackerServer]:
    yield from attacker(IMAGE)


def test_a_forged_offer_over_mosquitto_is_refused_and_signed_firmware_still_installs(
    mosquitto_broker: Mosquitto, mqtt_clients: ClientFactory, evil: AttackerServer, tmp_path: Path
) -> None:
    private, public = generate_key_pair(tmp_path / "keys")
    with Pair(
        tmp_path, product=PRODUCT, broker_url=mosquitto_broker.url, firmware_key=private
    ) as pair:
        burned: list[str] = []
        keyed = pair.device(
            "keyed", "1.0", firmware_public_key=public, burn=lambda p, v: burned.append(v)
        ).start()
        base = f"{pair.platform.files.public_base}/files/"
        fenced = pair.device(
            "fenced",
            "1.0",
            firmware_public_key=public,
            trusted_url_bases=[base],
            burn=lambda p, v: burned.append(v),
        ).start()
        wait_for(
            "the devices to be idle",
            lambda: all(d.connected and d.state("ota") == "idle" for d in (keyed, fenced)),
        )
        before = {d.key.device: tree(d.state_dir) for d in (keyed, fenced)}

        client = mqtt_clients(
            fast_settings(mosquitto_broker, unique_client_id("attacker")),
            subscribe=[(f"$ota/report/{PRODUCT}/+", 1)],
        )
        for name in ("keyed", "fenced"):
            offer = forged_offer(IMAGE, f"{evil.base}/{name}.bin", "9.9")
            client.transport.publish(f"$ota/update/{PRODUCT}/{name}", offer, 1)

        def failed(name: str, code: str) -> bool:
            for topic, payload in client.recorder.messages:
                doc = json.loads(payload)
                progress = doc.get("report", {}).get("progress", {})
                if topic.endswith(f"/{name}") and (
                    progress.get("state"),
                    progress.get("result_code"),
                ) == ("fail", code):
                    return True
            return False

        client.recorder.wait_for(
            lambda: failed("keyed", "-4") and failed("fenced", "-2"),
            "the keyed device's fail -4 and the fenced device's fail -2",
            timeout=20,
        )
        pair.settle()
        wait_for("the devices to settle", lambda: not keyed.busy and not fenced.busy)
        assert evil.requests == ["/keyed.bin"]  # the fenced device fetched nothing
        assert burned == []
        for dev in (keyed, fenced):
            assert (dev.version, dev.state("ota")) == ("1.0", "idle")
            assert tree(dev.state_dir) == before[dev.key.device]

        pair.platform.deploy_firmware(PRODUCT, ["keyed", "fenced"], "1.1", IMAGE + b"genuine")
        wait_for(
            "both devices to run 1.1", lambda: keyed.version == fenced.version == "1.1", timeout=30
        )
        assert sorted(burned) == ["1.1", "1.1"]


def test_the_device_command_with_a_public_key_and_a_trusted_base(
    mosquitto_broker: Mosquitto, mqtt_clients: ClientFactory, evil: AttackerServer, tmp_path: Path
) -> None:
    """`iotfsm firmware-key generate`, then `iotfsm device --firmware-pubkey ... --trusted-url-base
    ...` as a real process: a forged offer is refused without a fetch, a signed one installed."""
    keys = tmp_path / "keys"
    made = subprocess.run(
        [sys.executable, "-m", "iotfsm", "firmware-key", "generate", "--out", str(keys)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    state = tmp_path / "device"
    with Platform(
        mosquitto_broker.url,
        data_dir=tmp_path / "platform",
        mqtt=MqttOptions(backoff_min=0.05, backoff_max=0.3),
        firmware_key=keys / "firmware.key",
    ) as platform:
        wait_for("the platform to connect", lambda: platform.runtime.transport.connected)
        platform.register_device(PRODUCT, "proc-1")
        base = f"{platform.files.public_base}/files/"
        argv = [sys.executable, "-m", "iotfsm", "device", "--broker", mosquitto_broker.url]
        argv += ["--product-id", PRODUCT, "--device-name", "proc-1", "--psk", "cHNrcHNr"]
        argv += ["--version", "1.0", "--state-dir", str(state), "--events", "jsonl"]
        argv += ["--firmware-pubkey", str(keys / "firmware.pub"), "--trusted-url-base", base]
        device = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(
                "the device to report its version",
                lambda: platform.firmware_status(PRODUCT, "proc-1").reported == "1.0",
            )
            client = mqtt_clients(
                fast_settings(mosquitto_broker, unique_client_id("attacker")),
                subscribe=[(f"$ota/report/{PRODUCT}/proc-1", 1)],
            )
            offer = forged_offer(IMAGE, f"{evil.base}/fw.bin", "9.9")
            client.transport.publish(f"$ota/update/{PRODUCT}/proc-1", offer, 1)
            client.recorder.wait_for(
                lambda: any(b'"result_code":"-2"' in p for p in client.recorder.payloads()),
                "the device's fail -2",
                timeout=20,
            )
            assert evil.requests == []
            platform.deploy_firmware(PRODUCT, ["proc-1"], "2.0", IMAGE)
            wait_for(
                "the platform to see 2.0",
                lambda: platform.firmware_status(PRODUCT, "proc-1").state == "succeeded",
                timeout=30,
            )
        finally:
            device.send_signal(signal.SIGTERM)
            out, err = device.communicate(timeout=15)
        assert device.returncode == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        assert any(e.get("machine") == "ota.device" and e["to"] == "verifying" for e in events)
    assert json.loads((state / "ota" / "version.json").read_text())["version"] == "2.0"
    assert (state / "ota" / "firmware-2.0.bin").read_bytes() == IMAGE
