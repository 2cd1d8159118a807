"""`iotfsm registry issue-cert` and `iotfsm broker-config mosquitto`, run in-process: what they
write, what they refuse. The broker's enforcement of what they write is in
test_mosquitto_secure.py (same generator) and test_readme_secure.py (these very commands)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotfsm.adapters.identity.certificates import PlatformCA
from iotfsm.cli import main
from iotfsm.machines.feature import DeviceKey

PRODUCT = "S3EUVBRJLB"


def iotfsm(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def registry(
    capsys: pytest.CaptureFixture[str], data: Path, command: str, name: str, *extra: str
) -> None:
    code, text = iotfsm(
        capsys, "registry", command, "--data-dir", str(data), "--product-id", PRODUCT,
        "--device-name", name, *extra,
    )  # fmt: skip
    assert code == 0, text


def test_issue_cert_only_for_registered_certificate_devices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "platform"
    args = ["registry", "issue-cert", "--data-dir", str(data), "--product-id", PRODUCT]
    code, text = iotfsm(capsys, *args, "--device-name", "ghost", "--out", str(tmp_path / "o"))
    assert code == 1 and "--auth cert" in text and not (tmp_path / "o").exists()
    registry(capsys, data, "add", "keyed")
    code, text = iotfsm(capsys, *args, "--device-name", "keyed", "--out", str(tmp_path / "o"))
    assert code == 1 and "not registered as a certificate device" in text
    registry(capsys, data, "add", "dev-1", "--auth", "cert")
    code, text = iotfsm(capsys, *args, "--device-name", "dev-1", "--out", str(tmp_path / "o"))
    assert code == 0, text
    assert (tmp_path / "o/S3EUVBRJLB-dev-1.key").stat().st_mode & 0o777 == 0o600
    assert PlatformCA.in_data_dir(data).issued_devices() == {DeviceKey(PRODUCT, "dev-1")}


def test_broker_config_follows_the_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "platform", tmp_path / "mosquitto"
    for name, auth in (("dev-1", "cert"), ("dev-2", "cert"), ("keyed", "key")):
        registry(capsys, data, "add", name, "--auth", auth)
    for name in ("dev-1", "dev-2"):
        registry(capsys, data, "issue-cert", name, "--out", str(tmp_path / name))
    registry(capsys, data, "disable", "dev-2")
    command = ["broker-config", "mosquitto", "--data-dir", str(data), "--out", str(out)]
    code, text = iotfsm(capsys, *command, "--host", "broker.example.com")
    assert code == 0, text
    acl = (out / "acl").read_text()
    assert "user S3EUVBRJLB/dev-1\n" in acl
    assert "dev-2" not in acl and "keyed" not in acl  # disabled; a key device has no cert login
    conf = (out / "mosquitto.conf").read_text()
    for line in ("require_certificate true", "use_identity_as_username true", "allow_anonymous false",
                 f"crlfile {out / 'crl.pem'}", f"password_file {out / 'passwd'}"):  # fmt: skip
        assert line in conf
    for private in (out / "passwd", out / "broker.key", data / "broker-password"):
        assert private.stat().st_mode & 0o777 == 0o600, private
    password = (data / "broker-password").read_text().strip()
    assert password not in text and password not in (out / "passwd").read_text()

    # removed from the registry: its certificate is revoked the next time the files are written
    registry(capsys, data, "remove", "dev-1")
    code, text = iotfsm(capsys, *command)
    assert code == 0 and "revoked the certificates of S3EUVBRJLB/dev-1" in text
    assert "dev-1" not in (out / "acl").read_text()
    assert (data / "broker-password").read_text().strip() == password  # kept, not replaced

    code, text = iotfsm(capsys, *command, "--reload")
    assert code == 1 and "no running broker recorded" in text


def test_broker_config_refuses_one_port_for_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = iotfsm(
        capsys, "broker-config", "mosquitto", "--data-dir", str(tmp_path / "p"),
        "--out", str(tmp_path / "o"), "--device-port", "8883", "--platform-port", "8883",
    )  # fmt: skip
    assert code == 1 and "different ports" in text
