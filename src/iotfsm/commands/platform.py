"""`iotfsm platform`: the platform role of every feature, reconciled toward a desired-state file.

State lives in SQLite in the data directory (or in PostgreSQL: `--store`), so the process can be
killed and restarted without losing a task; the desired-state file is applied at start and again
whenever it changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..adapters.store.session_store import reset_if_damaged
from ..desired import DesiredStateError
from ..platform import Platform
from ..reconcile import Reconciler
from .common import (
    CommandError,
    JsonLines,
    add_login_arguments,
    login_options,
    parse_address,
    stop_on_signals,
    wait_connected,
)
from .pool_platform import add_pool_arguments, is_pool, run_pool
from .store_option import add_store_argument, open_dsn

EXAMPLE = """example:
  iotfsm platform --broker mqtt://127.0.0.1:1883 --data-dir ./platform \\
      --http 127.0.0.1:8080 --desired desired.toml --events jsonl --api 127.0.0.1:8090
  PGPASSFILE=~/.pgpass iotfsm platform --store postgresql://iotfsm@db:5432/iotfsm ...
  IOTFSM_BROKER_PASSWORD=... iotfsm platform --broker amqp://127.0.0.1:5672/ \
      --username iotfsm-platform --store postgresql://iotfsm@db/iotfsm ...   # one pool worker
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        required=True,
        help="mqtt://HOST:PORT or mqtts://HOST:PORT; amqp://HOST:PORT/VHOST joins a worker pool "
        "(RabbitMQ, with --store postgresql://…)",
    )
    parser.add_argument(
        "--data-dir", required=True, type=Path, help="files, secrets and the SQLite store"
    )
    add_store_argument(parser)
    parser.add_argument("--http", required=True, help="HOST:PORT of the file service")
    parser.add_argument("--public-base", help="base URL devices use to reach the file service")
    parser.add_argument("--desired", type=Path, help="desired-state TOML file, reloaded on change")
    parser.add_argument("--tls-ca", type=Path, help="CA file that signed the broker's certificate")
    add_login_arguments(parser, device=False)
    parser.add_argument(
        "--firmware-key",
        type=Path,
        help="Ed25519 private key (PEM, mode 0600) that signs every deployed image; make one "
        "with `iotfsm firmware-key generate`",
    )
    parser.add_argument(
        "--events", choices=["jsonl"], help="print one JSON object per state change"
    )
    parser.add_argument("--connect-timeout", type=float, default=15.0)
    parser.add_argument(
        "--secrets-dir",
        type=Path,
        help="product secrets that device keys derive from (default: DATA_DIR/product-secrets)",
    )
    parser.add_argument(
        "--broker-auth",
        metavar="HOST:PORT",
        help="serve RabbitMQ's HTTP auth backend from the registry here (e.g. 127.0.0.1:8089) "
        "and log in as iotfsm-platform, password in DATA_DIR/broker-password",
    )
    parser.add_argument(
        "--open-registry",
        action="store_true",
        help="answer ANY device name, registered or not (demos on a trusted network only)",
    )
    parser.add_argument(
        "--reset-store",
        action="store_true",
        help="if platform.sqlite3 is damaged, move it aside (kept as platform.sqlite3.corrupt-"
        "<time>) and start with an empty store; a healthy store is kept as it is",
    )
    parser.add_argument(
        "--api",
        metavar="HOST:PORT",
        help="serve the management API (/api/v1, needs the api extra) here, e.g. 127.0.0.1:8090; "
        "tokens: iotfsm api-token create",
    )
    parser.add_argument(
        "--api-max-image",
        type=_size,
        default="256M",
        help="largest firmware image or resource the API accepts (default 256M)",
    )
    parser.add_argument(
        "--max-upload", type=_size, help="largest device upload granted, e.g. 50M (default: any)"
    )
    add_pool_arguments(parser)


def _size(value: str) -> int:
    """`1048576`, `512K`, `50M` or `2G` as bytes."""
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
    number, unit = value[:-1], value[-1:].upper()
    if unit.isdigit():
        number, unit = value, ""
    if unit not in units or not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be a size such as 1048576, 512K or 50M")
    return int(number) * units[unit]


def _reset_store(path: Path) -> None:
    aside = reset_if_damaged(path)
    if aside is not None:
        print(f"iotfsm: moved the damaged store {path} aside to {aside.name}", file=sys.stderr)


def _serve_api(args: argparse.Namespace, platform: Platform) -> Any:
    """The started API server for `--api`, or None without the flag."""
    if not args.api:
        return None
    host, port = parse_address("--api", args.api)
    try:
        from ..api import ApiServer
    except ImportError as exc:
        raise CommandError(
            f"--api needs starlette and uvicorn ({exc}): pip install 'iotfsm[api]'"
        ) from None
    server = ApiServer(platform, host, port, max_image=args.api_max_image)
    try:
        return server.start()
    except OSError as exc:
        raise CommandError(f"cannot serve the API on {args.api}: {exc.strerror or exc}") from None


def run(args: argparse.Namespace) -> int:
    host, port = parse_address("--http", args.http)
    if args.api:
        parse_address("--api", args.api)  # refuse a bad address before anything starts
    if args.open_registry:  # before anything starts, a pool's workers too
        print(
            "iotfsm platform: WARNING --open-registry: every device name is answered, registered "
            "or not; anyone who reaches the broker can act as any device",
            file=sys.stderr,
        )
    if is_pool(args.broker):
        return run_pool(args, (host, port))
    mqtt, _ = login_options(args, device=False)
    events = JsonLines() if args.events == "jsonl" else None
    if args.reset_store and not args.store:
        _reset_store(args.data_dir / "platform.sqlite3")
    store = open_dsn(args.store) if args.store else None
    try:
        platform = Platform(
            args.broker,
            data_dir=args.data_dir,
            http_host=host,
            http_port=port,
            public_base=args.public_base,
            on_step=events.step if events else None,
            mqtt=mqtt,
            open_registry=args.open_registry,
            secrets_dir=args.secrets_dir,
            broker_auth=parse_address("--broker-auth", args.broker_auth, "127.0.0.1:8089")
            if args.broker_auth
            else None,
            firmware_key=args.firmware_key,
            max_upload=args.max_upload,
            store=store,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot serve broker auth on {args.broker_auth}: {exc}") from None
    reconciler = Reconciler(platform, args.desired) if args.desired else None
    if reconciler is not None:
        try:
            from ..desired import load

            load(reconciler.path)  # refuse a bad file before anything starts
        except DesiredStateError as exc:
            platform.store.close()
            raise CommandError(str(exc)) from None
    return _serve(args, platform, reconciler, events)


def _serve(
    args: argparse.Namespace,
    platform: Platform,
    reconciler: Reconciler | None,
    events: JsonLines | None,
) -> int:
    """Start the platform (and the API), then apply the desired state and operator commands
    until a signal says stop."""
    stop = stop_on_signals()
    try:
        platform.start()
    except OSError as exc:
        raise CommandError(f"cannot serve files on {args.http}: {exc.strerror or exc}") from None
    api = None
    try:
        api = _serve_api(args, platform)
        connected = platform.runtime.transport
        if not wait_connected(lambda: connected.connected, stop, args.connect_timeout, args.broker):
            return 0
        if events:
            host_port = "{}:{}".format(*platform.files.address)
            started: dict[str, Any] = {"event": "started", "http": host_port}
            if api is not None:
                started["api"] = f"{api.host}:{api.port}"
            events.write(started)
        if reconciler is not None:
            for line in reconciler.apply():
                if events:
                    events.write({"event": "applied", "what": line})
        while not stop.wait(1.0):
            for line in platform.campaigns.apply_commands():
                if events:
                    events.write({"event": "campaign", "what": line})
            if reconciler is not None:
                for line in reconciler.poll():
                    if events:
                        events.write({"event": "applied", "what": line})
    finally:
        if api is not None:
            api.stop()
        platform.stop()
    return 0
