"""Tencent IoT Hub's limits (seed 004), in one place for every adapter that enforces them."""

MAX_TOPIC_BYTES = 64
"""A topic is at most 64 bytes."""
MAX_PAYLOAD_BYTES = 16 * 1024
"""An MQTT packet is at most 16 KB; no message of these features is bigger."""
