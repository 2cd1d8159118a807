"""A runtime with a store snapshots a session only when a step changed it, once per drain, and a
restart restores exactly what the last step left (issue 22)."""

from __future__ import annotations

from typing import Any

import attrs

from iotfsm.adapters.runtime import Runtime
from iotfsm.adapters.store.session_store import MemoryStore
from iotfsm.fsm.snapshot import change_probe
from iotfsm.machines import DeviceKey, log_level, resources
from iotfsm.machines.feature import Feature

KEY = DeviceKey("PSNAP00001", "dev-1")
ASK = b'{"type":"get_log_level","clientToken":"PSNAP00001-1"}'
TOPIC = f"$log/operation/{KEY.product}/{KEY.device}"


class CountingStore(MemoryStore):
    """The in-memory store, counting what it is asked to save."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[tuple[str, DeviceKey, dict[str, Any]]] = []
        self.commits = 0

    def save(self, feature: str, key: DeviceKey, doc: dict[str, Any]) -> None:
        self.saved.append((feature, key, doc))
        super().save(feature, key, doc)

    def commit(self) -> None:
        self.commits += 1


class Wire:
    """A transport that keeps what is published and, once, posts an event back in the middle of
    the drain (as a memory broker delivering to a co-located runtime would)."""

    connected = True

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.then: Any = None

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.published.append((topic, payload))
        then, self.then = self.then, None
        if then is not None:
            then()

    def set_handlers(self, on_message: Any, on_connection: Any) -> None:
        pass

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def _platform(store: CountingStore, wire: Wire) -> Runtime:
    features: list[Feature] = [log_level.FEATURE]
    return Runtime("platform", wire, features, store=store)


def test_a_step_that_changes_nothing_is_not_snapshotted() -> None:
    store, wire = CountingStore(), Wire()
    runtime = _platform(store, wire)
    runtime.on_message(TOPIC, ASK)  # creates the session: saved
    assert len(store.saved) == 1 and len(wire.published) == 1
    runtime.on_message(TOPIC, ASK)  # answered, nothing changed: no snapshot
    runtime.on_message(TOPIC, ASK)
    assert len(store.saved) == 1 and len(wire.published) == 3
    runtime.post("log_level", KEY, log_level.SetLogLevel(3))  # changes level and state
    assert len(store.saved) == 2
    assert store.saved[-1][2]["state"] == "assigned"
    assert store.saved[-1][2]["context"]["level"] == 3


def test_a_session_stepped_twice_in_one_drain_is_saved_once_in_its_last_state() -> None:
    store, wire = CountingStore(), Wire()
    runtime = _platform(store, wire)
    runtime.on_message(TOPIC, ASK)
    saved, commits = len(store.saved), store.commits

    # the reply's publish posts two level changes: both are stepped in the same drain
    def two_changes() -> None:
        runtime.post("log_level", KEY, log_level.SetLogLevel(1))
        runtime.post("log_level", KEY, log_level.SetLogLevel(4))

    wire.then = two_changes
    runtime.on_message(TOPIC, ASK)
    assert len(store.saved) == saved + 1
    assert store.saved[-1][2]["context"]["level"] == 4
    assert store.commits == commits + 1


def test_a_restart_restores_what_the_last_step_left() -> None:
    store, wire = CountingStore(), Wire()
    runtime = _platform(store, wire)
    runtime.on_message(TOPIC, ASK)
    runtime.post("log_level", KEY, log_level.SetLogLevel(2))
    runtime.on_message(TOPIC, ASK)
    again = _platform(store, Wire())
    again.start()
    session = again.sessions["log_level"][KEY]
    assert session.state == "assigned" and session.ctx.level == 2
    assert session.ctx == runtime.sessions["log_level"][KEY].ctx


def test_a_rejected_message_saves_nothing() -> None:
    store, wire = CountingStore(), Wire()
    runtime = _platform(store, wire)
    runtime.on_message(TOPIC, b'{"type":"get_log_level","clientToken":5}')
    runtime.on_message(TOPIC, b"{")
    assert runtime.rejected == 2 and store.saved == [] and not runtime.sessions["log_level"]


def test_a_forgotten_session_is_not_written_back() -> None:
    store, wire = CountingStore(), Wire()
    runtime = _platform(store, wire)
    wire.then = lambda: runtime.forget(KEY)  # leaves the registry while its step runs
    runtime.on_message(TOPIC, ASK)
    assert store.sessions == {}


def test_the_probe_sees_every_field_and_declines_mutable_contexts() -> None:
    probe = change_probe(log_level.PLATFORM)
    assert probe is not None
    runtime = _platform(CountingStore(), Wire())
    session = runtime.session("log_level", KEY)
    before = probe(session)
    for change in ({"level": 1}, {"pushes": 1}, {"product": "OTHER"}):
        changed = attrs.evolve(session.ctx, **change)
        session.ctx, kept = changed, session.ctx
        assert probe(session) != before, change
        session.ctx = kept
    session.gen += 1
    assert probe(session) != before
    # contexts holding a list or a dict change in place: no shallow probe for them
    assert change_probe(resources.DOWNLOAD_PLATFORM) is None
