"""MQTT topics as RabbitMQ sees them: AMQP routing keys on the `amq.topic` exchange.

RabbitMQ's MQTT plugin routes through an AMQP topic exchange, and its authorization checks (the
`topic_path` of the HTTP auth backend) receive the routing key, not the MQTT topic: `/` becomes `.`
and the MQTT wildcards `+` and `#` become `*` and `#`. Allow-lists are therefore written in routing
keys, translated here from the topics the features declare. iotfsm's own topics never hold a `.`
(product ids are letters and digits, device names `[A-Za-z0-9:_-]`), so the translation of every
topic a device may use is one-to-one; a foreign topic that happens to translate to an allowed key
would be routed exactly like that key, so checking keys is checking what the broker delivers.
"""

from __future__ import annotations

_MQTT_TO_AMQP = str.maketrans({"/": ".", "+": "*"})


def routing_key(topic: str) -> str:
    """The routing key RabbitMQ 3.x uses for an MQTT topic or topic filter."""
    return topic.translate(_MQTT_TO_AMQP)
