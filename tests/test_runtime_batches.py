"""A transport's read batch is stepped by the runtime as one drain: in order, one snapshot per
changed session and one store commit for the whole batch (issue 22), with the same drops and
counts as message by message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from test_runtime_snapshots import ASK, KEY, TOPIC, CountingStore, Wire

from iotfsm.adapters.runtime import Runtime
from iotfsm.machines import DeviceKey, log_level
from iotfsm.machines.feature import Feature

OTHER = DeviceKey("PSNAP00001", "dev-2")
OTHER_TOPIC = f"$log/operation/{OTHER.product}/{OTHER.device}"
STRANGER_TOPIC = "$log/operation/PSNAP00001/stranger"


def _ask(n: int) -> bytes:
    return ASK.replace(b"-1", f"-{n}".encode())


def _token(payload: bytes) -> bytes:
    return payload.split(b'"clientToken":"PSNAP00001')[1].split(b'"')[0]


def _level(payload: bytes) -> int:
    return int(payload.split(b'"log_level":')[1].split(b",")[0].split(b"}")[0])


class BatchingWire(Wire):
    """A `Wire` that also takes a batch handler, as `MqttTransport` does."""

    def __init__(self) -> None:
        super().__init__()
        self.on_batch: Any = None

    def set_batch_handler(self, on_batch: Any) -> None:
        self.on_batch = on_batch


def _platform(store: CountingStore, wire: Wire) -> Runtime:
    features: list[Feature] = [log_level.FEATURE]
    return Runtime(
        "platform", wire, features, store=store, admit=lambda key: key.device != "stranger"
    )


def test_start_installs_the_batch_handler_only_where_the_transport_has_one() -> None:
    wire = BatchingWire()
    runtime = _platform(CountingStore(), wire)
    runtime.start()
    assert wire.on_batch == runtime.on_messages
    _platform(CountingStore(), Wire()).start()  # a transport without batches still starts


def test_a_batch_is_one_drain_with_one_commit_and_the_same_drops() -> None:
    store, wire = CountingStore(), BatchingWire()
    runtime = _platform(store, wire)
    batch: Sequence[tuple[str, bytes]] = [
        (TOPIC, _ask(1)),
        (OTHER_TOPIC, _ask(2)),
        (TOPIC, b"{"),  # malformed: rejected, the rest goes on
        (STRANGER_TOPIC, _ask(3)),  # refused by the registry
        ("not/a/topic", _ask(4)),  # rejected
        (TOPIC, _ask(5)),
    ]
    runtime.on_messages(batch)
    assert store.commits == 1
    assert [_token(payload) for _, payload in wire.published] == [b"-1", b"-2", b"-5"]
    assert [topic.rsplit("/", 1)[1] for topic, _ in wire.published] == ["dev-1", "dev-2", "dev-1"]
    assert runtime.rejected == 2 and runtime.refused == 1 and runtime.steps == 3
    assert sorted(key.device for _, key, _ in store.saved) == ["dev-1", "dev-2"]  # once each

    runtime.on_messages([(TOPIC, b"[]"), (STRANGER_TOPIC, _ask(6))])  # nothing to step
    assert store.commits == 1 and runtime.rejected == 3 and runtime.refused == 2


def test_a_batch_arriving_during_a_drain_follows_what_was_queued() -> None:
    store, wire = CountingStore(), BatchingWire()
    runtime = _platform(store, wire)
    runtime.on_message(TOPIC, _ask(1))

    def more() -> None:  # the first reply's publish delivers a batch (a co-located device)
        runtime.post("log_level", KEY, log_level.SetLogLevel(2))
        runtime.on_messages([(TOPIC, _ask(3)), (OTHER_TOPIC, _ask(4))])
        runtime.post("log_level", KEY, log_level.SetLogLevel(4))

    wire.then = more
    wire.published.clear()
    commits = store.commits
    runtime.on_messages([(TOPIC, _ask(2))])
    tokens = [_token(payload) for _, payload in wire.published]
    # the level pushes (`-push-`) come in the order they were posted, between the answers
    assert tokens == [b"-2", b"-push-1", b"-3", b"-4", b"-push-2"]
    assert _level(wire.published[2][1]) == 2  # asked after the level changed to 2
    assert runtime.sessions["log_level"][KEY].ctx.level == 4
    assert store.commits == commits + 1


def test_a_stopped_runtime_drops_a_batch_and_a_router_takes_its_events() -> None:
    store, wire = CountingStore(), BatchingWire()
    runtime = _platform(store, wire)
    taken: list[DeviceKey] = []

    def router(feature: str, key: DeviceKey, event: Any) -> bool:
        if key == OTHER:
            taken.append(key)
            return True
        return False

    runtime.router = router
    runtime.on_messages([(OTHER_TOPIC, _ask(1)), (TOPIC, _ask(2))])
    assert taken == [OTHER] and len(wire.published) == 1 and store.commits == 1
    runtime.stop()
    runtime.on_messages([(TOPIC, _ask(3))])
    assert len(wire.published) == 1 and runtime.steps == 1
