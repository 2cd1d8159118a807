"""Who may log in to the broker and which topics each login may use, answered from the registry.

The four questions are those of RabbitMQ's HTTP auth backend (`rabbitmq_auth_backend_http` 3.10,
observed against a real node, see tests/test_broker_auth_rabbitmq.py):

- user: `username`, `password`, `vhost`, `client_id` (the MQTT client id);
- vhost: `username`, `vhost`, `ip`, `tags`, `client_id`;
- resource: `username`, `vhost`, `resource` (queue or exchange), `name`, `permission` (configure,
  read or write), `tags`, `client_id`; an MQTT client needs its session queue
  `mqtt-subscription-{client_id}qos0|qos1` and the `amq.topic` exchange;
- topic: `username`, `vhost`, `resource` (topic), `name` (amq.topic), `permission` (read for a
  subscription, write for a publish), `routing_key` (the AMQP form of the topic), and
  `variable_map.client_id`, `variable_map.username`, `variable_map.vhost`.

Only the user question carries the password: RabbitMQ asks the others for connections it has
already authenticated, so they are answered from the username (and the client id), which the
device's login proved. Each device is allowed its own topics only (publish its uplinks, subscribe
its downlinks, never a wildcard); the platform's account may subscribe the uplink filters and
publish any device's downlink. Every decision of a device asks the registry again, so disabling a
device refuses its next subscription or new topic, and enabling it lets its next login in.
Anything unexpected is a refusal: a missing or repeated parameter, an unknown kind, an exception.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from ...machines.feature import DeviceKey, Feature
from ..amqp.routing import routing_key
from ..amqp.topology import EXCHANGE as POOL_EXCHANGE
from ..amqp.topology import QUEUE_PREFIX as POOL_QUEUE_PREFIX
from ..topics import DEVICE_NAME, PRODUCT_ID, SUFFIX_VALUE
from .broker_account import BrokerAccount

log = logging.getLogger(__name__)

KINDS = ("user", "vhost", "resource", "topic")
TOPIC_EXCHANGE = "amq.topic"
SESSION_QUEUE = "mqtt-subscription-{client_id}qos{qos}"
"""The queue RabbitMQ 3.10's MQTT plugin declares per client and QoS for its subscriptions."""

_LOGINS_KEPT = 65536
"""Usernames (one per connection: each login carries a fresh connid) remembered after a login;
older ones are found again through the registry."""


class DeviceDirectory(Protocol):
    """What the policy needs of `iotfsm.adapters.identity.registry.Registry`."""

    def check_login(
        self, username: str, password: str, client_id: str | None = None
    ) -> DeviceKey | None: ...

    def admits(self, key: DeviceKey) -> bool: ...


DeviceTopics = Callable[[DeviceKey], tuple[list[str], list[str]]]
"""A device's (publish, subscribe) topics: `iotfsm.adapters.identity.registry.device_topics`."""


class _Platform:
    """Marker for the platform's own account."""


PLATFORM = _Platform()
Identity = DeviceKey | _Platform


class BrokerPolicy:
    def __init__(
        self,
        registry: DeviceDirectory,
        account: BrokerAccount,
        features: Iterable[Feature],
        device_topics: DeviceTopics,
        *,
        vhost: str = "/",
    ) -> None:
        self._registry = registry
        self._account = account
        self._device_topics = device_topics
        self.vhost = vhost
        # per direction, the routing-key prefixes before `{product}`: plain topics end with the
        # device, suffixed ones (RRPC) have one more level (the processId)
        prefixes: dict[tuple[str, bool], set[tuple[str, ...]]] = {
            (d, suffixed): set() for d in ("up", "down") for suffixed in (False, True)
        }
        for feature in features:
            for direction in ("up", "down"):
                template = feature.topic_template(direction)
                if not template:
                    continue  # a direction the feature does not use
                prefix = template.split("/{product}", 1)[0]
                suffixed = not template.endswith("{device}")
                prefixes[(direction, suffixed)].add(tuple(routing_key(prefix).split(".")))
        self._up = frozenset(prefixes[("up", False)])
        self._down = frozenset(prefixes[("down", False)])
        self._up_suffixed = frozenset(prefixes[("up", True)])
        self._down_suffixed = frozenset(prefixes[("down", True)])
        self._logins: OrderedDict[str, DeviceKey] = OrderedDict()
        self._lock = threading.Lock()
        self.decisions: Counter[tuple[str, bool]] = Counter()
        """(kind, allowed) counts, for tests and a status page."""

    # --- the one entry point ---

    def decide(self, kind: str, params: Mapping[str, str]) -> bool:
        """Allow or deny one question of the auth backend; never raises."""
        try:
            allowed = self._decide(kind, params)
        except Exception:  # a hostile request must never take the endpoint down
            log.exception("broker auth: %s check failed; denied", kind)
            allowed = False
        with self._lock:
            self.decisions[(kind, allowed)] += 1
        if not allowed:
            log.debug(
                "broker auth: denied %s for %r (%s)",
                kind,
                params.get("username", "")[:80],
                _describe(kind, params),
            )
        return allowed

    def _decide(self, kind: str, params: Mapping[str, str]) -> bool:
        if kind == "user":
            return self._user(params)
        identity = self._identity(params)
        if identity is None or params.get("vhost") != self.vhost:
            return False
        if kind == "vhost":
            return True
        if kind == "resource":
            return self._resource(identity, params)
        if kind == "topic":
            return self._topic(identity, params)
        return False

    # --- the four questions ---

    def _user(self, params: Mapping[str, str]) -> bool:
        username, password = params.get("username"), params.get("password")
        if username is None or password is None or params.get("vhost", self.vhost) != self.vhost:
            return False
        if username == self._account.username:
            return self._account.matches(username, password)
        client_id = params.get("client_id")
        if client_id is None:  # an AMQP login: devices speak MQTT only
            return False
        key = self._registry.check_login(username, password, client_id)
        if key is None:
            return False
        with self._lock:
            self._logins[username] = key
            self._logins.move_to_end(username)
            while len(self._logins) > _LOGINS_KEPT:
                self._logins.popitem(last=False)
        return True

    def _resource(self, identity: Identity, params: Mapping[str, str]) -> bool:
        resource, name, permission = (
            params.get("resource"),
            params.get("name"),
            params.get("permission"),
        )
        if identity is PLATFORM and _pool_resource(resource, name, permission):
            return True
        if resource == "exchange":
            return name == TOPIC_EXCHANGE and permission in ("read", "write")
        if resource != "queue" or permission not in ("configure", "read", "write"):
            return False
        client_id = params.get("client_id")
        if client_id is None:
            return False
        if isinstance(identity, DeviceKey) and client_id != _client_id(identity):
            return False
        return name in {SESSION_QUEUE.format(client_id=client_id, qos=q) for q in (0, 1)}

    def _topic(self, identity: Identity, params: Mapping[str, str]) -> bool:
        if params.get("resource") != "topic" or params.get("name") != TOPIC_EXCHANGE:
            return False
        key, permission = params.get("routing_key"), params.get("permission")
        if key is None or permission not in ("read", "write"):
            return False
        if isinstance(identity, DeviceKey):
            publish, subscribe = self._device_topics(identity)
            allowed = {routing_key(topic) for topic in publish if permission == "write"}
            allowed |= {routing_key(topic) for topic in subscribe if permission == "read"}
            if key in allowed:
                return True
            # an RRPC answer: `$rrpc.txd.{p}.{d}.*` allows the one processId published to
            head, _, last = key.rpartition(".")
            return permission == "write" and f"{head}.*" in allowed and _is_value(last)
        parts = key.split(".")
        if len(parts) < 3:
            return False
        if self._platform_topic(tuple(parts[:-2]), parts[-2], parts[-1], permission, False):
            return True
        value = parts[-1]  # a suffixed topic: subscribed as `*`, published with a processId
        if len(parts) < 4 or not (value == "*" if permission == "read" else _is_value(value)):
            return False
        return self._platform_topic(tuple(parts[:-3]), parts[-3], parts[-2], permission, True)

    def _platform_topic(
        self, prefix: tuple[str, ...], product: str, device: str, permission: str, suffixed: bool
    ) -> bool:
        if permission == "write":  # a downlink to one device, never a wildcard
            down = self._down_suffixed if suffixed else self._down
            return prefix in down and _is_name(product, device)
        if prefix not in (self._up_suffixed if suffixed else self._up):
            return False
        if product == "*":
            return device == "*"
        return PRODUCT_ID.fullmatch(product) is not None and (
            device == "*" or DEVICE_NAME.fullmatch(device) is not None
        )

    # --- who is asking ---

    def _identity(self, params: Mapping[str, str]) -> Identity | None:
        username = params.get("username")
        if username is None:
            return None
        if username == self._account.username:
            return PLATFORM
        client_id = params.get("client_id", params.get("variable_map.client_id"))
        with self._lock:
            key = self._logins.get(username)
        if key is None and client_id is not None and username.startswith(client_id + ";"):
            key = self._find(client_id)
        if key is None or (client_id is not None and client_id != _client_id(key)):
            return None
        return key if self._registry.admits(key) else None

    def _find(self, client_id: str) -> DeviceKey | None:
        """The device behind `{pid}{dn}` when the login was before this process started: the
        product id has no separator, so try each split the registry admits (at most 32)."""
        for cut in range(1, min(32, len(client_id) - 1) + 1):
            key = DeviceKey(client_id[:cut], client_id[cut:])
            if _is_name(key.product, key.device) and self._registry.admits(key):
                return key
        return None


def _pool_resource(resource: str | None, name: str | None, permission: str | None) -> bool:
    """What the platform's own login needs over AMQP for the worker pool: its hash exchange and
    partition queues, which the workers declare, bind and consume. Devices never get these: they
    reach the pool only through `amq.topic`."""
    if name is None or permission not in ("configure", "read", "write"):
        return False
    if resource == "exchange":
        return name == POOL_EXCHANGE
    return resource == "queue" and name.startswith(POOL_QUEUE_PREFIX) and name.isprintable()


def _client_id(key: DeviceKey) -> str:
    return f"{key.product}{key.device}"


def _is_name(product: str, device: str) -> bool:
    return PRODUCT_ID.fullmatch(product) is not None and DEVICE_NAME.fullmatch(device) is not None


def _is_value(level: str) -> bool:
    """A concrete value after the device (an RRPC processId), never a wildcard."""
    return SUFFIX_VALUE.fullmatch(level) is not None


def _describe(kind: str, params: Mapping[str, str]) -> str:
    if kind == "resource":
        return f"{params.get('permission')} {params.get('resource')} {params.get('name')!r}"[:200]
    if kind == "topic":
        return f"{params.get('permission')} {params.get('routing_key')!r}"[:200]
    return f"client id {params.get('client_id', '')[:80]!r}"
