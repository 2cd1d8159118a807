"""Helpers for testing code built on iotfsm against real infrastructure, from any test framework.

`iotfsm.testing.mosquitto` starts a private Mosquitto broker (optionally with a TLS listener and a
throw-away CA) on a free local port. Nothing here imports pytest: fixtures that wrap these helpers
live with the tests that use them.
"""
