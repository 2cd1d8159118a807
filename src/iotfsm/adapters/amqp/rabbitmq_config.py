"""A RabbitMQ configuration for iotfsm: the MQTT plugin, and its logins checked by the platform.

One generator serves the operator (`iotfsm broker-config rabbitmq`) and the test suite (the private
node of `iotfsm.testing.rabbitmq`), so the file an operator deploys is the file the tests ran.

What it sets, and why:
- `auth_backends.1.authn = http` with the four `auth_http.*_path` URLs under the platform's
  broker-auth listener: every login, vhost, queue, exchange and topic decision is asked of the
  platform (through the cache below), which answers from its device registry
  (`iotfsm.adapters.http.broker_auth`). The internal user database is not consulted at all, so
  the `guest` account the node creates on first boot cannot log in.
- authorization through `rabbitmq_auth_backend_cache` (`auth_backends.1.authz = cache`, over http,
  `AUTHZ_CACHE_TTL_MS`); logins (`authn`) are still asked every time. RabbitMQ 3.10's MQTT reader
  and each of its channels drop their own permission caches whenever they hibernate (after about
  a second idle), so without the node-wide cache every report of a device after a pause is checked
  over HTTP again, three to five requests, and a fleet's load on the listener grows with its
  message rate. It matters beyond load: a check that fails on an established connection is not
  retried. A failed check on the channel that carries QoS 1 publishes closes that channel, which
  3.10 does not link to the connection: the connection stays open and every later QoS 1 publish
  of it is lost without a PUBACK (issue 17; `tests/test_broker_auth_rabbitmq.py`). Successes
  only are cached (refusals and errors are asked again), so a device disabled while connected
  keeps the topics it already used for at most the TTL; it cannot log in again, and the platform
  drops what a disabled device sends.
- `mqtt.allow_anonymous = false`: RabbitMQ 3.10 would otherwise log an MQTT client without a
  username in as `mqtt.default_user` (guest).
- `ignore_colons_in_username` (advanced.config: the 3.10 schema has no rabbitmq.conf key for it):
  the MQTT plugin otherwise reads `vhost:user` out of a username with a colon, and Tencent device
  names may hold colons (`PROD1dev:a;12010126;...` would log in as `a;...` to vhost `PROD1dev`).
- `rabbitmq_consistent_hash_exchange`: the worker pool's partitions (`adapters/amqp/topology`).
- POST (form bodies) rather than GET: passwords stay out of the access log of any proxy in between.

Values are checked before they are written: a newline or a space in a URL would let a caller add
arbitrary configuration lines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import attrs

AUTH_KINDS = ("user", "vhost", "resource", "topic")
"""The four checks of rabbitmq_auth_backend_http, each served at `{auth_url}/auth/{kind}`."""

AUTH_PATH_PREFIX = "/auth/"

PLUGINS = (
    "rabbitmq_mqtt",
    "rabbitmq_auth_backend_http",
    "rabbitmq_auth_backend_cache",
    "rabbitmq_consistent_hash_exchange",
)
"""The consistent-hash exchange splits device uplinks into the worker pool's partition queues
(`iotfsm.adapters.amqp.topology`); a node without a pool just does not use it."""

AUTHZ_CACHE_TTL_MS = 60_000
"""How long the node keeps an allowed vhost, resource or topic check (see the module doc)."""

_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,253}")


class BrokerConfigError(ValueError):
    """A listener address or URL that cannot go into a broker configuration as given."""


def _check_listener(what: str, value: tuple[str, int]) -> str:
    host, port = value
    if not _HOST.fullmatch(host) or not 0 < port < 65536:
        raise BrokerConfigError(
            f"{what} listener {host!r}:{port} must be HOST:PORT with a port in 1-65535, "
            "e.g. 0.0.0.0:1883"
        )
    return f"{host}:{port}"


def check_auth_url(url: str) -> str:
    """`url` without a trailing slash, or BrokerConfigError saying what a valid one looks like."""
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or any(c.isspace() or c in "#\"'\\" for c in url)
    ):
        raise BrokerConfigError(
            f"auth URL {url!r} must be an http(s) base URL without query, spaces or quotes, "
            "e.g. http://127.0.0.1:8089 (the platform's --broker-auth listener)"
        )
    return url.rstrip("/")


def auth_endpoint(auth_url: str, kind: str) -> str:
    """The URL RabbitMQ asks for one kind of check."""
    if kind not in AUTH_KINDS:
        raise BrokerConfigError(f"unknown auth check {kind!r}: one of {', '.join(AUTH_KINDS)}")
    return f"{check_auth_url(auth_url)}{AUTH_PATH_PREFIX}{kind}"


@attrs.frozen
class RabbitConfig:
    """What `rabbitmq.conf` says for iotfsm. `amqp` None turns the AMQP listener off."""

    mqtt: tuple[str, int] = ("0.0.0.0", 1883)
    amqp: tuple[str, int] | None = ("127.0.0.1", 5672)
    auth_url: str | None = None
    """Base URL of the platform's broker-auth listener; None keeps RabbitMQ's own user database
    (only for a node whose users an operator manages by hand)."""
    vhost: str = "/"
    extra_lines: Sequence[str] = ()
    """Appended verbatim (the test node adds its log settings); one setting per line."""

    def rabbitmq_conf(self) -> str:
        lines = ["# written by `iotfsm broker-config rabbitmq`", ""]
        if self.amqp is None:
            lines.append("listeners.tcp = none")
        else:
            lines.append(f"listeners.tcp.default = {_check_listener('AMQP', self.amqp)}")
        lines += [
            f"mqtt.listeners.tcp.default = {_check_listener('MQTT', self.mqtt)}",
            "mqtt.allow_anonymous = false",
            f"mqtt.vhost = {self._vhost()}",
            "mqtt.exchange = amq.topic",
            "mqtt.tcp_listen_options.nodelay = true",
        ]
        if self.auth_url is not None:
            lines += ["", "auth_backends.1.authn = http", "auth_backends.1.authz = cache"]
            lines += [
                "auth_cache.cached_backend = http",
                f"auth_cache.cache_ttl = {AUTHZ_CACHE_TTL_MS}",
            ]
            lines += ["auth_http.http_method = post"]
            # without these a hung platform would hang every login (httpc waits forever)
            lines += ["auth_http.connection_timeout = 5000", "auth_http.request_timeout = 15000"]
            lines += [
                f"auth_http.{kind}_path = {auth_endpoint(self.auth_url, kind)}"
                for kind in AUTH_KINDS
            ]
        for line in self.extra_lines:
            if "\n" in line or "\r" in line:
                raise BrokerConfigError(f"extra configuration line {line!r} holds a line break")
        if self.extra_lines:
            lines += ["", *self.extra_lines]
        return "\n".join(lines) + "\n"

    def enabled_plugins(self) -> str:
        """The Erlang term RabbitMQ reads from RABBITMQ_ENABLED_PLUGINS_FILE."""
        return "[" + ",".join(PLUGINS) + "].\n"

    def advanced_config(self) -> str:
        """The Erlang terms for RABBITMQ_ADVANCED_CONFIG_FILE (advanced.config)."""
        return "[{rabbitmq_mqtt, [{ignore_colons_in_username, true}]}].\n"

    def _vhost(self) -> str:
        if not re.fullmatch(r"[A-Za-z0-9/_-]{1,64}", self.vhost):
            raise BrokerConfigError(f"vhost {self.vhost!r}: use letters, digits, '/', '_', '-'")
        return self.vhost
