"""MQTT: the paho transport and its batched I/O, the embedded broker, topic filters, Mosquitto's
configuration.
"""
