"""`iotfsm registry issue-cert`: sign a certificate device's client certificate with the
platform CA (made in the data directory on first use). The lead mounts `add_arguments`/`run`
under `iotfsm registry`; the device must be registered with `--auth cert`, so a certificate is
never handed to a name the platform would not admit anyway.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..adapters.identity.registry import RegistryError
from ..machines.feature import DeviceKey
from .common import CommandError

EXAMPLE = """example:
  iotfsm registry issue-cert --data-dir ./platform --product-id S3EUVBRJLB \\
      --device-name dev-1 --out ./dev-1-certs
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, type=Path, help="the platform's data dir")
    parser.add_argument("--secrets-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--product-id", required=True)
    parser.add_argument("--device-name", required=True)
    parser.add_argument("--out", required=True, type=Path, help="where to write .crt and .key")
    parser.add_argument("--days", type=int, default=825, help="validity (default 825 days)")


def run(args: argparse.Namespace) -> int:
    from .registry import open_registry

    registry, store = open_registry(args.data_dir, args.secrets_dir)
    try:
        entry = registry.get(args.product_id, args.device_name)
    except (RegistryError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    name = f"{args.product_id}/{args.device_name}"
    if entry is None or entry.auth != "cert":
        raise CommandError(
            f"{name} is not registered as a certificate device; first run `iotfsm registry add "
            f"--data-dir {args.data_dir} --product-id {args.product_id} --device-name "
            f"{args.device_name} --auth cert`"
        )
    if not 1 <= args.days <= 3650:
        raise CommandError(f"--days {args.days} must be 1-3650")
    from ..adapters.identity.certificates import CertificateError, PlatformCA

    try:
        ca = PlatformCA.in_data_dir(args.data_dir).ensure()
        issued = ca.issue_device(DeviceKey(args.product_id, args.device_name), args.out, args.days)
    except CertificateError as exc:
        raise CommandError(str(exc)) from None
    print(f"issued {name}: {issued.cert_file} and {issued.key_file} (mode 0600)")
    print(f"the device trusts the broker with {ca.cert_file}")
    return 0
