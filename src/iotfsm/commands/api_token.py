"""`iotfsm api-token`: the tokens that let programs and people use the management API.

Kept in the platform's store as sha256 only; `create` prints the token once (or writes it to a
0600 file with `--out`), so it is never in argv, the store or a log. A running platform sees a
new or revoked token within a second.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ..adapters.store.session_store import SqliteStore
from .common import CommandError
from .store_option import add_store_argument, open_dsn

EXAMPLE = """examples:
  iotfsm api-token create --data-dir ./platform --name ci --scope write
  iotfsm api-token list --data-dir ./platform
  iotfsm api-token revoke --data-dir ./platform --name ci
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="token_command", required=True)
    for name, text in (
        ("create", "make a token and print it once"),
        ("list", "list tokens (names and scopes, never the tokens)"),
        ("revoke", "delete a token; calls with it get 401 within a second"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--data-dir", required=True, type=Path, help="the platform's data dir")
        add_store_argument(cmd)
        if name == "list":
            cmd.add_argument("--json", action="store_true", help="print the rows as JSON")
            continue
        cmd.add_argument("--name", required=True, help="who the token is for (shown in audit)")
        if name == "create":
            cmd.add_argument(
                "--scope",
                choices=["read", "write"],
                default="read",
                help="read: every GET; write: everything (default: read)",
            )
            cmd.add_argument(
                "--out", type=Path, help="write the token to this file (0600) instead of stdout"
            )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode() + b"\n")
    finally:
        os.close(fd)


def run(args: argparse.Namespace) -> int:
    from ..api.tokens import TokenBook, TokenError

    args.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_dsn(args.store) if args.store else SqliteStore(args.data_dir / "platform.sqlite3")
    book = TokenBook(store)
    try:
        if args.token_command == "list":
            tokens = book.all()
            if args.json:
                rows = [
                    {"name": t.name, "scopes": list(t.scopes), "created_at": t.created_at}
                    for t in tokens
                ]
                print(json.dumps(rows, indent=2))
                return 0
            for t in tokens:
                made = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t.created_at))
                print(f"{t.name}\t{','.join(t.scopes)}\t{made} UTC")
            return 0
        if args.token_command == "revoke":
            book.revoke(args.name)
            print(f"revoked {args.name}")
            return 0
        if args.out is not None and args.out.exists():
            raise CommandError(f"--out {args.out} exists; pick a new file")
        token = book.create(args.name, (args.scope,))
        if args.out is not None:
            _write_private(args.out, token)
            print(f"token {args.name} ({args.scope}) is in {args.out} (mode 0600)")
        else:
            print(token)
        return 0
    except TokenError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
