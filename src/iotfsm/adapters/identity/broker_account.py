"""The platform's own broker login: one account that may read every uplink and write every downlink.

A broker that checks identities (RabbitMQ through the platform's auth endpoints, Mosquitto through a
password file) must let the platform in too, under an account no device can claim. The password is
generated once into `data_dir/broker-password` (mode 0600, created exclusively so a concurrent
start cannot read a half-written file) or given by the operator in a file; it never goes into argv
or a log.
"""

from __future__ import annotations

import contextlib
import hmac
import re
import secrets
from pathlib import Path

import attrs

from ..durable import create_file_exclusive

PLATFORM_USERNAME = "iotfsm-platform"
PASSWORD_FILE = "broker-password"

_USERNAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class BrokerAccountError(ValueError):
    """An account name or password file the platform cannot log in with."""


def _check_username(_instance: object, _attribute: object, value: str) -> None:
    # No ';': a device username always holds three, so the two kinds can never be confused.
    if not isinstance(value, str) or not _USERNAME.fullmatch(value):
        raise BrokerAccountError(
            f"broker account name {value!r} must be 1-64 letters, digits, '.', '_' or '-'"
        )


@attrs.frozen
class BrokerAccount:
    username: str = attrs.field(validator=_check_username)
    password: str = attrs.field(repr=False)

    def matches(self, username: str, password: str) -> bool:
        """Constant-time check of a login against this account."""
        same_name = hmac.compare_digest(username.encode(), self.username.encode())
        same_password = hmac.compare_digest(password.encode(), self.password.encode())
        return same_name and same_password


def read_password_file(path: Path) -> str:
    """The first line of `path`; refuses a file others may read, as ssh does with keys."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BrokerAccountError(f"cannot read the password file {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise BrokerAccountError(
            f"password file {path} is readable by others (mode {mode & 0o777:o}); "
            f"run `chmod 600 {path}`"
        )
    password = text.splitlines()[0].strip() if text.strip() else ""
    if not password:
        raise BrokerAccountError(f"password file {path} is empty")
    return password


def platform_account(data_dir: Path, username: str = PLATFORM_USERNAME) -> BrokerAccount:
    """The platform's account, its password generated into `data_dir` on first use."""
    path = data_dir / PASSWORD_FILE
    with contextlib.suppress(FileExistsError):  # made before, or by a process racing this one
        create_file_exclusive(path, secrets.token_urlsafe(32) + "\n")
    return BrokerAccount(username, read_password_file(path))
