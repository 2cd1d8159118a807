"""`iotfsm platform --broker amqp://… --store postgresql://…`: join the pool as one more worker.

The same command as a single platform, but the worker takes its share of the partitions, serves
files from the shared store and leads the pool's once-only work when it holds the leader lock.
The broker password comes from --password-file or $IOTFSM_BROKER_PASSWORD, the database's from
libpq (PGPASSFILE, PGPASSWORD, a service file): never from argv.
"""

from __future__ import annotations

import argparse
import logging
from typing import Literal, cast

from ..adapters.identity.broker_account import BrokerAccount, platform_account
from .common import CommandError, JsonLines, login_options, stop_on_signals, wait_connected

SCHEMES = ("amqp://", "amqps://")


def is_pool(broker: str) -> bool:
    return broker.startswith(SCHEMES)


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("worker pool (with --broker amqp://…)")
    group.add_argument(
        "--partitions",
        type=int,
        default=16,
        help="partition queues of the pool (the first worker's value holds; default 16)",
    )
    group.add_argument(
        "--queue-type",
        choices=["quorum", "classic"],
        default="quorum",
        help="partition queue type (quorum: replicated in a cluster; classic: one node)",
    )


def run_pool(args: argparse.Namespace, http: tuple[str, int]) -> int:
    from ..adapters.store.postgres import StoreUnavailableError, describe, has_password
    from ..pool import PoolPlatform

    if not args.store:
        raise CommandError("--broker amqp://… joins a pool: give its --store postgresql://…")
    if has_password(args.store):
        raise CommandError(
            f"--store {describe(args.store)}: a password in the connection string is visible "
            "to every user in `ps`; put it in PGPASSFILE (~/.pgpass), PGPASSWORD or a service file"
        )
    if "@" in args.broker.split("://", 1)[1].split("/", 1)[0]:
        raise CommandError(
            "--broker: no login in the URL (argv is public); give --username and "
            "--password-file (or $IOTFSM_BROKER_PASSWORD)"
        )
    for flag, given in (("--desired", args.desired), ("--firmware-key", args.firmware_key)):
        if given:
            raise CommandError(
                f"{flag} is not supported in a pool yet: run a single platform for it, or "
                "deploy through the pool's leader (iotfsm.pool.queue_deploy)"
            )
    if not 1 <= args.partitions <= 1024:
        raise CommandError(f"--partitions {args.partitions} must be 1-1024")
    # pika logs every channel it opens and closes at INFO: chatter next to the pool's own lines
    logging.getLogger("pika").setLevel(max(logging.WARNING, logging.getLogger().level))
    mqtt, _ = login_options(args, device=False)
    if mqtt.username is not None and mqtt.password is not None:
        login = BrokerAccount(mqtt.username, mqtt.password)
    else:
        login = platform_account(args.data_dir)
    events = JsonLines() if args.events == "jsonl" else None
    broker_auth = None
    if args.broker_auth:
        host, _, port = args.broker_auth.rpartition(":")
        if not host or not port.isdigit():
            raise CommandError(f"--broker-auth {args.broker_auth!r} must be HOST:PORT")
        broker_auth = (host, int(port))
    try:
        pool = PoolPlatform(
            args.broker,
            args.store,
            data_dir=args.data_dir,
            login=login,
            http_host=http[0],
            http_port=http[1],
            public_base=args.public_base,
            partitions=args.partitions,
            queue_type=cast(Literal["quorum", "classic"], args.queue_type),
            open_registry=args.open_registry,
            secrets_dir=args.secrets_dir,
            broker_auth=broker_auth,
            on_step=events.step if events else None,
            max_upload=args.max_upload,
        )
    except (StoreUnavailableError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    stop = stop_on_signals()
    try:
        pool.start()
    except OSError as exc:
        pool.store.close()
        raise CommandError(f"cannot serve files on {args.http}: {exc.strerror or exc}") from None
    try:
        if not wait_connected(
            lambda: pool.worker.connected, stop, args.connect_timeout, args.broker
        ):
            return 0
        if events:
            host_port = "{}:{}".format(*pool.platform.files.address)
            events.write({"event": "started", "http": host_port, "pool": True})
        while not stop.wait(1.0):
            for line in pool.poll():
                if events:
                    events.write({"event": "pool", "what": line})
    finally:
        pool.stop()
    return 0
