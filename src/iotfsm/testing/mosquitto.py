"""A private Mosquitto broker for tests: free port, temp directory, kill and restart on demand.

Transport behaviour that matters (reconnecting after the broker dies, resubscribing, TLS refusal,
shared subscriptions) can only be shown against a real broker, and only if the test controls that
broker's life. So each `Mosquitto` runs its own process on 127.0.0.1 with its own config, log and
certificates in a temp directory, never touching a system broker. `kill()` is SIGKILL so that
clients see a dead peer rather than a polite shutdown; `start()` after it reuses the same port so
clients can reconnect to the address they know.

TLS material is generated with the `openssl` command line (a CA and a server certificate for
127.0.0.1/localhost), because that is what a deployment would do and it keeps Python-side
dependencies out of the test helpers.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from ..adapters.identity.certificates import PlatformCA
from ..adapters.mqtt.mosquitto_config import (
    MosquittoFiles,
    MosquittoSetup,
    write_access,
    write_config,
)
from ..machines.feature import DeviceKey
from .server import LOCALHOST, ServerController, end_process, free_port

log = logging.getLogger(__name__)

_SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin", "/opt/homebrew/bin")
_LOCALHOST = LOCALHOST


class MosquittoNotFoundError(RuntimeError):
    """The `mosquitto` binary is not installed (or not where we looked)."""


class MosquittoStartError(RuntimeError):
    """The broker process exited or did not open its port in time."""


class OpenSSLError(RuntimeError):
    """The `openssl` command line failed or is missing."""


def find_mosquitto() -> str:
    """The path of the `mosquitto` binary. Debian installs it in /usr/sbin, which is often not on
    a normal user's PATH, so look there too before failing with the install command."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for directory in _SEARCH_DIRS:
        candidate = Path(directory) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise MosquittoNotFoundError(
        "the mosquitto broker binary was not found on PATH or in "
        f"{', '.join(_SEARCH_DIRS)}; install it (Debian/Ubuntu: `apt-get install mosquitto`, "
        "macOS: `brew install mosquitto`) or pass binary=... to Mosquitto()"
    )


# --- certificates -------------------------------------------------------------------------------


@attrs.frozen
class CertificateAuthority:
    """A CA made for one test run: its certificate (what clients trust) and its private key."""

    cert_file: Path
    key_file: Path


@attrs.frozen
class ServerCertificate:
    cert_file: Path
    key_file: Path


def _openssl(args: Sequence[str], cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise OpenSSLError(
            "the openssl command line is needed to make test certificates; "
            "install it (Debian/Ubuntu: `apt-get install openssl`)"
        )
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise OpenSSLError(
            f"openssl {args[0]} failed ({result.returncode}): {result.stderr.strip()}"
        )


def _ec_key_args() -> list[str]:
    # P-256 keys are generated in milliseconds, RSA keys in tenths of a second.
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def make_ca(
    directory: Path, common_name: str = "iotfsm test CA", days: int = 2
) -> CertificateAuthority:
    """Create a self-signed CA in `directory` (files named after `common_name`).

    A private config is used so the system openssl.cnf cannot add or duplicate extensions; the
    extensions are the ones strict verifiers (Python 3.13's VERIFY_X509_STRICT) insist on.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() else "-" for c in common_name).strip("-").lower() or "ca"
    config = directory / f"{stem}.cnf"
    config.write_text(
        "[req]\n"
        "distinguished_name = dn\n"
        "prompt = no\n"
        "[dn]\n"
        f"CN = {common_name}\n"
        "[v3_ca]\n"
        "basicConstraints = critical, CA:TRUE\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid:always\n"
    )
    ca = CertificateAuthority(
        cert_file=directory / f"{stem}.crt", key_file=directory / f"{stem}.key"
    )
    _openssl(
        [
            "req", "-x509", "-config", config.name, "-extensions", "v3_ca", *_ec_key_args(),
            "-keyout", ca.key_file.name, "-out", ca.cert_file.name, "-days", str(days),
        ],
        cwd=directory,
    )  # fmt: skip
    return ca


def issue_server_certificate(
    ca: CertificateAuthority,
    directory: Path,
    hosts: Sequence[str] = (_LOCALHOST, "localhost"),
    name: str = "server",
    days: int = 2,
) -> ServerCertificate:
    """A server certificate signed by `ca`, valid for `hosts` (IP addresses or DNS names) through
    subjectAltName, which is what hostname checking looks at."""
    directory.mkdir(parents=True, exist_ok=True)
    alt_names = ",".join(f"IP:{host}" if _is_ip_address(host) else f"DNS:{host}" for host in hosts)
    request_config = directory / f"{name}-req.cnf"
    request_config.write_text(
        f"[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {hosts[0]}\n"
    )
    extensions = directory / f"{name}-ext.cnf"
    extensions.write_text(
        "[v3_server]\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        f"subjectAltName = {alt_names}\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid, issuer\n"
    )
    cert = ServerCertificate(
        cert_file=directory / f"{name}.crt", key_file=directory / f"{name}.key"
    )
    csr = directory / f"{name}.csr"
    _openssl(
        ["req", "-new", "-config", request_config.name, *_ec_key_args(),
         "-keyout", cert.key_file.name, "-out", csr.name],
        cwd=directory,
    )  # fmt: skip
    _openssl(
        [
            "x509", "-req", "-in", csr.name, "-CA", str(ca.cert_file), "-CAkey", str(ca.key_file),
            "-set_serial", str(secrets.randbits(63)), "-days", str(days),
            "-extfile", extensions.name, "-extensions", "v3_server", "-out", cert.cert_file.name,
        ],
        cwd=directory,
    )  # fmt: skip
    return cert


def _is_ip_address(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


# --- the broker ---------------------------------------------------------------------------------


class _Process:
    """The parts a finalizer needs, kept apart from `Mosquitto` so that a forgotten broker is
    still killed and its directory removed when the controller is garbage collected or the
    interpreter exits."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.popen: subprocess.Popen[bytes] | None = None

    def signal_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        end_process(self.popen, sig, timeout)
        self.popen = None

    def cleanup(self) -> None:
        self.signal_and_wait(signal.SIGKILL, timeout=5.0)
        shutil.rmtree(self.directory, ignore_errors=True)


class Mosquitto(ServerController):
    """A broker process owned by the caller.

    `Mosquitto()` only prepares (binary, ports, config, certificates); `start()` runs it and waits
    until its ports accept connections. Use it as a context manager (starts on enter, removes
    everything on exit) or call `close()`.
    """

    start_error = MosquittoStartError

    def __init__(
        self,
        *,
        tls: bool = False,
        binary: str | None = None,
        extra_config: str = "",
        startup_timeout: float = 10.0,
    ) -> None:
        self.binary = binary or find_mosquitto()
        super().__init__(prefix="iotfsm-mosquitto-", startup_timeout=startup_timeout)
        self._extra_config = extra_config
        self._process = _Process(self.directory)
        self._clean_up_with(self._process.cleanup)
        self.config_file = self.directory / "mosquitto.conf"
        self.log_file = self.directory / "mosquitto.log"
        self.stderr_file = self.directory / "mosquitto.stderr"
        self.ca: CertificateAuthority | None = None
        self.server_certificate: ServerCertificate | None = None
        try:
            if tls:
                self.ca = make_ca(self.directory / "ca")
                self.server_certificate = issue_server_certificate(
                    self.ca, self.directory / "server"
                )
            self.tls_port: int | None = None
            self._allocate_ports(tls)
            self._ever_started = False
            self._write_config()
        except BaseException:
            self.close()
            raise

    # --- addresses ---

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise RuntimeError(
                "this broker has no TLS listener: create it with Mosquitto(tls=True)"
            )
        return f"mqtts://{self.host}:{self.tls_port}"

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients must trust to reach the TLS listener."""
        if self.ca is None:
            raise RuntimeError(
                "this broker has no TLS listener: create it with Mosquitto(tls=True)"
            )
        return self.ca.cert_file

    def make_unrelated_ca(self, common_name: str = "unrelated test CA") -> CertificateAuthority:
        """A second CA that signed nothing this broker presents: trusting it must fail."""
        return make_ca(self.directory / "unrelated-ca", common_name)

    # --- life cycle ---

    @property
    def running(self) -> bool:
        popen = self._process.popen
        return popen is not None and popen.poll() is None

    @property
    def pid(self) -> int | None:
        popen = self._process.popen
        return popen.pid if popen is not None else None

    def start(self) -> None:
        """Run the broker and return once every listener accepts TCP connections.

        On the very first start a port taken in the meantime by someone else is replaced by a new
        free one; later starts (after `stop`/`kill`) keep the ports, which is the point of them.
        """
        if self.running:
            raise RuntimeError("mosquitto is already running; stop() or kill() it first")
        attempts = 1 if self._ever_started else 3
        for attempt in range(attempts):
            try:
                self._start_once()
            except MosquittoStartError:
                if attempt + 1 < attempts and "Address already in use" in self.log_text():
                    self._allocate_ports(self.tls_port is not None)
                    self._write_config()
                    continue
                raise
            self._ever_started = True
            return

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait: the broker closes client connections cleanly."""
        self._process.signal_and_wait(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL and wait: clients lose the connection as if the host had died."""
        self._process.signal_and_wait(signal.SIGKILL, timeout=5.0)

    def restart(self) -> None:
        """Stop (if running) and start again on the same ports."""
        self.stop()
        self.start()

    @property
    def what(self) -> str:
        return "mosquitto"

    def log_files(self) -> list[Path]:
        """The broker's log and its stderr."""
        return [self.log_file, self.stderr_file]

    def reload(self, timeout: float = 30.0) -> None:
        """SIGHUP, as an operator would after a registry change, and wait until the broker says
        it reloaded (Mosquitto re-reads ACL, password file and CRL on SIGHUP)."""
        popen = self._process.popen
        if popen is None or popen.poll() is not None:
            raise RuntimeError("mosquitto is not running: start() it before reload()")
        before = self.log_text().count("Reloading config")
        popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log_text().count("Reloading config") <= before:
            if time.monotonic() > deadline:
                raise MosquittoStartError(f"mosquitto did not reload; log:\n{self.log_tail()}")
            time.sleep(0.01)

    # --- internals ---

    def _allocate_ports(self, tls: bool) -> None:
        self.port = free_port(self.host)
        self.tls_port = free_port(self.host) if tls else None

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_type subscribe",
            "log_type unsubscribe",
            "connection_messages true",
            "log_timestamp true",
            # Answer small packets at once, as a production broker tuned for latency would.
            "set_tcp_nodelay true",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Started as root, mosquitto drops to the `mosquitto` user, which cannot read this
            # private directory or write its log: tell it to stay root.
            lines.append("user root")
        if self.tls_port is not None:
            assert self.ca is not None and self.server_certificate is not None
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.ca.cert_file}",
                f"certfile {self.server_certificate.cert_file}",
                f"keyfile {self.server_certificate.key_file}",
            ]
        if self._extra_config:
            lines.append(self._extra_config)
        self.config_file.write_text("\n".join(lines) + "\n")

    def _ports(self) -> list[int]:
        return [self.port] + ([self.tls_port] if self.tls_port is not None else [])

    def _start_once(self) -> None:
        with self.stderr_file.open("ab") as stderr:
            self._process.popen = subprocess.Popen(
                [self.binary, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=self.directory,
            )
        deadline = time.monotonic() + self.startup_timeout
        self.wait_accepting(self._ports(), deadline, self._process.popen, self.kill)
        log.debug("mosquitto pid %s listening on %s", self.pid, self._ports())


class SecureMosquitto(Mosquitto):
    """A broker configured exactly as `iotfsm broker-config mosquitto` configures one.

    The configuration comes from the same generator (adapters/mqtt/mosquitto_config.py) for the
    platform data directory `data_dir` and the certificate devices `devices`, so the tests of
    the broker's enforcement test the configuration operators deploy. `port` is the device
    (mutual TLS) listener, `platform_port` the platform's password listener. After a registry
    change, `update_access(devices)` rewrites ACL and CRL and reloads the broker.
    """

    def __init__(
        self,
        data_dir: Path,
        devices: Iterable[DeviceKey] = (),
        *,
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.data_dir = data_dir
        self.devices = list(devices)
        self.platform_port = 0
        self.files: MosquittoFiles | None = None
        super().__init__(binary=binary, startup_timeout=startup_timeout)

    @property
    def url(self) -> str:
        return f"mqtts://{self.host}:{self.port}"

    @property
    def platform_url(self) -> str:
        return f"mqtts://{self.host}:{self.platform_port}"

    @property
    def ca_file(self) -> Path:
        return PlatformCA.in_data_dir(self.data_dir).cert_file

    def update_access(self, devices: Iterable[DeviceKey]) -> None:
        """The registry changed: rewrite ACL and CRL from `devices`, then SIGHUP."""
        assert self.files is not None
        self.devices = list(devices)
        write_access(self.files, self.data_dir, self.devices)
        self.reload()

    def _allocate_ports(self, tls: bool) -> None:
        self.port = free_port(self.host)
        self.platform_port = free_port(self.host)

    def _ports(self) -> list[int]:
        return [self.port, self.platform_port]

    def _write_config(self) -> None:
        setup = MosquittoSetup(
            bind=self.host,
            device_port=self.port,
            platform_port=self.platform_port,
            server_names=(self.host, "localhost"),
            persistence=False,
            log_file=self.log_file,
            user="root" if hasattr(os, "geteuid") and os.geteuid() == 0 else None,
        )
        self.files = write_config(self.directory / "broker", self.data_dir, self.devices, setup)
        self.config_file = self.files.config
