"""Tencent IoT Hub MQTT login for devices that authenticate with a device key (PSK).

The platform derives the MQTT client id, username and password from the product id, the device name
and the device key (PROTOCOL.md, "MQTT access with a device key"). Both roles need the same
derivation: a device computes its login; a platform that runs its own broker parses the username and
recomputes the password to check it. Keeping it in one small, pure module makes the published check
vector testable without a network.

The key and every password are secrets: they never appear in a repr, and this module never logs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import string
import time
from typing import Literal

import attrs

Algorithm = Literal["hmacsha256", "hmacsha1"]
"""The suffix after `;` in the password names the HMAC used to sign the username."""

SDKAPPID_DOCS = "12010126"
"""The sdkappid in Tencent's documentation (and in the PROTOCOL.md check vector)."""

SDKAPPID_SDK = "21010406"
"""The sdkappid that Tencent's C and Python device SDKs send."""

DEFAULT_EXPIRY = 4102444800
"""2100-01-01T00:00:00Z. Key-authenticated devices send a far-future expiry so that a long-lived
connection is never refused on reconnect; the SDKs use similar huge values."""

CONNID_LENGTH = 5

_DEVICE_NAME = re.compile(r"[A-Za-z0-9:_-]{1,48}")
_PRODUCT_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_CONNID = re.compile(r"[A-Za-z0-9]+")
_EXPIRY = re.compile(r"[0-9]{1,32}")
_SDKAPPID = re.compile(r"[0-9]{1,32}")
_CONNID_ALPHABET = string.ascii_letters + string.digits
_DIGESTS = {"hmacsha256": hashlib.sha256, "hmacsha1": hashlib.sha1}


def check_product_id(product_id: str) -> str:
    """Return `product_id` unchanged, or raise ValueError saying what a valid one looks like."""
    if not isinstance(product_id, str) or not _PRODUCT_ID.fullmatch(product_id):
        raise ValueError(
            f"invalid product id {product_id!r}: expected 1-32 ASCII letters or digits "
            "(Tencent product ids look like 'S3EUVBRJLB'); copy it from the IoT Hub console"
        )
    return product_id


def check_device_name(device_name: str) -> str:
    """Return `device_name` unchanged, or raise ValueError quoting the platform's naming rule."""
    if not isinstance(device_name, str) or not _DEVICE_NAME.fullmatch(device_name):
        raise ValueError(
            f"invalid device name {device_name!r}: Tencent IoT Hub device names are 1-48 "
            "characters from [a-zA-Z0-9:_-]"
        )
    return device_name


def _decode_psk(psk: str) -> bytes:
    try:
        key = base64.b64decode(psk.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        key = b""
    if not key:
        # The message must not quote the key: it is a secret even when it is malformed.
        raise ValueError(
            "invalid device key (psk): expected the base64 string shown as the device secret in "
            f"the IoT Hub console ({len(psk)} characters given, not valid base64)"
        )
    return key


def _check_psk(_instance: object, _attribute: object, psk: str) -> None:
    if not isinstance(psk, str):
        raise ValueError("invalid device key (psk): expected a str holding base64")
    _decode_psk(psk)


def _validate_product_id(_instance: object, _attribute: object, value: str) -> None:
    check_product_id(value)


def _validate_device_name(_instance: object, _attribute: object, value: str) -> None:
    check_device_name(value)


def _check_connid(connid: str) -> str:
    if not isinstance(connid, str) or not _CONNID.fullmatch(connid):
        raise ValueError(
            f"invalid connid {connid!r}: expected ASCII letters and digits "
            f"(the SDKs send {CONNID_LENGTH} random ones)"
        )
    return connid


def _check_expiry(expiry: int | str) -> str:
    """Expiry is opaque (devices send truncated huge numbers): only require decimal digits."""
    text = str(expiry) if isinstance(expiry, int) and not isinstance(expiry, bool) else expiry
    if not isinstance(text, str) or not _EXPIRY.fullmatch(text):
        raise ValueError(
            f"invalid expiry {expiry!r}: expected unix seconds as a non-negative decimal number"
        )
    return text


def _check_sdkappid(sdkappid: int | str) -> str:
    text = (
        str(sdkappid) if isinstance(sdkappid, int) and not isinstance(sdkappid, bool) else sdkappid
    )
    if not isinstance(text, str) or not _SDKAPPID.fullmatch(text):
        raise ValueError(
            f"invalid sdkappid {sdkappid!r}: expected decimal digits such as {SDKAPPID_DOCS}"
        )
    return text


def random_connid() -> str:
    """A fresh connection id: 5 alphanumerics from `secrets`, as the SDKs do on every login."""
    return "".join(secrets.choice(_CONNID_ALPHABET) for _ in range(CONNID_LENGTH))


@attrs.frozen
class MqttLogin:
    """Everything an MQTT client sends to log in. The password stays out of the repr."""

    client_id: str
    username: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class ParsedUsername:
    """The four `;`-separated parts of a key-device username, as the platform receives them."""

    client_id: str
    sdkappid: str
    connid: str
    expiry: str
    """Kept as text: real devices send values that overflow 64-bit integers."""

    def device_name(self, product_id: str) -> str:
        """The device name, given the product the platform expects this client to belong to.

        The client id is `{pid}{dn}` with no separator, so it can only be split by a product id
        the caller already knows (from the client id's prefix in its product registry).
        """
        check_product_id(product_id)
        if not self.client_id.startswith(product_id):
            raise ValueError(
                f"client id {self.client_id!r} does not belong to product {product_id!r}: "
                "it must start with the product id"
            )
        return check_device_name(self.client_id[len(product_id) :])


def parse_username(username: str) -> ParsedUsername:
    """Split `{pid}{dn};{sdkappid};{connid};{expiry}`; raise ValueError naming the bad part."""
    parts = username.split(";")
    if len(parts) != 4:
        raise ValueError(
            f"invalid MQTT username {username!r}: expected "
            "'{productid}{devicename};{sdkappid};{connid};{expiry}' (four ';'-separated fields)"
        )
    client_id, sdkappid, connid, expiry = parts
    if not client_id:
        raise ValueError(f"invalid MQTT username {username!r}: the client id part is empty")
    return ParsedUsername(
        client_id=client_id,
        sdkappid=_check_sdkappid(sdkappid),
        connid=_check_connid(connid),
        expiry=_check_expiry(expiry),
    )


@attrs.frozen
class DeviceCredentials:
    """A key-authenticated device's identity. Validated on construction so that a typo in a product
    id or device name fails here, with the naming rule, rather than as a refused CONNECT later."""

    product_id: str = attrs.field(validator=_validate_product_id)
    device_name: str = attrs.field(validator=_validate_device_name)
    psk: str = attrs.field(repr=False, validator=_check_psk)

    def client_id(self) -> str:
        return f"{self.product_id}{self.device_name}"

    def username(
        self,
        connid: str | None = None,
        expiry: int | str | None = None,
        sdkappid: int | str = SDKAPPID_DOCS,
    ) -> str:
        """`{pid}{dn};{sdkappid};{connid};{expiry}`; a random connid and a far-future expiry by
        default, which is what the device SDKs send."""
        connid_text = random_connid() if connid is None else _check_connid(connid)
        expiry_text = _check_expiry(DEFAULT_EXPIRY if expiry is None else expiry)
        return f"{self.client_id()};{_check_sdkappid(sdkappid)};{connid_text};{expiry_text}"

    def password(self, username: str, algorithm: Algorithm = "hmacsha256") -> str:
        """hex(HMAC(base64decode(psk), username)) + ";" + algorithm."""
        digest = _DIGESTS.get(algorithm)
        if digest is None:
            raise ValueError(
                f"unknown signing algorithm {algorithm!r}: use 'hmacsha256' or 'hmacsha1'"
            )
        mac = hmac.new(_decode_psk(self.psk), username.encode("utf-8"), digest)
        return f"{mac.hexdigest()};{algorithm}"

    def login(
        self,
        connid: str | None = None,
        expiry: int | str | None = None,
        sdkappid: int | str = SDKAPPID_DOCS,
        algorithm: Algorithm = "hmacsha256",
    ) -> MqttLogin:
        """Client id, username and password in one go, for `MqttSettings`."""
        username = self.username(connid=connid, expiry=expiry, sdkappid=sdkappid)
        return MqttLogin(
            client_id=self.client_id(),
            username=username,
            password=self.password(username, algorithm),
        )

    def verify_password(self, username: str, password: str, *, now: float | None = None) -> bool:
        """Platform side: does `password` sign `username` with this device's key, and is the
        username's expiry still ahead of `now` (default: the wall clock)?

        Accepts either algorithm, as real devices use both. Compared in constant time. A
        username that does not parse, names another device, or has expired is refused: a
        captured login must stop working when its expiry passes.
        """
        try:
            parsed = parse_username(username)
        except ValueError:
            return False
        if parsed.client_id != self.client_id():
            return False
        if int(parsed.expiry) < (time.time() if now is None else now):
            return False
        _, _, suffix = password.rpartition(";")
        algorithm: Algorithm
        if suffix == "hmacsha256":
            algorithm = "hmacsha256"
        elif suffix == "hmacsha1":
            algorithm = "hmacsha1"
        else:
            return False
        expected = self.password(username, algorithm)
        return hmac.compare_digest(expected.encode("utf-8"), password.encode("utf-8"))
