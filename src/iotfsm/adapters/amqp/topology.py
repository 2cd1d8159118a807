"""The pool's RabbitMQ objects: one consistent-hash exchange fed by `amq.topic`, N partition queues.

Devices publish over MQTT; RabbitMQ's MQTT plugin routes every publish through `amq.topic` with
the topic as routing key (`/` -> `.`). `amq.topic` is bound to `iotfsm.uplinks`, an
`x-consistent-hash` exchange, once per uplink filter of the platform (`$ota.report.*.*`, ...), and
that exchange spreads routing keys over the partition queues `iotfsm.partition.NNN` (each bound
with weight 1). A routing key names one device's stream of one topic, so every message of a stream
lands in one queue, in order.

Why the routing key and not the device alone: messages from the MQTT plugin carry nothing but the
topic (3.10 sets no header or property from the client), and the exchange hashes either the
routing key or a header/property. Hashing the whole key is what the engine needs: a session is one
(feature, device), and a feature's uplinks of a device all travel on one topic, so one session is
always stepped from one partition. Features that share a topic share the partition too.
Topics with a per-request suffix (RRPC's processId) are the exception: each request may land in
another partition, which only that feature's one-shot sessions tolerate.

Each partition queue has `x-single-active-consumer`: whatever the pool's own bookkeeping says,
RabbitMQ delivers a queue to one consumer at a time and hands it to the next (with the unacked
messages requeued, in order) when that consumer's channel or connection goes. Quorum queues by
default (replicated when the node is a cluster, a write-ahead log on one node); classic durable
queues as an option where one node is all there is and its disk is the limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from .routing import routing_key

EXCHANGE = "iotfsm.uplinks"
QUEUE_PREFIX = "iotfsm.partition."
COMMAND_TYPE = "iotfsm.command"
"""AMQP `type` of a per-device command sent through the device's partition (`commands`)."""
QueueType = Literal["quorum", "classic"]


def queue_name(partition: int) -> str:
    return f"{QUEUE_PREFIX}{partition:03d}"


def topic_of(key: str) -> str:
    """The MQTT topic of a routing key (iotfsm's topics hold no `.`, so this is exact)."""
    return key.replace(".", "/")


def declare(
    channel: Any, partitions: int, uplink_filters: Iterable[str], queue_type: QueueType
) -> None:
    """Declare the exchange, its bindings from `amq.topic` and the partition queues (idempotent:
    every worker does it at start; the arguments must match what the first one declared)."""
    channel.exchange_declare(exchange=EXCHANGE, exchange_type="x-consistent-hash", durable=True)
    for topic_filter in sorted(set(uplink_filters)):
        channel.exchange_bind(
            destination=EXCHANGE, source="amq.topic", routing_key=routing_key(topic_filter)
        )
    arguments: dict[str, Any] = {"x-single-active-consumer": True}
    if queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    for partition in range(partitions):
        name = queue_name(partition)
        channel.queue_declare(queue=name, durable=True, arguments=arguments)
        channel.queue_bind(queue=name, exchange=EXCHANGE, routing_key="1")
