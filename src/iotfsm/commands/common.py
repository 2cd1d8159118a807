"""What every long-running command shares: one-line errors, signals, JSON-lines events."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

import attrs

if TYPE_CHECKING:  # imported where used: paho and the machines are no cost of `iotfsm registry`
    from ..adapters.connect import MqttOptions
    from ..fsm.trace import StepRecord

STORE_DAMAGED = 3
"""Exit code when the platform store is damaged: not 1 (any CommandError) nor 2 (argparse's usage
errors), so a supervisor can stop restarting a platform that cannot start on its store."""

EXIT_CODES = f"""exit codes:
  0  done
  1  a problem the message names (a broker out of reach, a missing file, a bad value)
  2  a usage error (an unknown or missing option)
  {STORE_DAMAGED}  the platform store (platform.sqlite3) is damaged: restore it from a backup, or
     start once with `iotfsm platform --reset-store` (moves it aside, keeping it)
"""
"""The epilog of every command that opens the platform store."""


class CommandError(Exception):
    """A problem the user can fix; the command prints its message on one line and exits with
    `exit_code` (1 unless a more telling one is given)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


PSK_ENV = "IOTFSM_PSK"
PASSWORD_ENV = "IOTFSM_BROKER_PASSWORD"


def parse_address(option: str, value: str, example: str = "127.0.0.1:8080") -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets: `[::1]:8080`) as (host, port), the host without
    brackets; port 0 asks for a free port. Anything else is a CommandError that names the flag,
    says what is wrong and shows `example`."""
    usage = f"{option} {value!r} must be HOST:PORT, e.g. {example}"
    if value.startswith("["):
        host, close, rest = value[1:].partition("]")
        if not close or not host:
            raise CommandError(f"{usage}: an IPv6 address goes in brackets, e.g. [::1]:8080")
        if not rest.startswith(":"):
            raise CommandError(f"{usage}: no port after the address")
        port = rest[1:]
    else:
        host, sep, port = value.partition(":")
        if ":" in port:
            raise CommandError(f"{usage}: put an IPv6 address in brackets, e.g. [::1]:8080")
        if not sep:
            raise CommandError(f"{usage}: no port")
        if not host:
            raise CommandError(f"{usage}: no host")
    if not port.isascii() or not port.isdigit():
        raise CommandError(f"{usage}: the port {port!r} is not a number")
    if int(port) > 65535:
        raise CommandError(f"{usage}: the port {port} is out of range (0-65535)")
    return host, int(port)


def check_ca(path: Path | None) -> MqttOptions:
    """MQTT options for an agent: a CA file that must exist, and a patient reconnect."""
    if path is not None and not path.is_file():
        raise CommandError(f"--tls-ca {path}: no such file")
    from ..adapters.connect import MqttOptions

    return MqttOptions(ca_file=path, backoff_min=0.5, backoff_max=30.0)


def add_login_arguments(parser: argparse.ArgumentParser, *, device: bool) -> None:
    """How an agent logs in to the broker. Secrets come from files or the environment, because
    argv is visible to every user of the machine in `ps`."""
    group = parser.add_argument_group("broker login (secrets from files or the environment)")
    group.add_argument("--cert", type=Path, help="client certificate (PEM) for mutual TLS")
    group.add_argument("--key", type=Path, help="the certificate's private key (PEM, mode 0600)")
    if device:
        group.add_argument(
            "--psk-file", type=Path, help=f"file holding the device key (mode 0600); or ${PSK_ENV}"
        )
        group.add_argument("--psk", help=argparse.SUPPRESS)  # deprecated: visible in `ps`
    else:
        group.add_argument("--username", help="the platform's broker username")
        group.add_argument(
            "--password-file",
            type=Path,
            help=f"file holding the broker password (mode 0600); or ${PASSWORD_ENV}",
        )


def read_secret(path: Path | None, env: str, flag: str) -> str | None:
    """A secret from `path` (refused when group or others may read it) or else from `env`."""
    if path is None:
        return os.environ.get(env) or None
    _check_private(path, flag)
    secret = path.read_text().strip()
    if not secret:
        raise CommandError(f"{flag} {path} is empty")
    return secret


def _check_private(path: Path, flag: str) -> None:
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        raise CommandError(f"{flag} {path}: no such file") from None
    if mode & 0o077:
        raise CommandError(
            f"{flag} {path} may be read by others (mode {mode:03o}); run `chmod 600 {path}`"
        )


def login_options(args: argparse.Namespace, *, device: bool) -> tuple[MqttOptions, str | None]:
    """MQTT options from the login flags, and a device's key (None for certificate devices and
    for the platform)."""
    options = check_ca(args.tls_ca)
    if (args.cert is None) != (args.key is None):
        raise CommandError("--cert and --key go together: a certificate and its private key")
    if args.cert is not None:
        if not args.cert.is_file():
            raise CommandError(f"--cert {args.cert}: no such file")
        _check_private(args.key, "--key")
        options = attrs.evolve(options, certfile=args.cert, keyfile=args.key)
    if device:
        psk = read_secret(args.psk_file, PSK_ENV, "--psk-file")
        if psk is None and args.psk:
            print(
                "iotfsm device: WARNING --psk puts the key in argv, where `ps` shows it to "
                f"every user; use --psk-file or ${PSK_ENV}",
                file=sys.stderr,
            )
            psk = args.psk
        if psk is not None and args.cert is not None:
            raise CommandError("give a device key or a client certificate, not both")
        if psk is None and args.cert is None:
            raise CommandError(
                f"no login: give --psk-file (or ${PSK_ENV}) for a key device, "
                "or --cert and --key for a certificate device"
            )
        return options, psk
    password = read_secret(args.password_file, PASSWORD_ENV, "--password-file")
    if password is not None and args.username is None:
        raise CommandError("a broker password needs --username")
    if args.username is not None and password is None:
        raise CommandError(f"--username {args.username} needs --password-file or ${PASSWORD_ENV}")
    return attrs.evolve(options, username=args.username, password=password), None


def wait_connected(
    connected: Callable[[], bool], stop: threading.Event, timeout: float, broker: str
) -> bool:
    """Wait for the first connection; False if a signal came first. Raises CommandError when
    the broker cannot be reached in time (an agent started against a wrong URL says so)."""
    waited = 0.0
    while not connected():
        if stop.wait(0.05):
            # Connected within the last poll, before the signal was seen: that counts as
            # started (a fast OTA can be over, and the agent told to stop, within 50 ms).
            return connected()
        waited += 0.05
        if waited >= timeout:
            raise CommandError(f"cannot reach the broker at {broker} within {timeout:g} s")
    return True


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so a command can stop gracefully."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


class JsonLines:
    """`--events jsonl`: one JSON object per state change, flushed at once for pipes."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self._lock = threading.Lock()

    def step(self, record: StepRecord) -> None:
        if not record.handled or record.source == record.dest:
            return
        self.write(
            {
                "event": "state",
                "machine": record.machine,
                "product": record.key[0],
                "device": record.key[1],
                "from": record.source,
                "trigger": record.trigger,
                "to": record.dest,
            }
        )

    def write(self, doc: dict[str, Any]) -> None:
        line = json.dumps({"time": round(time.time(), 3), **doc}, separators=(",", ":"))
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()
