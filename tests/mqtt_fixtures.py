"""Fixtures for tests that need a real MQTT broker: import them explicitly from the test module.

They live outside conftest.py so that only the modules that want a broker pay for one. A missing
`mosquitto` binary fails these tests with the install command instead of skipping them: a skipped
transport test looks like a passing one in a summary.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import pytest

from iotfsm.adapters.mqtt.transport import MqttSettings, MqttTransport
from iotfsm.testing.mosquitto import Mosquitto, MosquittoNotFoundError

WAIT = 5.0
"""Upper bound for anything that should happen within milliseconds on localhost."""


def _new_broker(*, tls: bool = False) -> Mosquitto:
    try:
        return Mosquitto(tls=tls)
    except MosquittoNotFoundError as error:
        message = str(error)
    # Outside the except block, so the report shows the install hint once, not a chained pair.
    pytest.fail(message, pytrace=False)


@pytest.fixture
def mosquitto_broker() -> Iterator[Mosquitto]:
    """A started broker of this test's own, plain MQTT only."""
    with _new_broker() as broker:
        yield broker


@pytest.fixture
def mosquitto_tls_broker() -> Iterator[Mosquitto]:
    """A started broker with a TLS listener (`tls_port`, `ca_file`) next to the plain one."""
    with _new_broker(tls=True) as broker:
        yield broker


@pytest.fixture
def unstarted_mosquitto_broker() -> Iterator[Mosquitto]:
    """A broker with its port chosen but not running yet: the test starts it when it wants."""
    broker = _new_broker()
    try:
        yield broker
    finally:
        broker.close()


def unique_client_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def fast_settings(broker: Mosquitto, client_id: str, **overrides: Any) -> MqttSettings:
    """Settings for `broker` with backoff in tens of milliseconds, so reconnect tests stay fast."""
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "client_id": client_id,
        "backoff_min": 0.02,
        "backoff_max": 0.2,
        "backoff_jitter": 0.5,
        "connect_timeout": 2.0,
    }
    values.update(overrides)
    return MqttSettings(**values)


class Recorder:
    """What a transport handed to its handlers, with waits that end as soon as the condition holds
    (a Condition, not sleeps) and fail with what was seen so far."""

    def __init__(self, condition: threading.Condition | None = None) -> None:
        # Recorders may share a condition so that one wait can watch several clients.
        self._condition = condition if condition is not None else threading.Condition()
        self.messages: list[tuple[str, bytes]] = []
        self.connection_events: list[bool] = []

    def on_message(self, topic: str, payload: bytes) -> None:
        with self._condition:
            self.messages.append((topic, payload))
            self._condition.notify_all()

    def on_connection(self, up: bool) -> None:
        with self._condition:
            self.connection_events.append(up)
            self._condition.notify_all()

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        with self._condition:
            if not self._condition.wait_for(predicate, timeout):
                raise AssertionError(
                    f"timed out after {timeout:.1f}s waiting for {what}; "
                    f"connection events {self.connection_events}, "
                    f"{len(self.messages)} message(s): {self.messages[:5]}"
                )

    def wait_connected(self, count: int = 1, timeout: float = WAIT) -> None:
        """Wait for the `count`-th on_connection(True)."""
        self.wait_for(
            lambda: self.connection_events.count(True) >= count,
            f"connection #{count}",
            timeout,
        )

    def wait_disconnected(self, count: int = 1, timeout: float = WAIT) -> None:
        self.wait_for(
            lambda: self.connection_events.count(False) >= count,
            f"disconnection #{count}",
            timeout,
        )

    def wait_messages(self, count: int, timeout: float = WAIT) -> None:
        self.wait_for(lambda: len(self.messages) >= count, f"{count} message(s)", timeout)

    def payloads(self) -> list[bytes]:
        with self._condition:
            return [payload for _, payload in self.messages]


@attrs.frozen
class Client:
    transport: MqttTransport
    recorder: Recorder


class ClientFactory:
    """Makes transports wired to a Recorder and stops every one of them at teardown."""

    def __init__(self) -> None:
        self._transports: list[MqttTransport] = []

    def __call__(
        self,
        settings: MqttSettings,
        *,
        subscribe: Sequence[tuple[str, int]] = (),
        start: bool = True,
        wait_connected: bool = True,
        recorder: Recorder | None = None,
    ) -> Client:
        recorder = recorder if recorder is not None else Recorder()
        transport = MqttTransport(settings)
        self._transports.append(transport)
        transport.set_handlers(recorder.on_message, recorder.on_connection)
        for topic_filter, qos in subscribe:
            transport.subscribe(topic_filter, qos)
        if start:
            transport.start()
            if wait_connected:
                recorder.wait_connected()
        return Client(transport, recorder)

    def stop_all(self) -> None:
        for transport in self._transports:
            transport.stop()


@pytest.fixture
def mqtt_clients() -> Iterator[ClientFactory]:
    factory = ClientFactory()
    try:
        yield factory
    finally:
        factory.stop_all()


class LogWatcher(logging.Handler):
    """Collects records of one logger and lets a test wait for a matching one."""

    def __init__(self, logger_name: str) -> None:
        super().__init__(level=logging.DEBUG)
        self._logger = logging.getLogger(logger_name)
        self._condition = threading.Condition()
        self.records: list[logging.LogRecord] = []
        self._saved_level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        with self._condition:
            self.records.append(record)
            self._condition.notify_all()

    def matching(self, level: int, text: str) -> list[logging.LogRecord]:
        with self._condition:
            return [r for r in self.records if r.levelno >= level and text in r.getMessage()]

    def wait_for(self, level: int, text: str, count: int = 1, timeout: float = WAIT) -> None:
        def found() -> bool:
            return sum(r.levelno >= level and text in r.getMessage() for r in self.records) >= count

        with self._condition:
            if not self._condition.wait_for(found, timeout):
                seen = [f"{r.levelname}: {r.getMessage()}" for r in self.records[-10:]]
                raise AssertionError(
                    f"timed out waiting for {count} {logging.getLevelName(level)} record(s) "
                    f"containing {text!r}; last records: {seen}"
                )

    def __enter__(self) -> LogWatcher:
        self._logger.addHandler(self)
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved_level)


@pytest.fixture
def transport_log() -> Iterator[LogWatcher]:
    with LogWatcher("iotfsm.adapters.mqtt.transport") as watcher:
        yield watcher
