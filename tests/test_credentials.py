"""Tencent key-device MQTT login: the published check vector, HMAC-SHA1, and refused inputs."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from iotfsm.adapters.identity.credentials import (
    DEFAULT_EXPIRY,
    SDKAPPID_DOCS,
    SDKAPPID_SDK,
    DeviceCredentials,
    parse_username,
    random_connid,
)

# PROTOCOL.md, "MQTT access with a device key".
PID = "S3EUVBRJLB"
DN = "test_device"
PSK = "vX6PQqazsGsMyf5SMfs6OA6y"
USERNAME = "S3EUVBRJLBtest_device;12010126;BzaMF;2147483647"
PASSWORD = "21a8ebb4e833be2f0d8b4dff1f77d2903591997c294f1f1782c40e171bbe054d;hmacsha256"


@pytest.fixture
def device() -> DeviceCredentials:
    return DeviceCredentials(PID, DN, PSK)


def test_check_vector_is_reproduced_exactly(device: DeviceCredentials) -> None:
    assert device.client_id() == "S3EUVBRJLBtest_device"
    username = device.username(connid="BzaMF", expiry=2147483647, sdkappid=SDKAPPID_DOCS)
    assert username == USERNAME
    assert device.password(username) == PASSWORD
    login = device.login(connid="BzaMF", expiry="2147483647")
    assert (login.client_id, login.username, login.password) == (
        "S3EUVBRJLBtest_device",
        USERNAME,
        PASSWORD,
    )


def test_hmacsha1_password_signs_with_the_decoded_key(device: DeviceCredentials) -> None:
    expected = hmac.new(base64.b64decode(PSK), USERNAME.encode(), hashlib.sha1).hexdigest()
    password = device.password(USERNAME, "hmacsha1")
    assert password == f"{expected};hmacsha1"
    assert len(expected) == 40
    assert device.verify_password(USERNAME, password)


def test_verify_password_accepts_both_algorithms_and_refuses_forgeries(
    device: DeviceCredentials,
) -> None:
    assert device.verify_password(USERNAME, PASSWORD)
    assert not device.verify_password(USERNAME.replace("BzaMF", "BzaMG"), PASSWORD)
    assert not device.verify_password(USERNAME, PASSWORD.replace(";hmacsha256", ";hmacsha1"))
    assert not device.verify_password(USERNAME, PASSWORD.replace(";hmacsha256", ";md5"))
    assert not device.verify_password(USERNAME, PASSWORD.partition(";")[0])
    other = DeviceCredentials(PID, DN, base64.b64encode(b"another key!").decode())
    assert not other.verify_password(USERNAME, PASSWORD)


def test_defaults_random_connid_and_far_future_expiry(device: DeviceCredentials) -> None:
    first = parse_username(device.username())
    second = parse_username(device.username())
    assert first.client_id == device.client_id()
    assert first.sdkappid == SDKAPPID_DOCS
    assert first.expiry == str(DEFAULT_EXPIRY)
    assert int(first.expiry) > 2**31  # beyond 2038
    assert len(first.connid) == 5
    assert first.connid.isalnum()
    # 62**5 possibilities: two equal draws would point at a broken generator.
    assert first.connid != second.connid
    assert all(
        len(c) == 5 and c.isascii() and c.isalnum() for c in (random_connid() for _ in range(3))
    )
    assert device.username(sdkappid=SDKAPPID_SDK).split(";")[1] == "21010406"


def test_expiry_is_opaque(device: DeviceCredentials) -> None:
    truncated = "92233720368547758"  # what the C SDK really sends
    username = device.username(connid="AAAAA", expiry=truncated)
    assert parse_username(username).expiry == truncated
    assert device.username(connid="AAAAA", expiry=int(truncated)) == username


def test_parse_username_round_trip_and_device_name(device: DeviceCredentials) -> None:
    parsed = parse_username(USERNAME)
    assert parsed.client_id == "S3EUVBRJLBtest_device"
    assert (parsed.sdkappid, parsed.connid, parsed.expiry) == ("12010126", "BzaMF", "2147483647")
    assert parsed.device_name(PID) == DN
    with pytest.raises(ValueError, match="does not belong to product"):
        parsed.device_name("OTHERPID00")


@pytest.mark.parametrize(
    "username",
    [
        "S3EUVBRJLBtest_device;12010126;BzaMF",
        "S3EUVBRJLBtest_device;12010126;BzaMF;2147483647;extra",
        ";12010126;BzaMF;2147483647",
        "S3EUVBRJLBtest_device;abc;BzaMF;2147483647",
        "S3EUVBRJLBtest_device;12010126;Bz-MF;2147483647",
        "S3EUVBRJLBtest_device;12010126;BzaMF;-1",
    ],
)
def test_parse_username_refuses_malformed(username: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        parse_username(username)


@pytest.mark.parametrize(
    "device_name",
    ["", "a" * 49, "bad name", "bad/name", "bad;name", "dévice", "$ota"],
)
def test_bad_device_names_are_refused_with_the_rule(device_name: str) -> None:
    with pytest.raises(ValueError, match=r"\[a-zA-Z0-9:_-\]"):
        DeviceCredentials(PID, device_name, PSK)


@pytest.mark.parametrize("device_name", ["a", "a" * 48, "dev:1_2-3", "ABC"])
def test_good_device_names_are_accepted(device_name: str) -> None:
    assert DeviceCredentials(PID, device_name, PSK).device_name == device_name


@pytest.mark.parametrize("product_id", ["", "A" * 33, "S3EU-VBRJLB", "S3EU VBRJL", "ПРОДУКТ"])
def test_bad_product_ids_are_refused(product_id: str) -> None:
    with pytest.raises(ValueError, match="product id"):
        DeviceCredentials(product_id, DN, PSK)


@pytest.mark.parametrize("psk", ["", "not base64!", "abc", "ключ"])
def test_bad_keys_are_refused_without_quoting_them(psk: str) -> None:
    with pytest.raises(ValueError, match="device key") as info:
        DeviceCredentials(PID, DN, psk)
    if psk:
        assert psk not in str(info.value)


def test_bad_connid_expiry_sdkappid_and_algorithm(device: DeviceCredentials) -> None:
    with pytest.raises(ValueError, match="connid"):
        device.username(connid="Bz;MF")
    with pytest.raises(ValueError, match="expiry"):
        device.username(expiry="soon")
    with pytest.raises(ValueError, match="expiry"):
        device.username(expiry=-5)
    with pytest.raises(ValueError, match="sdkappid"):
        device.username(sdkappid="12;01")
    with pytest.raises(ValueError, match="hmacsha256"):
        device.password(USERNAME, "md5")  # type: ignore[arg-type]


def test_secrets_stay_out_of_reprs(device: DeviceCredentials) -> None:
    login = device.login()
    assert PSK not in repr(device)
    assert "psk" not in repr(device)
    assert login.password not in repr(login)
    assert login.username in repr(login)


def test_credentials_are_frozen(device: DeviceCredentials) -> None:
    with pytest.raises(AttributeError):
        device.psk = "x"  # type: ignore[misc]


def test_verify_password_refuses_an_expired_username_and_another_devices_username() -> None:
    device = DeviceCredentials("S3EUVBRJLB", "test_device", "vX6PQqazsGsMyf5SMfs6OA6y")
    past = device.login(expiry=1_000)
    assert not device.verify_password(past.username, past.password)
    assert device.verify_password(past.username, past.password, now=999)
    other = DeviceCredentials("S3EUVBRJLB", "other", "vX6PQqazsGsMyf5SMfs6OA6y").login()
    assert not device.verify_password(other.username, other.password)
