"""iotfsm: Tencent IoT Hub device features as declared finite-state machines, for both roles."""

__version__ = "0.1.0"
