"""The platform CA: file modes, names, revocation, and the certificate a broker will verify."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from iotfsm.adapters.identity.certificates import CertificateError, PlatformCA, device_identity
from iotfsm.machines.feature import DeviceKey

KEY = DeviceKey("S3EUVBRJLB", "dev:1")


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_ca_and_device_keys_are_private(tmp_path: Path) -> None:
    ca = PlatformCA.in_data_dir(tmp_path).ensure()
    issued = ca.issue_device(KEY, tmp_path / "out")
    assert mode(ca.directory) == 0o700
    assert mode(ca.key_file) == mode(issued.key_file) == mode(ca.index_file) == 0o600
    assert mode(issued.cert_file) == mode(ca.cert_file) == 0o644
    assert issued.cert_file.name == "S3EUVBRJLB-dev_1.crt"


def test_device_certificate_names_product_and_device_and_verifies(tmp_path: Path) -> None:
    ca = PlatformCA.in_data_dir(tmp_path).ensure()
    issued = ca.issue_device(KEY, tmp_path / "out")
    cert = x509.load_pem_x509_certificate(issued.cert_file.read_bytes())
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == device_identity(KEY) == "S3EUVBRJLB/dev:1"
    assert cert.serial_number == issued.serial
    # a strict verifier (what Python and Mosquitto's OpenSSL use) accepts the chain's CA file
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    context.load_cert_chain(str(issued.cert_file), str(issued.key_file))


def test_bad_names_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    ca = PlatformCA.in_data_dir(tmp_path).ensure()
    for bad in (DeviceKey("S3EUVBRJLB", "a/b"), DeviceKey("S3EUVBRJLB", "+"), DeviceKey("", "d")):
        with pytest.raises(CertificateError):
            ca.issue_device(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert ca.issued_devices() == set()


def test_a_readable_ca_key_is_refused(tmp_path: Path) -> None:
    ca = PlatformCA.in_data_dir(tmp_path).ensure()
    os.chmod(ca.key_file, 0o644)
    with pytest.raises(CertificateError, match="chmod 600"):
        ca.issue_device(KEY, tmp_path / "out")
    with pytest.raises(CertificateError, match="readable by others"):
        ca.ensure()


def test_without_a_ca_issuing_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="no platform CA"):
        PlatformCA.in_data_dir(tmp_path).issue_device(KEY, tmp_path / "out")


def test_revoking_lists_every_serial_of_the_device_in_the_crl(tmp_path: Path) -> None:
    ca = PlatformCA.in_data_dir(tmp_path).ensure()
    first = ca.issue_device(KEY, tmp_path / "a")
    second = ca.issue_device(KEY, tmp_path / "b")
    other = ca.issue_device(DeviceKey("S3EUVBRJLB", "dev-2"), tmp_path / "c")
    assert sorted(ca.revoke_device(KEY)) == sorted([first.serial, second.serial])
    assert ca.revoke_device(KEY) == []  # again: nothing left to revoke, not an error
    crl = x509.load_pem_x509_crl(ca.crl_file.read_bytes())
    assert {r.serial_number for r in crl} == {first.serial, second.serial}
    assert other.serial not in ca.revoked_serials()
    assert ca.issued_devices() == {DeviceKey("S3EUVBRJLB", "dev-2")}
