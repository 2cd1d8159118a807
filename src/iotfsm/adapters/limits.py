"""Tencent IoT Hub's limits (seed 004, Tencent's C SDK), in one place for every adapter, and the
bound of the adapters' per-topic caches.

Topic length (docs/PROTOCOL-notes.md, "Topic length"): seed 004's "topic 名字长度 不超过64字节"
bounds the topic *name* a product declares, the part around `{productId}/{deviceName}`, not the
concrete topic. Device names may have 48 characters and product ids 10, and Tencent's C SDK sizes
a concrete topic as `MAX_SIZE_OF_DEVICE_NAME + MAX_SIZE_OF_PRODUCT_ID + 64 + 6` = 128 bytes
(`MAX_SIZE_OF_CLOUD_TOPIC`), refusing only longer ones.
"""

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

MAX_PRODUCT_ID_BYTES = 10
"""A Tencent product id is 10 characters (the C SDK's `MAX_SIZE_OF_PRODUCT_ID`)."""
MAX_DEVICE_NAME_BYTES = 48
"""Device names: 1-48 of `[A-Za-z0-9:_-]` (the C SDK's `MAX_SIZE_OF_DEVICE_NAME`)."""
MAX_TOPIC_NAME_BYTES = 64
"""Seed 004's 64 bytes: a topic without its product id and device name (prefix, separators)."""
MAX_TOPIC_BYTES = MAX_DEVICE_NAME_BYTES + MAX_PRODUCT_ID_BYTES + MAX_TOPIC_NAME_BYTES + 6
"""A whole concrete topic: 128 bytes, the C SDK's `MAX_SIZE_OF_CLOUD_TOPIC`."""
MAX_PAYLOAD_BYTES = 16 * 1024
"""An MQTT packet is at most 16 KB; no message of these features is bigger."""

TOPICS_REMEMBERED = 4096
"""Entries of each per-topic cache of the message path (a runtime's routes and reply topics, a
transport's checked topics; a few hundred bytes each): every topic of a couple of thousand busy
devices; a bigger fleet mostly does the work per message, as it did before these caches."""


def remember(cache: dict[K, V], key: K, value: V) -> None:
    """Keep `value` under `key` in a per-topic cache: a full cache starts over, which costs one
    dict less than evicting in order, and a hot set refills it at once. Callers put only what
    passed every check (admitted devices' topics), so invented names cannot churn it."""
    if len(cache) >= TOPICS_REMEMBERED:
        cache.clear()
    cache[key] = value
