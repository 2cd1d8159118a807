"""The platform's certificate authority: device and broker certificates, and the revocation list.

A certificate device proves who it is with a client certificate signed by this CA; the broker
takes the certificate's common name as the MQTT username (Mosquitto's `use_identity_as_username`),
so the name must say product and device in a form ACL patterns can place in a topic:
`{product}/{device}` (a `/` is safe there: Mosquitto refuses pattern substitution only for
usernames with `+` or `#`, and neither is allowed in Tencent names).

The `cryptography` package's x509 API is used rather than the `openssl` command line: no
subprocess and no temporary config files, typed results, and a CRL built from the index in one
call. The CA lives in `<data dir>/ca/` (directory 0700, key 0600); `issued.json` records every
serial handed out, so revoking a device revokes all of its certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ...machines.feature import DeviceKey
from ..durable import write_file_atomic
from ..topics import TopicError, check_key

log = logging.getLogger(__name__)

CA_DIR = "ca"
"""Where `PlatformCA.in_data_dir` keeps the CA under a platform's data directory."""

_CRL_DAYS = 365
"""How long a CRL is valid. OpenSSL refuses every client once the CRL it was given has expired,
so the CRL is rewritten on every change and must outlive the gaps between changes."""


class CertificateError(ValueError):
    """A certificate cannot be issued or revoked as asked (bad name, unknown device, bad CA)."""


@attrs.frozen
class IssuedCertificate:
    cert_file: Path
    key_file: Path
    serial: int


def device_identity(key: DeviceKey) -> str:
    """The common name of a device certificate, which the broker uses as the username."""
    try:
        check_key(key)
    except TopicError as exc:
        raise CertificateError(str(exc)) from None
    return f"{key.product}/{key.device}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: made in microseconds, accepted by every TLS stack Mosquitto and devices use.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf signs handshakes (ECDSA) and nothing else."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


class PlatformCA:
    """The CA files in one directory; `ensure()` creates them on first use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cert_file = directory / "ca.crt"
        self.key_file = directory / "ca.key"
        self.crl_file = directory / "crl.pem"
        self.index_file = directory / "issued.json"

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> PlatformCA:
        return cls(data_dir / CA_DIR)

    @property
    def exists(self) -> bool:
        return self.cert_file.is_file() and self.key_file.is_file()

    def ensure(self, common_name: str = "iotfsm platform CA", days: int = 3650) -> PlatformCA:
        """Create the CA (and an empty CRL) unless it exists; refuse a key others can read."""
        if self.exists:
            self._check_key_mode()
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_file_atomic(self.key_file, _key_pem(key))
        write_file_atomic(self.cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        self._save_index({})
        self.write_crl()
        log.info("created the platform CA in %s", self.directory)
        return self

    # --- issuing ---

    def issue_device(self, key: DeviceKey, out_dir: Path, days: int = 825) -> IssuedCertificate:
        """A client certificate for `key` (CN `{product}/{device}`), written as
        `<out>/<product>-<device>.crt` and `.key` (0600)."""
        identity = device_identity(key)
        stem = f"{key.product}-{key.device}".replace(":", "_")
        issued = self._issue(
            identity,
            out_dir / f"{stem}.crt",
            out_dir / f"{stem}.key",
            days,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            alt_names=(),
        )
        index = self._load_index()
        index[str(issued.serial)] = {"product": key.product, "device": key.device}
        self._save_index(index)
        log.info("issued certificate %x for %s", issued.serial, identity)
        return issued

    def issue_server(
        self, hosts: Sequence[str], out_dir: Path, name: str = "broker", days: int = 825
    ) -> IssuedCertificate:
        """A server certificate for the broker, valid for `hosts` through subjectAltName."""
        if not hosts:
            raise CertificateError("a server certificate needs at least one host name or address")
        alt: list[x509.GeneralName] = []
        for host in hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        return self._issue(
            hosts[0],
            out_dir / f"{name}.crt",
            out_dir / f"{name}.key",
            days,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            alt_names=alt,
        )

    def _issue(
        self,
        common_name: str,
        cert_file: Path,
        key_file: Path,
        days: int,
        *,
        usage: x509.ObjectIdentifier,
        alt_names: Sequence[x509.GeneralName],
    ) -> IssuedCertificate:
        ca_key, ca_cert = self._load()
        key = _new_key()
        now = _now()
        serial = secrets.randbits(63) | 1 << 62  # positive, never 0, fixed length
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), False)
        cert = builder.sign(ca_key, hashes.SHA256())
        write_file_atomic(key_file, _key_pem(key))
        write_file_atomic(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return IssuedCertificate(cert_file, key_file, serial)

    # --- revocation ---

    def revoke_device(self, key: DeviceKey) -> list[int]:
        """Revoke every certificate issued to `key` and rewrite the CRL; the serials revoked.

        Revoking a device with no certificate is not an error (a key device, or one already
        revoked): removing a device from the registry calls this either way."""
        index = self._load_index()
        serials = []
        for serial, entry in index.items():
            if (entry["product"], entry["device"]) == tuple(key) and "revoked" not in entry:
                entry["revoked"] = _now().isoformat()
                serials.append(int(serial))
        if serials:
            self._save_index(index)
            self.write_crl()
            log.info("revoked %d certificate(s) of %s", len(serials), device_identity(key))
        return serials

    def write_crl(self) -> Path:
        """The CRL of every revoked serial, valid for a year from now."""
        ca_key, ca_cert = self._load()
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - datetime.timedelta(minutes=5))
            .next_update(now + datetime.timedelta(days=_CRL_DAYS))
        )
        for serial, entry in self._load_index().items():
            if "revoked" in entry:
                revoked = (
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(serial))
                    .revocation_date(datetime.datetime.fromisoformat(entry["revoked"]))
                    .build()
                )
                builder = builder.add_revoked_certificate(revoked)
        crl = builder.sign(ca_key, hashes.SHA256())
        write_file_atomic(self.crl_file, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        return self.crl_file

    def issued_devices(self) -> set[DeviceKey]:
        """Every device that holds a certificate not revoked yet."""
        return {
            DeviceKey(e["product"], e["device"])
            for e in self._load_index().values()
            if "revoked" not in e
        }

    def revoked_serials(self) -> set[int]:
        return {int(s) for s, entry in self._load_index().items() if "revoked" in entry}

    # --- files ---

    def _check_key_mode(self) -> None:
        mode = self.key_file.stat().st_mode & 0o777
        if mode & 0o077:
            raise CertificateError(
                f"the CA key {self.key_file} is readable by others (mode {mode:o}); "
                f"run `chmod 600 {self.key_file}`"
            )

    def _load(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if not self.exists:
            raise CertificateError(
                f"no platform CA in {self.directory}; create it with "
                "`iotfsm registry issue-cert` (which makes one) or PlatformCA.ensure()"
            )
        self._check_key_mode()
        key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError(f"{self.key_file} is not an EC private key made by iotfsm")
        return key, x509.load_pem_x509_certificate(self.cert_file.read_bytes())

    def _load_index(self) -> dict[str, dict[str, str]]:
        try:
            loaded: dict[str, dict[str, str]] = json.loads(self.index_file.read_text())
        except FileNotFoundError:
            return {}
        return loaded

    def _save_index(self, index: dict[str, dict[str, str]]) -> None:
        write_file_atomic(self.index_file, json.dumps(index, indent=1, sort_keys=True).encode())
