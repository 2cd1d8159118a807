"""Signed firmware (issue 15, part 3): the manifest, the keys, the offer's extra fields, the
device machine's `verifying` state, and forged offers refused before burn end to end.

The forged offers come the way an attacker with a broker connection sends them: published on the
device's downlink, pointing at an HTTP server of the attacker's on 127.0.0.1 that serves an image
whose md5 (and size) match the offer. md5 proves nothing; only the signature does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from firmware_attacker import AttackerServer, attacker, forged_offer, sign_fields, tree
from hypothesis import given, settings
from hypothesis import strategies as st

from iotfsm.adapters.codec import Codec
from iotfsm.adapters.identity.firmware_signing import (
    MANIFEST_HEADER,
    FirmwareKeyError,
    FirmwareVerifier,
    generate_key_pair,
    load_private_key,
    load_public_key,
    manifest,
)
from iotfsm.cli import main
from iotfsm.device import Device
from iotfsm.fsm import CancelTimer, Connected, Log, Publish, Stepper
from iotfsm.machines import all_features
from iotfsm.machines.feature import DeviceKey
from iotfsm.machines.names import name_problem
from iotfsm.machines.ota import (
    DEVICE,
    BurnFirmware,
    FirmwareRejected,
    FirmwareVerified,
    ReportProgress,
    ReportVersionRsp,
    UpdateFirmware,
    VerifyFirmware,
)
from iotfsm.machines.transfer import StartDownload, TransferDone
from iotfsm.platform import Platform
from iotfsm.testing import Pair

PRODUCT = "SIGN000001"
CODEC = Codec(all_features())
IMAGE = random.Random(15).randbytes(200_000)
MD5 = hashlib.md5(IMAGE).hexdigest()
SHA = hashlib.sha256(IMAGE).hexdigest()


# ---- the manifest ---------------------------------------------------------------------------


def test_the_manifest_is_these_exact_bytes() -> None:
    assert manifest("SIGN000001", "1.2.3", 200, "ab" * 32) == (
        b"iotfsm-firmware-ed25519-v1\n"
        b"product=SIGN000001\nversion=1.2.3\nsize=200\nsha256=" + b"ab" * 32 + b"\n"
    )
    assert manifest("P", "v", 0, "0" * 64).startswith(MANIFEST_HEADER)


@pytest.mark.parametrize(
    ("product", "version", "size", "sha256"),
    [
        ("P1", "1.0\nsize=9", 1, "0" * 64),  # a version smuggling a line
        ("P1", "../x", 1, "0" * 64),
        ("P1", "x" * 33, 1, "0" * 64),
        ("P1\n", "1.0", 1, "0" * 64),
        ("P1", "1.0", -1, "0" * 64),
        ("P1", "1.0", 1, "AB" * 32),  # sha256 only in lowercase: one spelling per image
        ("P1", "1.0", 1, "0" * 63),
    ],
)
def test_a_manifest_that_could_be_ambiguous_is_refused(
    product: str, version: str, size: int, sha256: str
) -> None:
    with pytest.raises(ValueError):
        manifest(product, version, size, sha256)


# ---- keys -----------------------------------------------------------------------------------


def test_generated_keys_are_0600_and_never_overwritten(tmp_path: Path) -> None:
    private, public = generate_key_pair(tmp_path / "keys")
    assert private.stat().st_mode & 0o777 == 0o600
    key = load_private_key(private)
    assert load_public_key(public).public_bytes_raw() == key.public_key().public_bytes_raw()
    before = private.read_bytes()
    with pytest.raises(FirmwareKeyError, match="refusing to overwrite"):
        generate_key_pair(tmp_path / "keys")
    assert private.read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o601])
def test_a_private_key_file_others_may_touch_is_refused(tmp_path: Path, mode: int) -> None:
    private, _ = generate_key_pair(tmp_path)
    private.chmod(mode)
    with pytest.raises(FirmwareKeyError, match="chmod 600"):
        load_private_key(private)
    with pytest.raises(FirmwareKeyError, match="chmod 600"):
        Platform("mqtt://127.0.0.1:1", data_dir=tmp_path / "platform", firmware_key=private)
    assert not (tmp_path / "platform").exists()  # refused before anything was created


def test_keys_that_are_not_ed25519_or_not_keys_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "ed448.key"
    other.write_bytes(
        Ed448PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    other.chmod(0o600)
    with pytest.raises(FirmwareKeyError, match="not Ed25519"):
        load_private_key(other)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    encrypted.chmod(0o600)
    with pytest.raises(FirmwareKeyError, match="encrypted"):
        load_private_key(encrypted)
    with pytest.raises(FirmwareKeyError, match=r"(?i)no such file"):
        load_private_key(tmp_path / "missing.key")
    with pytest.raises(FirmwareKeyError, match="not a PEM public key"):
        load_public_key(b"not a key")
    with pytest.raises(FirmwareKeyError, match="copy the platform"):
        Device(
            PRODUCT,
            "dev-1",
            broker="mqtt://127.0.0.1:1",
            state_dir=tmp_path / "d",
            firmware_public_key=tmp_path / "missing.pub",
        )


def test_the_cli_makes_a_key_pair_and_the_platform_refuses_a_readable_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["firmware-key", "generate", "--out", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    assert "firmware.key" in out and "firmware.pub" in out
    assert (tmp_path / "k" / "firmware.key").stat().st_mode & 0o777 == 0o600
    assert main(["firmware-key", "generate", "--out", str(tmp_path / "k")]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    (tmp_path / "k" / "firmware.key").chmod(0o644)
    argv = [
        "platform",
        "--broker",
        "mqtt://127.0.0.1:1",
        "--data-dir",
        str(tmp_path / "p"),
        "--http",
        "127.0.0.1:0",
        "--firmware-key",
        str(tmp_path / "k" / "firmware.key"),
    ]
    assert main(argv) == 1
    assert "chmod 600" in capsys.readouterr().err
    argv = [
        "device",
        "--broker",
        "mqtt://127.0.0.1:1",
        "--product-id",
        PRODUCT,
        "--device-name",
        "d1",
        "--psk",
        "cHNr",
        "--version",
        "1.0",
        "--state-dir",
        str(tmp_path / "d"),
        "--trusted-url-base",
        "ftp://x/",
    ]
    assert main(argv) == 1
    assert "trusted URL base 'ftp://x/' is refused" in capsys.readouterr().err


# ---- the offer on the wire ------------------------------------------------------------------


TENCENT_FORMS = [
    # the C SDK's own form, Explorer's user_defined, a numeric string size, unknown extras
    b'{"type":"update_firmware","file_size":708482,"md5sum":"'
    + MD5.encode()
    + b'","url":"http://h/f","version":"0.2"}',
    b'{"type":"update_firmware","file_size":708482,"md5sum":"'
    + MD5.encode()
    + b'","url":"http://h/f","version":"0.2","user_defined":"{\\"k\\":1}"}',
    b'{"type":"update_firmware","file_size":"708482","md5sum":"'
    + MD5.upper().encode()
    + b'","url":"http://h/f","version":"0.2","sign":"x","task_id":7}',
]


@pytest.mark.parametrize("payload", TENCENT_FORMS)
def test_tencent_offers_still_decode_and_are_unsigned(payload: bytes) -> None:
    offer = CODEC.decode("ota", "down", payload)
    assert isinstance(offer, UpdateFirmware)
    assert (offer.file_size, offer.version, offer.sha256, offer.signature) == (
        708482,
        "0.2",
        None,
        None,
    )
    doc = json.loads(payload)
    assert offer.extra == {
        k: v for k, v in doc.items() if k not in {"type", "file_size", "md5sum", "url", "version"}
    }


def test_signature_fields_round_trip_and_unsigned_offers_keep_tencent_form() -> None:
    plain = UpdateFirmware(10, MD5, "http://h/f", "0.2")
    assert list(json.loads(CODEC.encode(plain))) == [
        "type",
        "file_size",
        "md5sum",
        "url",
        "version",
    ]
    signed = UpdateFirmware(10, MD5, "http://h/f", "0.2", sha256=SHA, signature="c2ln")
    doc = json.loads(CODEC.encode(signed))
    assert (doc["firmware_sha256"], doc["firmware_signature"]) == (SHA, "c2ln")
    assert CODEC.decode("ota", "down", CODEC.encode(signed)) == signed
    assert "c2ln" not in repr(signed)


# ---- the machine ----------------------------------------------------------------------------


def _signed_only_device() -> Stepper:
    s = Stepper(DEVICE, key=DeviceKey(PRODUCT, "dev-1"))
    s.ctx.version, s.ctx.signed_only = "0.1", True
    s.step(Connected())
    s.step(ReportVersionRsp(0, "success", "0.1"))
    return s


def test_a_signed_only_device_verifies_before_it_burns() -> None:
    s = _signed_only_device()
    s.step(UpdateFirmware(10, MD5, "http://h/f", "0.2", sha256=SHA, signature="c2ln"))
    assert s.step(TransferDone(1, "/s/ota/firmware/data")) == [
        CancelTimer("stall"),
        VerifyFirmware("/s/ota/firmware/data", "0.2", SHA, "c2ln"),
    ]
    assert s.state == "verifying"
    assert s.step(FirmwareVerified("/s/ota/firmware/data")) == [
        Publish(ReportProgress.burning("0.2"), 1),
        BurnFirmware("/s/ota/firmware/data", "0.2"),
    ]
    assert s.state == "burning"


def test_a_rejected_image_is_reported_minus_four_and_never_burned() -> None:
    s = _signed_only_device()
    s.step(UpdateFirmware(10, MD5, "http://h/f", "0.2"))
    s.step(TransferDone(1, "/fw"))
    assert s.step(UpdateFirmware(10, MD5, "http://h/g", "0.3")) == [
        Log.info("offer of '0.3' ignored while installing 0.2")
    ]
    assert s.step(FirmwareRejected("unsigned image")) == [
        Publish(ReportProgress.fail("0.2", -4, "signature verification failed"), 1),
        Log.warning("refused firmware 0.2 before burning, image deleted: unsigned image"),
    ]
    assert (s.state, s.ctx.version, s.ctx.target) == ("idle", "0.1", "")


def test_a_new_signature_for_the_same_download_restarts_it_so_the_latest_counts() -> None:
    s = _signed_only_device()
    s.step(UpdateFirmware(10, MD5, "http://h/f", "0.2", signature="YQ=="))
    assert s.step(UpdateFirmware(10, MD5, "http://h/f", "0.2", signature="YQ==")) == []
    effects = s.step(UpdateFirmware(10, MD5, "http://h/f", "0.2", signature="Yg=="))
    assert any(isinstance(e, StartDownload) for e in effects)
    assert s.ctx.signature == "Yg=="


HOSTILE_VERSIONS = ["../../x", "x" * 200, "..", "/etc/passwd", "a\\b", ".hidden", "1\n2", "a/b"]


@pytest.mark.parametrize("version", HOSTILE_VERSIONS)
def test_hostile_versions_are_refused_with_a_fail_report(version: str) -> None:
    s = _signed_only_device()
    effects = s.step(UpdateFirmware(10, MD5, "http://h/f", version))
    assert not any(isinstance(e, StartDownload) for e in effects)
    assert Publish(ReportProgress.fail(version[:32], -5, "version refused"), 1) in effects
    assert s.state == "idle"


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=80))
def test_any_version_that_is_not_a_name_never_starts_a_download(version: str) -> None:
    s = _signed_only_device()
    effects = s.step(UpdateFirmware(10, MD5, "http://h/f", version))
    starts = [e for e in effects if isinstance(e, StartDownload)]
    good = 1 <= len(version) <= 32 and name_problem(version) is None
    assert bool(starts) == (good and version != "0.1")
    if not good:
        assert any(
            isinstance(e, Publish) and e.message.state == "fail"  # type: ignore[attr-defined]
            for e in effects
        )


# ---- end to end over the memory broker ------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_key_pair(tmp_path / "keys")


@pytest.fixture
def pair(tmp_path: Path, keys: tuple[Path, Path]) -> Iterator[Pair]:
    with Pair(tmp_path, product=PRODUCT, firmware_key=keys[0]) as p:
        yield p


@pytest.fixture
def evil() -> Iterator[AttackerServer]:
    yield from attacker(IMAGE)


class Burns:
    def __init__(self) -> None:
        self.calls: list[tuple[Path, str]] = []

    def __call__(self, image: Path, version: str) -> None:
        self.calls.append((image, version))


def _fails(pair: Pair, code: int) -> list[dict[str, Any]]:
    return [
        m
        for m in pair.wire("$ota/report/")
        if m["type"] == "report_progress"
        and m["report"]["progress"]["state"] == "fail"
        and m["report"]["progress"]["result_code"] == str(code)
    ]


def _publish_as_attacker(pair: Pair, device: str, payload: bytes) -> None:
    client = pair.broker.connect("attacker")
    client.set_handlers(lambda topic, data: None, lambda up: None)
    client.start()
    client.publish(f"$ota/update/{PRODUCT}/{device}", payload, 0)


def test_a_signed_image_is_installed_and_its_offer_carries_the_signature(
    pair: Pair, keys: tuple[Path, Path]
) -> None:
    burns = Burns()
    dev = pair.device("dev-1", "0.1", burn=burns, firmware_public_key=keys[1]).start()
    pair.platform.deploy_firmware(PRODUCT, ["dev-1"], "0.2", IMAGE)
    pair.run_until("the device to run 0.2", lambda: dev.version == "0.2")
    assert [v for _, v in burns.calls] == ["0.2"]
    offer = next(m for m in pair.wire("$ota/update/") if m["type"] == "update_firmware")
    assert offer["firmware_sha256"] == SHA
    signature = base64.b64decode(offer["firmware_signature"])
    public = load_public_key(keys[1])
    public.verify(signature, manifest(PRODUCT, "0.2", len(IMAGE), SHA))  # raises if wrong
    pair.run_until(
        "the platform to confirm",
        lambda: pair.platform.firmware_status(PRODUCT, "dev-1").state == "succeeded",
    )


def _forgeries(keys: tuple[Path, Path]) -> dict[str, dict[str, str]]:
    real = load_private_key(keys[0])
    stranger = Ed25519PrivateKey.generate()
    other_version = sign_fields(real, PRODUCT, "6.6", IMAGE)
    return {
        "unsigned": {},
        "garbage signature": {"firmware_signature": base64.b64encode(os.urandom(64)).decode()},
        "not base64": {"firmware_signature": "!!!"},
        "short signature": {"firmware_signature": base64.b64encode(b"x" * 10).decode()},
        "another key": sign_fields(stranger, PRODUCT, "6.7", IMAGE),
        "another version": other_version,
        "another product": sign_fields(real, "OTHER00001", "6.7", IMAGE),
        "another image": sign_fields(real, PRODUCT, "6.7", IMAGE[:-1] + bytes([IMAGE[-1] ^ 1])),
        "sha256 of another image": {**other_version, "firmware_sha256": "0" * 64},
    }


@pytest.mark.parametrize(
    "forgery",
    [
        "unsigned",
        "garbage signature",
        "not base64",
        "short signature",
        "another key",
        "another version",
        "another product",
        "another image",
        "sha256 of another image",
    ],
)
def test_forged_offers_with_a_valid_md5_are_refused_before_burn(
    pair: Pair,
    keys: tuple[Path, Path],
    evil: AttackerServer,
    forgery: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    burns = Burns()
    dev = pair.device("dev-1", "0.1", burn=burns, firmware_public_key=keys[1]).start()
    pair.run_until("the device to be idle", lambda: dev.state("ota") == "idle")
    before = tree(dev.state_dir)
    fields = _forgeries(keys)[forgery]
    with caplog.at_level(logging.WARNING, logger="iotfsm"):
        _publish_as_attacker(
            pair, "dev-1", forged_offer(IMAGE, f"{evil.base}/fw.bin", "6.7", **fields)
        )
        pair.run_until("the fail report", lambda: bool(_fails(pair, -4)))
        pair.settle()
    assert evil.requests == ["/fw.bin"]  # it was fetched (md5 fine) and then refused
    assert burns.calls == []
    assert (dev.version, dev.state("ota")) == ("0.1", "idle")
    assert tree(dev.state_dir) == before  # image deleted, no version adopted
    refusals = [r for r in caplog.records if "refused firmware 6.7 before burning" in r.message]
    assert len(refusals) == 1, [r.message for r in caplog.records]
    assert _fails(pair, -4)[0]["report"]["version"] == "6.7"


def test_a_device_without_the_key_still_installs_unsigned_images(pair: Pair) -> None:
    """Without `firmware_public_key` nothing changes: today's behaviour, for devices that
    cannot hold a key (and Tencent's own platform, which signs nothing)."""
    dev = pair.device("dev-2", "0.1").start()
    pair.platform.deploy_firmware(PRODUCT, ["dev-2"], "0.2", IMAGE)
    pair.run_until("the device to run 0.2", lambda: dev.version == "0.2")


def test_a_platform_without_a_key_offers_unsigned_and_a_keyed_device_refuses(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    with Pair(tmp_path / "plain", product=PRODUCT) as pair:
        burns = Burns()
        dev = pair.device("dev-1", "0.1", burn=burns, firmware_public_key=keys[1]).start()
        pair.platform.deploy_firmware(PRODUCT, ["dev-1"], "0.2", IMAGE)
        pair.run_until("the fail report", lambda: bool(_fails(pair, -4)))
        offer = next(m for m in pair.wire("$ota/update/") if m["type"] == "update_firmware")
        assert list(offer) == ["type", "file_size", "md5sum", "url", "version"]
        assert burns.calls == [] and dev.version == "0.1"


@pytest.mark.parametrize("version", ["../../x", "x" * 200, "../../../../tmp/evil", ".."])
def test_hostile_versions_over_the_broker_write_nothing(
    pair: Pair, keys: tuple[Path, Path], evil: AttackerServer, version: str, tmp_path: Path
) -> None:
    dev = pair.device("dev-1", "0.1").start()  # no key: only the version rule stands in the way
    pair.run_until("the device to be idle", lambda: dev.state("ota") == "idle")
    outside = tree(tmp_path.parent)
    _publish_as_attacker(pair, "dev-1", forged_offer(IMAGE, f"{evil.base}/fw.bin", version))
    pair.run_until("the fail report", lambda: bool(_fails(pair, -5)))
    pair.settle()
    assert evil.requests == []
    assert dev.version == "0.1"
    changed = {k for k, v in tree(tmp_path.parent).items() if outside.get(k) != v}
    own = (f"{tmp_path.name}/platform/", f"{tmp_path.name}/devices/dev-1/")
    assert {k for k in changed if not k.startswith(own)} == set()
    assert not any("firmware" in k or "evil" in k or k.endswith(".bin") for k in changed), changed


def test_a_verifier_refuses_a_file_that_changed_after_signing(tmp_path: Path) -> None:
    private, public = generate_key_pair(tmp_path)
    image = tmp_path / "fw.bin"
    image.write_bytes(IMAGE)
    fields = sign_fields(load_private_key(private), PRODUCT, "1.0", IMAGE)
    verifier = FirmwareVerifier(public)
    args = (PRODUCT, "1.0", fields["firmware_sha256"], fields["firmware_signature"])
    assert verifier.problem(image, *args) is None
    image.write_bytes(IMAGE + b"!")
    assert "sha256" in (verifier.problem(image, *args) or "")
    assert "does not verify" in (
        verifier.problem(image, PRODUCT, "1.0", "", fields["firmware_signature"]) or ""
    )


def test_signatures_are_kept_per_key_and_a_new_key_signs_again(tmp_path: Path) -> None:
    """The platform hashes an image once per (key, product, version, file): offers and restarts
    reuse the stored signature, and a rotated key signs afresh instead of serving the old one."""
    from iotfsm.adapters.identity.firmware_signing import FirmwareSigner
    from iotfsm.adapters.store.session_store import SqliteStore

    image = tmp_path / "fw-1"
    image.write_bytes(IMAGE)
    store = SqliteStore(tmp_path / "platform.sqlite3")
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    first = FirmwareSigner(old, store).signature(PRODUCT, "2.0", "fw-1", image)
    image.unlink()  # a stored signature needs no image
    assert FirmwareSigner(old, store).signature(PRODUCT, "2.0", "fw-1", image) == first
    with pytest.raises(FileNotFoundError):
        FirmwareSigner(new, store).signature(PRODUCT, "2.0", "fw-1", image)
    image.write_bytes(IMAGE)
    rotated = FirmwareSigner(new, store).signature(PRODUCT, "2.0", "fw-1", image)
    assert rotated.sha256 == first.sha256 == SHA and rotated.signature != first.signature
    signed = manifest(PRODUCT, "2.0", len(IMAGE), SHA)
    new.public_key().verify(base64.b64decode(rotated.signature), signed)
    store.close()
