"""`iotfsm registry`: who may speak to a platform, kept in its data directory.

Works while the platform runs: the platform sees a change within a second, so disabling a device
turns it away and enabling it lets it back in without a restart. Keys are derived from the
product secret (a 0600 file outside the database); `add --key-out` and `key` write a device's key
to a 0600 file for its owner, never to the terminal or a log.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..adapters.durable import write_file_atomic
from ..adapters.identity.registry import ProductSecrets, RegisteredDevice, Registry, RegistryError
from ..adapters.store.session_store import SessionStore, SqliteStore
from ..machines import DeviceKey, all_features
from .common import CommandError
from .store_option import add_store_argument, open_dsn

EXAMPLE = """examples:
  iotfsm registry add --data-dir ./platform --product-id S3EUVBRJLB --device-name dev-1 \\
      --key-out dev-1.psk
  iotfsm registry list --data-dir ./platform --json
  iotfsm registry disable --data-dir ./platform --product-id S3EUVBRJLB --device-name dev-1
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="registry_command", required=True)
    for name, text in (
        ("add", "register a device (enabled)"),
        ("list", "list registered devices"),
        ("enable", "let a disabled device back in"),
        ("disable", "turn a device away, keeping its entry and sessions"),
        ("remove", "delete a device and its sessions; added again it gets a new key"),
        ("key", "write a key device's key to a file (0600)"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--data-dir", required=True, type=Path, help="the platform's data dir")
        add_store_argument(cmd)
        cmd.add_argument(
            "--secrets-dir",
            type=Path,
            help="product secrets (default: DATA_DIR/product-secrets)",
        )
        if name == "list":
            cmd.add_argument("--product-id", help="only this product")
            cmd.add_argument("--json", action="store_true", help="print the rows as JSON")
            continue
        cmd.add_argument("--product-id", required=True)
        cmd.add_argument("--device-name", required=True)
        if name == "add":
            cmd.add_argument("--auth", choices=["key", "cert"], default="key")
            cmd.add_argument(
                "--psk-file", type=Path, help="import a key issued elsewhere (base64, in a file)"
            )
        if name in ("add", "key"):
            cmd.add_argument(
                "--key-out", type=Path, required=name == "key", help="write the key here (0600)"
            )
    from . import issue_cert

    text = "sign a certificate device's client certificate with the platform CA"
    issue_cert.add_arguments(sub.add_parser("issue-cert", help=text, description=text))


def open_registry(
    data_dir: Path, secrets_dir: Path | None, dsn: str | None = None
) -> tuple[Registry, SessionStore]:
    """The registry of a platform's store (its data directory's SQLite file, or the PostgreSQL
    store `--store` names), with the product secrets where the platform keeps them."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = open_dsn(dsn) if dsn else SqliteStore(data_dir / "platform.sqlite3")
    secrets = ProductSecrets(secrets_dir or data_dir / "product-secrets")
    return Registry(store, secrets), store


def _forget(store: SessionStore, key: DeviceKey) -> None:
    for feature in all_features():
        store.delete_session(feature.name, key)
    store.commit()


def _read_psk(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"--psk-file {path}: cannot read it ({exc})") from None


def run(args: argparse.Namespace) -> int:
    if args.registry_command == "issue-cert":
        from . import issue_cert

        return issue_cert.run(args)
    registry, store = open_registry(args.data_dir, args.secrets_dir, args.store)

    # a removed device's sessions go too (a running platform holds them in memory, unused,
    # until it restarts: it admits nothing of that device any more)
    def forget(entry: RegisteredDevice, present: bool) -> None:
        if not present:
            _forget(store, entry.key)

    registry.on_change = forget
    try:
        return _run(args, registry)
    except (RegistryError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()


def _run(args: argparse.Namespace, registry: Registry) -> int:
    command = args.registry_command
    if command == "list":
        rows = [
            {"product": d.product, "device": d.device, "enabled": d.enabled, "auth": d.auth}
            for d in registry.devices(args.product_id)
        ]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                state = "enabled" if r["enabled"] else "disabled"
                print(f"{r['product']}/{r['device']}\t{r['auth']}\t{state}")
        return 0
    product, device = args.product_id, args.device_name
    if command == "add":
        psk = _read_psk(args.psk_file) if args.psk_file else None
        entry = registry.add(product, device, args.auth, psk)
        print(f"registered {product}/{device} ({entry.auth} device)")
        if args.key_out and entry.auth == "key":
            write_file_atomic(args.key_out, registry.device_psk(product, device) + "\n")
            print(f"its key is in {args.key_out} (mode 0600)")
    elif command == "key":
        write_file_atomic(args.key_out, registry.device_psk(product, device) + "\n")
        print(f"the key of {product}/{device} is in {args.key_out} (mode 0600)")
    elif command == "enable":
        registry.enable(product, device)
        print(f"enabled {product}/{device}")
    elif command == "disable":
        registry.disable(product, device)
        print(f"disabled {product}/{device}")
    else:
        registry.remove(product, device)
        print(f"removed {product}/{device}")
    return 0
