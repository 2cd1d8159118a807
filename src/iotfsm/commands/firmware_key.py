"""`iotfsm firmware-key generate`: the Ed25519 key pair that signs firmware.

The private key stays with the platform (`iotfsm platform --firmware-key firmware.key`); the
public key goes onto every device (`iotfsm device --firmware-pubkey firmware.pub`), which then
installs only images the platform signed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..adapters.identity.firmware_signing import (
    FirmwareKeyError,
    generate_key_pair,
    key_id,
    load_public_key,
)
from .common import CommandError

EXAMPLE = """example:
  iotfsm firmware-key generate --out ./keys
  iotfsm platform ... --firmware-key ./keys/firmware.key
  iotfsm device ... --firmware-pubkey ./keys/firmware.pub
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    generate = actions.add_parser(
        "generate",
        help="write firmware.key (mode 0600) and firmware.pub into a folder",
        description="Make a new signing key pair; an existing key is never overwritten.",
    )
    generate.add_argument("--out", required=True, type=Path, help="folder for the two files")


def run(args: argparse.Namespace) -> int:
    try:
        private, public = generate_key_pair(args.out)
    except FirmwareKeyError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write the key pair into {args.out}: {exc}") from None
    print(f"private key {private} (mode 0600, keep it on the platform)")
    print(f"public key  {public} (key id {key_id(load_public_key(public))}, copy it to devices)")
    return 0
