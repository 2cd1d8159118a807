"""`iotfsm broker-config FLAVOUR`: a ready broker configuration that defers to the platform.

One subcommand per broker. `rabbitmq` writes `rabbitmq.conf`, `advanced.config` and
`enabled_plugins` (the MQTT plugin and the HTTP auth backend pointed at the platform's
`--broker-auth` listener); the test suite boots its private node from the same generator
(`iotfsm.adapters.amqp.rabbitmq_config`), so what this writes is what the tests ran.
`mosquitto` (certificate devices, per-device ACL, the platform's password) lives in
`commands/mosquitto_broker.py` and is mounted here; another flavour adds an `_add_FLAVOUR(sub)`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..adapters.amqp.rabbitmq_config import BrokerConfigError, RabbitConfig
from .common import CommandError, parse_address

EXAMPLE = """examples:
  iotfsm broker-config rabbitmq --auth-url http://127.0.0.1:8089 --out /etc/rabbitmq
  iotfsm broker-config mosquitto --data-dir ./platform --out ./mosquitto --host broker.example.com
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="broker_flavour", required=True, metavar="FLAVOUR")
    _add_rabbitmq(sub)
    _add_mosquitto(sub)


def _add_mosquitto(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from . import mosquitto_broker

    mosquitto = sub.add_parser(
        "mosquitto",
        help="Mosquitto: certificate devices, per-device ACL, the platform's password",
        description=(mosquitto_broker.__doc__ or "") + mosquitto_broker.EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mosquitto_broker.add_arguments(mosquitto)
    mosquitto.set_defaults(run=mosquitto_broker.run)


def _add_rabbitmq(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rabbit = sub.add_parser(
        "rabbitmq",
        help="rabbitmq.conf, advanced.config, enabled_plugins: logins checked by the platform",
        description="Write rabbitmq.conf, advanced.config and enabled_plugins into --out: the "
        "MQTT plugin on --mqtt, anonymous logins off, and the HTTP auth backend asking the "
        "platform's --broker-auth listener about every login, queue, exchange and topic.",
    )
    rabbit.add_argument(
        "--auth-url", required=True, help="base URL of `iotfsm platform --broker-auth`"
    )
    rabbit.add_argument("--mqtt", default="0.0.0.0:1883", help="MQTT listener (0.0.0.0:1883)")
    rabbit.add_argument(
        "--amqp", default="127.0.0.1:5672", help="AMQP listener, or 'none' (127.0.0.1:5672)"
    )
    rabbit.add_argument("--vhost", default="/", help="the MQTT plugin's vhost (/)")
    rabbit.add_argument("--out", type=Path, required=True, help="directory to write into")
    rabbit.add_argument("--force", action="store_true", help="overwrite existing files")
    rabbit.set_defaults(run=_rabbitmq)


def _rabbitmq(args: argparse.Namespace) -> int:
    amqp = None if args.amqp == "none" else parse_address("--amqp", args.amqp, "127.0.0.1:5672")
    config = RabbitConfig(
        mqtt=parse_address("--mqtt", args.mqtt, "0.0.0.0:1883"),
        amqp=amqp,
        auth_url=args.auth_url,
        vhost=args.vhost,
    )
    try:
        files = {
            "rabbitmq.conf": config.rabbitmq_conf(),
            "enabled_plugins": config.enabled_plugins(),
            "advanced.config": config.advanced_config(),
        }
    except BrokerConfigError as exc:
        raise CommandError(str(exc)) from None
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    existing = [name for name in files if (out / name).exists()]
    if existing and not args.force:
        raise CommandError(f"{', '.join(existing)} already in {out}; pass --force to overwrite")
    for name, text in files.items():
        path = out / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        print(path)
    return 0
