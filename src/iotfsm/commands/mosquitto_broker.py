"""`iotfsm broker-config mosquitto`: a ready Mosquitto configuration for a platform's registry.

Written to sit beside the RabbitMQ flavour in `commands/broker_config.py` (the lead mounts both).
Run again after `iotfsm registry disable|enable|remove` with `--reload`: the ACL is rewritten from
the registry, certificates of devices no longer registered are revoked, and the broker named by
its pid file is sent SIGHUP, which Mosquitto answers by re-reading ACL, password file and CRL.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..adapters.identity.certificates import CertificateError, PlatformCA
from ..adapters.identity.registry import Registry, RegistryError
from ..adapters.mqtt.mosquitto_config import (
    MosquittoConfigError,
    MosquittoSetup,
    files_in,
    reload,
    write_access,
    write_config,
)
from ..machines.feature import DeviceKey
from .common import CommandError

EXAMPLE = """example:
  iotfsm broker-config mosquitto --data-dir ./platform --out ./mosquitto \\
      --host broker.example.com
  mosquitto -c ./mosquitto/mosquitto.conf
  # after `iotfsm registry disable|remove ...`:
  iotfsm broker-config mosquitto --data-dir ./platform --out ./mosquitto --reload
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, type=Path, help="the platform's data dir")
    parser.add_argument("--secrets-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", required=True, type=Path, help="directory for the broker files")
    parser.add_argument("--bind", default="0.0.0.0", help="address the listeners bind")
    parser.add_argument("--device-port", type=int, default=8883, help="mutual-TLS device port")
    parser.add_argument("--platform-port", type=int, default=8884, help="platform login port")
    parser.add_argument(
        "--host",
        action="append",
        help="name or address clients use for the broker (repeatable; its certificate is "
        "valid for these). Default: localhost and 127.0.0.1",
    )
    parser.add_argument(
        "--user", help="account mosquitto switches to when started as root (default: mosquitto)"
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="only rewrite ACL and CRL from the registry and SIGHUP the running broker",
    )


def cert_devices(registry: Registry) -> list[DeviceKey]:
    """The devices the broker lets in: registered, enabled, with a certificate login."""
    return [d.key for d in registry.devices() if d.enabled and d.auth == "cert"]


def run(args: argparse.Namespace) -> int:
    from .registry import open_registry

    registry, store = open_registry(args.data_dir, args.secrets_dir)
    try:
        devices = cert_devices(registry)
        registered = {d.key for d in registry.devices()}
    except (RegistryError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    try:
        ca = PlatformCA.in_data_dir(args.data_dir).ensure()
        revoked = [key for key in ca.issued_devices() - registered if ca.revoke_device(key)]
        if args.reload:
            files = files_in(args.out, args.data_dir)
            write_access(files, args.data_dir, devices)
            pid = reload(files)
            print(f"ACL ({len(devices)} device(s)) and CRL rewritten; SIGHUP sent to {pid}")
        else:
            setup = MosquittoSetup(
                bind=args.bind,
                device_port=args.device_port,
                platform_port=args.platform_port,
                server_names=tuple(args.host or ("localhost", "127.0.0.1")),
                user=args.user,
            )
            files = write_config(args.out, args.data_dir, devices, setup)
            print(f"wrote {files.config} for {len(devices)} certificate device(s)")
            print(f"start the broker: mosquitto -c {files.config}")
            print(
                f"the platform logs in as {setup.platform_username} with --password-file "
                f"{files.platform_password_file} and --tls-ca {files.ca} on port "
                f"{setup.platform_port}"
            )
    except (CertificateError, MosquittoConfigError) as exc:
        raise CommandError(str(exc)) from None
    for key in revoked:
        print(f"revoked the certificates of {key.product}/{key.device} (no longer registered)")
    return 0
