"""A ready Mosquitto configuration for a device registry: listeners, TLS, ACL, platform login.

Two listeners share one broker. Devices connect to the first with a client certificate signed by
the platform CA (`require_certificate`, `use_identity_as_username`: the certificate's common name
`{product}/{device}` becomes the username, no password involved) and are checked against the CRL.
The platform connects to the second over TLS with a username and password from a password file.

The ACL gives each enabled certificate device a `user` block with exactly its own topics (publish
its up topics, read its down topics), built from the features' topic pairs; the platform's block
gets the `+/+` wildcards. Per-device blocks rather than `pattern` rules, although Mosquitto 2.0.11
does substitute a `%u` that contains `/` (measured, and tests/test_mosquitto_secure.py checks it):
a pattern applies to every certificate the CA ever signed, and 2.0.11 has no rule that overrides
it (`topic deny #` in a user block is ignored once a pattern allows), so a disabled device would
keep its topics. User blocks are re-read on SIGHUP and apply at once to connections already open;
the CRL (also re-read on SIGHUP) refuses a revoked certificate's next connection.

The password file is written here in Mosquitto's own PBKDF2-SHA512 format (`$7$`, the format
`mosquitto_passwd` writes, checked against it in the tests) rather than by running
`mosquitto_passwd`, so no secret goes through argv; the dynamic-security plugin was not used
because its state is a JSON file the broker rewrites itself and changes go through an admin
client over MQTT, where two static files reloaded by SIGHUP do the same job.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import signal
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from ...machines import all_features
from ...machines.feature import DeviceKey, Direction
from ..durable import create_file_exclusive, write_file_atomic
from ..identity.certificates import PlatformCA, device_identity
from ..identity.registry import device_topics
from ..topics import template_filter

PLATFORM_USERNAME = "iotfsm-platform"
PLATFORM_PASSWORD_FILE = "broker-password"
"""Kept in the platform's data directory (0600): what `iotfsm platform --password-file` reads."""

_PBKDF2_ITERATIONS = 10_000
_SALT_BYTES = 12


class MosquittoConfigError(ValueError):
    """The configuration cannot be written as asked."""


def hash_password(password: str, *, iterations: int = _PBKDF2_ITERATIONS) -> str:
    """A password-file hash in Mosquitto 2's `$7$` (PBKDF2-SHA512) format."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def acl_text(devices: Iterable[DeviceKey], platform_username: str = PLATFORM_USERNAME) -> str:
    """The ACL file: the platform's wildcards, then one block per device."""
    lines = ["# written by `iotfsm broker-config mosquitto`; regenerate, do not edit", ""]
    lines.append(f"user {platform_username}")
    lines += [f"topic read {topic}" for topic in _every_device("up")]
    lines += [f"topic write {topic}" for topic in _every_device("down")]
    for key in sorted(set(devices)):
        publish, subscribe = device_topics(key)
        lines += ["", f"user {device_identity(key)}"]
        lines += [f"topic write {topic}" for topic in publish]
        lines += [f"topic read {topic}" for topic in subscribe]
    return "\n".join(lines) + "\n"


def _every_device(direction: Direction) -> list[str]:
    """The platform's filters: every feature's topic of `direction` for `+/+`."""
    templates = (f.topic_template(direction) for f in all_features())
    # "" is a direction a feature does not use (broadcast sends nothing up)
    return list(dict.fromkeys(template_filter(t, "+", "+") for t in templates if t))


@attrs.frozen
class MosquittoSetup:
    """What the operator chooses; everything else follows from the registry and the CA."""

    bind: str = "0.0.0.0"
    device_port: int = 8883
    platform_port: int = 8884
    server_names: Sequence[str] = ("localhost", "127.0.0.1")
    """Names and addresses clients use to reach the broker: its certificate is valid for them."""
    platform_username: str = PLATFORM_USERNAME
    persistence: bool = True
    """Keep the platform's persistent session (its queued reports) across broker restarts."""
    log_file: Path | None = None
    """None: Mosquitto's default (stderr, or syslog when run as a service)."""
    user: str | None = None
    """The account Mosquitto switches to when started as root (None: its default, `mosquitto`);
    it must be able to read the files written here. Test brokers in private directories use
    `root`."""


@attrs.frozen
class MosquittoFiles:
    directory: Path
    config: Path
    acl: Path
    password: Path
    ca: Path
    crl: Path
    server_cert: Path
    server_key: Path
    pid_file: Path
    platform_password_file: Path


def files_in(out_dir: Path, data_dir: Path) -> MosquittoFiles:
    return MosquittoFiles(
        directory=out_dir,
        config=out_dir / "mosquitto.conf",
        acl=out_dir / "acl",
        password=out_dir / "passwd",
        ca=out_dir / "ca.crt",
        crl=out_dir / "crl.pem",
        server_cert=out_dir / "broker.crt",
        server_key=out_dir / "broker.key",
        pid_file=out_dir / "mosquitto.pid",
        platform_password_file=data_dir / PLATFORM_PASSWORD_FILE,
    )


def platform_password(data_dir: Path) -> str:
    """The platform's broker password, made (0600) on first use and reused after."""
    path = data_dir / PLATFORM_PASSWORD_FILE
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # a process racing this one made it
            create_file_exclusive(path, secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def write_config(
    out_dir: Path, data_dir: Path, devices: Iterable[DeviceKey], setup: MosquittoSetup
) -> MosquittoFiles:
    """Write every file Mosquitto needs into `out_dir`; the CA is made in `data_dir` if new."""
    if setup.device_port == setup.platform_port:
        raise MosquittoConfigError("the device and the platform listener need different ports")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = files_in(out_dir, data_dir)
    ca = PlatformCA.in_data_dir(data_dir).ensure()
    ca.issue_server(list(setup.server_names), out_dir, name="broker")
    password = platform_password(data_dir)
    write_file_atomic(
        files.password, f"{setup.platform_username}:{hash_password(password)}\n", 0o600
    )
    write_access(files, data_dir, devices, setup.platform_username)
    lines = [
        "# written by `iotfsm broker-config mosquitto`",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {files.password}",
        f"acl_file {files.acl}",
        f"pid_file {files.pid_file}",
        f"persistence {'true' if setup.persistence else 'false'}",
    ]
    if setup.persistence:
        lines.append(f"persistence_location {out_dir}/")
    if setup.log_file is not None:
        lines += [f"log_dest file {setup.log_file}", "log_type all", "log_timestamp true"]
    if setup.user is not None:
        lines.append(f"user {setup.user}")
    lines += [
        "",
        "# devices: a client certificate from the platform CA is the login",
        f"listener {setup.device_port} {setup.bind}",
        f"cafile {files.ca}",
        f"certfile {files.server_cert}",
        f"keyfile {files.server_key}",
        f"crlfile {files.crl}",
        "require_certificate true",
        "use_identity_as_username true",
        "",
        "# the platform: TLS, username and password",
        f"listener {setup.platform_port} {setup.bind}",
        f"cafile {files.ca}",
        f"certfile {files.server_cert}",
        f"keyfile {files.server_key}",
    ]
    write_file_atomic(files.config, "\n".join(lines) + "\n", 0o644)
    return files


def write_access(
    files: MosquittoFiles,
    data_dir: Path,
    devices: Iterable[DeviceKey],
    platform_username: str = PLATFORM_USERNAME,
) -> None:
    """Rewrite what changes with the registry: the ACL, the CA and the CRL. Then `reload`."""
    ca = PlatformCA.in_data_dir(data_dir)
    ca.write_crl()
    write_file_atomic(files.acl, acl_text(devices, platform_username), 0o644)
    _copy(ca.cert_file, files.ca)
    _copy(ca.crl_file, files.crl)


def reload(files: MosquittoFiles) -> int:
    """SIGHUP the broker named by the pid file: Mosquitto 2.0.11 re-reads the ACL, the password
    file and the CRL, and applies the ACL to clients already connected. Returns the pid."""
    try:
        pid = int(files.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        raise MosquittoConfigError(
            f"no running broker recorded in {files.pid_file}: start mosquitto with "
            f"-c {files.config}"
        ) from None
    os.kill(pid, signal.SIGHUP)
    return pid


def _copy(source: Path, dest: Path) -> None:
    write_file_atomic(dest, source.read_bytes(), 0o644)
