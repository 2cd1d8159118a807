"""The embedded broker: trampoline, clean sessions, shared subscriptions, faults, threads."""

from __future__ import annotations

import logging
import random
import threading

import pytest

from iotfsm.adapters.mqtt.memory_broker import (
    BrokerStats,
    Delay,
    Delivery,
    Disconnect,
    Drop,
    Duplicate,
    MemoryBroker,
    MemoryTransport,
    Reorder,
    _Message,
)
from iotfsm.adapters.transport import Transport, TransportError
from iotfsm.fsm.clock import ManualClock


class Probe:
    """A client that remembers what it got and when its connection changed."""

    def __init__(self, broker: MemoryBroker, client_id: str, *filters: str, qos: int = 0) -> None:
        self.transport = broker.connect(client_id)
        self.messages: list[tuple[str, bytes]] = []
        self.connections: list[bool] = []
        self.transport.set_handlers(self.on_message, self.connections.append)
        for topic_filter in filters:
            self.transport.subscribe(topic_filter, qos)
        self.transport.start()

    def on_message(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    @property
    def payloads(self) -> list[bytes]:
        return [payload for _, payload in self.messages]

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.transport.publish(topic, payload, qos)


def test_memory_transport_is_a_transport() -> None:
    transport: Transport = MemoryBroker().connect("dev")
    assert not transport.connected


def test_delivery_to_matching_subscribers_only() -> None:
    broker = MemoryBroker(record=True)
    platform = Probe(broker, "platform", "$ota/report/+/+")
    device = Probe(broker, "P/D", "$ota/update/P/D")
    other = Probe(broker, "P/E", "$ota/update/P/E")
    platform.publish("$ota/update/P/D", b"upgrade")
    device.publish("$ota/report/P/D", b"progress")
    assert device.messages == [("$ota/update/P/D", b"upgrade")]
    assert platform.messages == [("$ota/report/P/D", b"progress")]
    assert other.messages == []
    assert broker.record == [
        Delivery("P/D", "$ota/update/P/D", b"upgrade"),
        ("platform", "$ota/report/P/D", b"progress"),
    ]
    assert broker.stats == BrokerStats(published=2, delivered=2, dropped=0, unrouted=0)


def test_record_is_off_by_default() -> None:
    assert MemoryBroker().record is None


def test_publisher_gets_its_own_message_when_subscribed() -> None:
    broker = MemoryBroker()
    echo = Probe(broker, "echo", "a/#")
    echo.publish("a/b", b"x")
    assert echo.messages == [("a/b", b"x")]


def test_one_delivery_per_client_even_if_several_filters_match() -> None:
    broker = MemoryBroker()
    probe = Probe(broker, "c", "a/b", "a/+", "#", "a/#")
    probe.publish("a/b", b"x")
    assert probe.messages == [("a/b", b"x")]
    assert broker.stats.delivered == 1


def test_resubscribing_replaces_not_adds() -> None:
    broker = MemoryBroker()
    probe = Probe(broker, "c", "a")
    probe.transport.subscribe("a", 1)
    probe.publish("a", b"x")
    assert probe.messages == [("a", b"x")]


def test_clients_receive_in_connect_order() -> None:
    broker = MemoryBroker(record=True)
    third = broker.connect("third")
    Probe(broker, "first", "t")
    Probe(broker, "second", "#")
    third.set_handlers(lambda topic, payload: None, lambda up: None)
    third.subscribe("t")
    third.start()
    Probe(broker, "x", "t").publish("t", b"m")
    assert broker.record is not None
    assert [d.client_id for d in broker.record] == ["third", "first", "second", "x"]


def test_unrouted_messages_are_counted_not_dropped() -> None:
    broker = MemoryBroker()
    Probe(broker, "c", "a").publish("b", b"x")
    assert broker.stats == BrokerStats(published=1, delivered=0, dropped=0, unrouted=1)


# QoS ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qos", [2, -1, 3])
def test_only_qos_0_and_1(qos: int) -> None:
    probe = Probe(MemoryBroker(), "c")
    with pytest.raises(TransportError, match="QoS"):
        probe.publish("a", b"x", qos)
    with pytest.raises(TransportError, match="QoS"):
        probe.transport.subscribe("a", qos)


def test_delivered_qos_is_the_lower_of_publish_and_subscription() -> None:
    # The Transport's message handler has no QoS argument, so this is checked at the routing step.
    broker = MemoryBroker()
    low = Probe(broker, "low", "t", qos=0)
    high = Probe(broker, "high", "t", qos=1)
    both = Probe(broker, "both", "t", qos=0)
    both.transport.subscribe("#", 1)

    with broker._lock:
        routed_1 = {h.transport.client_id: h.qos for h in broker._route(_Message("t", b"", 1))}
        routed_0 = {h.transport.client_id: h.qos for h in broker._route(_Message("t", b"", 0))}
    assert routed_1 == {"low": 0, "high": 1, "both": 1}
    assert routed_0 == {"low": 0, "high": 0, "both": 0}
    assert low.transport is not high.transport


def test_bad_topics_filters_and_payloads_are_refused() -> None:
    probe = Probe(MemoryBroker(), "c")
    with pytest.raises(TransportError, match="wildcard"):
        probe.publish("a/+", b"x")
    with pytest.raises(TransportError, match="whole level"):
        probe.transport.subscribe("a/b+")
    with pytest.raises(TransportError, match="encode"):
        probe.publish("a", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="client id"):
        MemoryBroker().connect("")


def test_bytearray_payload_is_copied() -> None:
    broker = MemoryBroker()
    probe = Probe(broker, "c", "a")
    data = bytearray(b"abc")
    probe.publish("a", data)  # type: ignore[arg-type]
    data[0] = ord("z")
    assert probe.messages == [("a", b"abc")]


# Trampoline ------------------------------------------------------------------------------------


def test_a_reply_from_a_handler_does_not_recurse() -> None:
    broker = MemoryBroker()
    trace: list[str] = []
    device = broker.connect("device")

    def device_on_message(topic: str, payload: bytes) -> None:
        trace.append(f"device got {payload.decode()}")
        device.publish("up", b"reply-" + payload)
        trace.append(f"device replied to {payload.decode()}")

    device.set_handlers(device_on_message, lambda up: None)
    device.subscribe("down")
    device.start()
    platform = broker.connect("platform")
    platform.set_handlers(lambda t, p: trace.append(f"platform got {p.decode()}"), lambda up: None)
    platform.subscribe("up")
    platform.start()

    platform.publish("down", b"1")
    trace.append("publish returned")
    assert trace == [
        "device got 1",
        "device replied to 1",
        "platform got reply-1",
        "publish returned",
    ]


def test_delivery_is_fifo_across_handler_publishes() -> None:
    broker = MemoryBroker(record=True)
    fan = broker.connect("fan")

    def fan_out(topic: str, payload: bytes) -> None:
        if topic == "in":
            fan.publish("out", payload + b".a")
            fan.publish("out", payload + b".b")

    fan.set_handlers(fan_out, lambda up: None)
    fan.subscribe("in")
    fan.start()
    sink = Probe(broker, "sink", "out", "in")
    source = Probe(broker, "source")

    def burst(topic: str, payload: bytes) -> None:
        # A handler that publishes twice: both only enqueue, behind what is already queued.
        source.publish("in", b"2")
        source.publish("in", b"3")

    trigger = Probe(broker, "trigger", "go")
    trigger.transport.set_handlers(burst, lambda up: None)
    source.publish("go", b"")
    source.publish("in", b"4")
    assert sink.payloads == [b"2", b"3", b"2.a", b"2.b", b"3.a", b"3.b", b"4", b"4.a", b"4.b"]


def test_pingpong_stays_flat() -> None:
    broker = MemoryBroker()
    depth = 0
    max_depth = 0
    count = 0
    ping = broker.connect("ping")

    def bounce(topic: str, payload: bytes) -> None:
        nonlocal depth, max_depth, count
        depth += 1
        max_depth = max(max_depth, depth)
        count += 1
        if count < 5000:  # far beyond the recursion limit if publish recursed
            ping.publish("ball", payload)
        depth -= 1

    ping.set_handlers(bounce, lambda up: None)
    ping.subscribe("ball")
    ping.start()
    ping.publish("ball", b"")
    assert count == 5000
    assert max_depth == 1


def test_handler_errors_are_logged_and_delivery_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    broker = MemoryBroker()
    bad = broker.connect("bad")

    def explode(topic: str, payload: bytes) -> None:
        raise RuntimeError("boom")

    bad.set_handlers(explode, lambda up: None)
    bad.subscribe("t")
    bad.start()
    good = Probe(broker, "good", "t")
    with caplog.at_level(logging.ERROR, logger="iotfsm.adapters.mqtt.memory_broker"):
        good.publish("t", b"1")
        good.publish("t", b"2")
    assert good.payloads == [b"1", b"2"]
    assert "bad" in caplog.text
    assert "boom" in caplog.text
    assert broker.stats.delivered == 4


def test_connection_handler_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    broker = MemoryBroker()
    transport = broker.connect("c")

    def explode(up: bool) -> None:
        raise RuntimeError("nope")

    transport.set_handlers(lambda t, p: None, explode)
    with caplog.at_level(logging.ERROR, logger="iotfsm.adapters.mqtt.memory_broker"):
        transport.start()
    assert transport.connected
    assert "nope" in caplog.text


# Connections and clean sessions ----------------------------------------------------------------


def test_start_needs_handlers_and_publish_needs_start() -> None:
    broker = MemoryBroker()
    transport = broker.connect("c")
    with pytest.raises(TransportError, match="set_handlers"):
        transport.start()
    transport.set_handlers(lambda t, p: None, lambda up: None)
    with pytest.raises(TransportError, match="start"):
        transport.publish("a", b"x")
    transport.subscribe("a")  # remembered before start, applied on connect
    transport.start()
    transport.start()  # twice is fine
    assert transport.connected


def test_clients_that_are_not_connected_get_nothing() -> None:
    broker = MemoryBroker()
    sender = Probe(broker, "sender")
    idle = broker.connect("idle")
    got: list[bytes] = []
    idle.set_handlers(lambda t, p: got.append(p), lambda up: None)
    idle.subscribe("t")
    sender.publish("t", b"before start")
    idle.start()
    sender.publish("t", b"online")
    broker.disconnect("idle")
    sender.publish("t", b"while cut")
    broker.reconnect("idle")
    sender.publish("t", b"back")
    idle.stop()
    sender.publish("t", b"after stop")
    assert got == [b"online", b"back"]


def test_subscriptions_come_back_on_reconnect_before_on_connection_true() -> None:
    broker = MemoryBroker()
    device = broker.connect("dev")
    got: list[bytes] = []
    events: list[bool] = []

    def on_connection(up: bool) -> None:
        events.append(up)
        if up:  # subscriptions are in place: a message sent now comes back
            device.publish("dev/in", b"hello %d" % len(events))

    device.set_handlers(lambda t, p: got.append(p), on_connection)
    device.subscribe("dev/in", 1)
    device.subscribe("$share/g/shared/x")
    device.start()
    assert events == [True]
    broker.disconnect("dev")
    broker.disconnect("dev")  # already down: no second notification
    assert events == [True, False]
    assert not device.connected
    broker.reconnect("dev")
    broker.reconnect("dev")  # already up: nothing happens
    assert events == [True, False, True]
    assert device.connected
    Probe(broker, "other").publish("shared/x", b"shared")
    assert got == [b"hello 1", b"hello 3", b"shared"]


def test_stop_notifies_is_idempotent_and_restart_works() -> None:
    broker = MemoryBroker()
    probe = Probe(broker, "c", "t")
    probe.transport.stop()
    probe.transport.stop()
    assert probe.connections == [True, False]
    with pytest.raises(ValueError, match="start"):
        broker.disconnect("c")
    probe.transport.start()
    probe.publish("t", b"x")
    assert probe.connections == [True, False, True]
    assert probe.messages == [("t", b"x")]


def test_reconnect_of_unknown_or_stopped_client() -> None:
    broker = MemoryBroker()
    with pytest.raises(ValueError, match="nobody"):
        broker.reconnect("nobody")
    probe = Probe(broker, "c")
    broker.disconnect("c")
    probe.transport.stop()
    with pytest.raises(ValueError):
        broker.reconnect("c")


def test_publish_while_cut_off_keeps_qos1_for_the_reconnect() -> None:
    broker = MemoryBroker()
    sink = Probe(broker, "sink", "t")
    device = Probe(broker, "dev")
    broker.disconnect("dev")
    device.publish("t", b"qos0 lost", 0)
    device.publish("t", b"qos1 kept", 1)
    assert sink.messages == []
    assert broker.stats.dropped == 1
    broker.reconnect("dev")
    assert sink.payloads == [b"qos1 kept"]


def test_stop_discards_the_outbox() -> None:
    broker = MemoryBroker()
    sink = Probe(broker, "sink", "t")
    device = Probe(broker, "dev")
    broker.disconnect("dev")
    device.publish("t", b"pending", 1)
    device.transport.stop()
    device.transport.start()
    assert sink.messages == []
    assert broker.stats.dropped == 1


def test_same_client_id_takes_the_session_over() -> None:
    broker = MemoryBroker()
    old = Probe(broker, "dev", "t")
    new = Probe(broker, "dev", "t")
    assert old.connections == [True, False]
    assert not old.transport.connected
    Probe(broker, "x").publish("t", b"m")
    assert old.messages == []
    assert new.messages == [("t", b"m")]
    broker.disconnect("dev")
    assert new.connections == [True, False]


def test_message_routed_before_a_reconnect_is_lost() -> None:
    broker = MemoryBroker()
    first = broker.connect("first")

    def cut_dev(topic: str, payload: bytes) -> None:
        if payload == b"for the old connection":
            broker.disconnect("dev")
            broker.reconnect("dev")

    first.set_handlers(cut_dev, lambda up: None)
    first.subscribe("t")
    first.start()
    device = Probe(broker, "dev", "t")  # routed after `first`, which cuts it meanwhile
    device.publish("t", b"for the old connection")
    assert device.messages == []
    assert device.connections == [True, False, True]
    assert broker.stats.dropped == 1
    device.publish("t", b"for the new one")
    assert device.payloads == [b"for the new one"]


def test_message_queued_before_a_reconnect_reaches_the_new_connection() -> None:
    # Not routed yet when the client came back, so the new subscription catches it, as in MQTT.
    broker = MemoryBroker()
    device = Probe(broker, "dev", "t")
    trigger = broker.connect("trigger")

    def publish_then_cut(topic: str, payload: bytes) -> None:
        trigger.publish("t", b"queued")
        broker.disconnect("dev")
        broker.reconnect("dev")

    trigger.set_handlers(publish_then_cut, lambda up: None)
    trigger.subscribe("go")
    trigger.start()
    trigger.publish("go", b"")
    assert device.payloads == [b"queued"]


# Shared subscriptions --------------------------------------------------------------------------


def test_shared_subscription_round_robin_besides_normal_subscribers() -> None:
    broker = MemoryBroker()
    workers = [Probe(broker, f"w{i}", "$share/platform/$ota/report/+/+") for i in range(3)]
    other_group = Probe(broker, "audit", "$share/audit/$ota/report/#")
    watcher = Probe(broker, "watcher", "$ota/report/+/+")
    device = Probe(broker, "P/D")
    for i in range(6):
        device.publish("$ota/report/P/D", b"%d" % i)
    assert [w.payloads for w in workers] == [[b"0", b"3"], [b"1", b"4"], [b"2", b"5"]]
    assert len(other_group.messages) == 6
    assert len(watcher.messages) == 6


def test_shared_group_skips_members_that_are_offline() -> None:
    broker = MemoryBroker()
    a = Probe(broker, "a", "$share/g/t")
    b = Probe(broker, "b", "$share/g/t")
    broker.disconnect("a")
    sender = Probe(broker, "s")
    for i in range(3):
        sender.publish("t", b"%d" % i)
    assert a.messages == []
    assert b.payloads == [b"0", b"1", b"2"]
    broker.disconnect("b")
    sender.publish("t", b"nobody")
    assert broker.stats.unrouted == 1
    broker.reconnect("a")
    sender.publish("t", b"a again")
    assert a.payloads == [b"a again"]


def test_shared_member_that_also_subscribes_normally_gets_both() -> None:
    broker = MemoryBroker()
    member = Probe(broker, "m", "$share/g/t", "t")
    Probe(broker, "s").publish("t", b"x")
    assert member.payloads == [b"x", b"x"]


# Faults ----------------------------------------------------------------------------------------


def test_drop_once_then_deliver() -> None:
    broker = MemoryBroker()
    probe = Probe(broker, "c", "#")
    broker.inject(Drop("a/+"))
    for payload in (b"1", b"2"):
        probe.publish("a/x", payload)
    probe.publish("b", b"3")
    assert probe.payloads == [b"2", b"3"]
    assert broker.stats.dropped == 1


def test_drop_every_message_for_one_client_until_cleared() -> None:
    broker = MemoryBroker()
    victim = Probe(broker, "victim", "t")
    bystander = Probe(broker, "bystander", "t")
    broker.inject(Drop("t", times=None, client_id="victim"))
    for i in range(3):
        bystander.publish("t", b"%d" % i)
    broker.clear_faults()
    bystander.publish("t", b"after")
    assert victim.payloads == [b"after"]
    assert len(bystander.messages) == 4
    assert broker.stats.dropped == 3


def test_duplicate() -> None:
    broker = MemoryBroker(record=True)
    probe = Probe(broker, "c", "t")
    broker.inject(Duplicate("t", times=2))
    for payload in (b"1", b"2", b"3"):
        probe.publish("t", payload)
    assert probe.payloads == [b"1", b"1", b"2", b"2", b"3"]
    assert broker.stats.delivered == 5


def test_reorder_holds_until_the_next_message_to_that_client() -> None:
    broker = MemoryBroker()
    probe = Probe(broker, "c", "t", "u")
    other = Probe(broker, "other", "t", "o")
    broker.inject(Reorder("t", client_id="c"))
    probe.publish("t", b"1")
    other.publish("o", b"to other")  # not to c: the held message waits
    assert probe.payloads == []
    assert other.payloads == [b"1", b"to other"]
    probe.publish("u", b"2")
    assert probe.messages == [("u", b"2"), ("t", b"1")]


def test_reorder_swaps_adjacent_messages() -> None:
    broker = MemoryBroker()
    probe = Probe(broker, "c", "t")
    broker.inject(Reorder("t", times=2))
    for i in range(4):
        probe.publish("t", b"%d" % i)
    assert probe.payloads == [b"2", b"0", b"1", b"3"]


def test_held_messages_are_lost_with_the_connection() -> None:
    broker = MemoryBroker()
    probe = Probe(broker, "c", "t")
    broker.inject(Reorder("t"))
    probe.publish("t", b"held")
    broker.disconnect("c")
    broker.reconnect("c")
    probe.publish("t", b"next")
    assert probe.payloads == [b"next"]
    assert broker.stats.dropped == 1


def test_delay_delivers_when_the_clock_says_so() -> None:
    clock = ManualClock(start=100.0)
    broker = MemoryBroker(clock)
    probe = Probe(broker, "c", "t")
    broker.inject(Delay("t", 5.0))
    probe.publish("t", b"late")
    probe.publish("t", b"on time")
    assert probe.payloads == [b"on time"]
    assert clock.next_deadline() == 105.0
    clock.advance(4.9)
    assert probe.payloads == [b"on time"]
    clock.advance(0.1)
    assert probe.payloads == [b"on time", b"late"]


def test_delayed_messages_keep_their_order() -> None:
    clock = ManualClock()
    broker = MemoryBroker(clock)
    probe = Probe(broker, "c", "t")
    broker.inject(Delay("t", 1.0, times=None))
    for i in range(3):
        probe.publish("t", b"%d" % i)
    clock.advance(1.0)
    assert probe.payloads == [b"0", b"1", b"2"]


def test_delayed_message_is_lost_if_the_client_reconnected_meanwhile() -> None:
    clock = ManualClock()
    broker = MemoryBroker(clock)
    probe = Probe(broker, "c", "t")
    broker.inject(Delay("t", 1.0))
    probe.publish("t", b"late")
    broker.disconnect("c")
    broker.reconnect("c")
    clock.advance(2.0)
    assert probe.messages == []
    assert broker.stats.dropped == 1


def test_delay_needs_a_scheduler_and_a_time_base() -> None:
    with pytest.raises(ValueError, match="scheduler"):
        MemoryBroker().inject(Delay("t", 1.0))

    class BareScheduler:
        def call_at(self, deadline: float, callback: object) -> None:
            raise AssertionError("never called")

    with pytest.raises(ValueError, match="clock="):
        MemoryBroker(BareScheduler()).inject(Delay("t", 1.0))
    MemoryBroker(BareScheduler(), clock=ManualClock()).inject(Delay("t", 1.0))


def test_disconnect_instead_of_delivery() -> None:
    broker = MemoryBroker()
    victim = Probe(broker, "victim", "t")
    bystander = Probe(broker, "bystander", "t")
    broker.inject(Disconnect("t", client_id="victim"))
    bystander.publish("t", b"1")
    assert victim.messages == []
    assert victim.connections == [True, False]
    assert bystander.payloads == [b"1"]
    bystander.publish("t", b"2")  # victim is offline: nothing for it
    broker.reconnect("victim")
    bystander.publish("t", b"3")
    assert victim.payloads == [b"3"]
    assert victim.connections == [True, False, True]


def test_disconnect_with_automatic_reconnect() -> None:
    clock = ManualClock()
    broker = MemoryBroker(clock)
    victim = Probe(broker, "victim", "t")
    broker.inject(Disconnect("t", reconnect_after=3.0))
    with pytest.raises(ValueError, match="scheduler"):
        MemoryBroker().inject(Disconnect("t", reconnect_after=3.0))
    victim.publish("t", b"1")
    assert victim.connections == [True, False]
    clock.advance(3.0)
    assert victim.connections == [True, False, True]
    victim.publish("t", b"2")
    assert victim.payloads == [b"2"]


def test_first_armed_fault_wins_and_faults_are_used_up() -> None:
    broker = MemoryBroker()
    probe = Probe(broker, "c", "t")
    broker.inject(Drop("t"))
    broker.inject(Duplicate("#"))
    for payload in (b"1", b"2", b"3"):
        probe.publish("t", payload)
    assert probe.payloads == [b"2", b"2", b"3"]


def test_probability_needs_a_seeded_rng_and_is_repeatable() -> None:
    with pytest.raises(ValueError, match="seed"):
        MemoryBroker().inject(Drop("t", times=None, probability=0.5))

    def run(seed: int) -> list[bytes]:
        broker = MemoryBroker(rng=random.Random(seed))
        probe = Probe(broker, "c", "t")
        broker.inject(Drop("t", times=None, probability=0.5))
        for i in range(50):
            probe.publish("t", b"%d" % i)
        return probe.payloads

    assert run(7) == run(7)
    assert 5 < len(run(7)) < 45
    assert run(7) != run(8)


@pytest.mark.parametrize(
    ("make", "complaint"),
    [
        (lambda: Drop("a+"), "whole level"),
        (lambda: Drop("$share/g/t"), "prefix"),
        (lambda: Drop("t", times=0), "times"),
        (lambda: Duplicate("t", probability=0.0), "probability"),
        (lambda: Delay("t", -1.0), "negative"),
    ],
)
def test_fault_arguments_are_checked(make: object, complaint: str) -> None:
    assert callable(make)
    with pytest.raises(ValueError, match=complaint):
        make()


def test_faults_are_frozen_values() -> None:
    assert Drop("t", times=None) == Drop("t", times=None)
    assert Delay("t", 2.0).seconds == 2.0
    with pytest.raises(AttributeError):
        Drop("t").times = 3  # type: ignore[misc]


# Threads ---------------------------------------------------------------------------------------


def test_concurrent_publishers_lose_and_duplicate_nothing() -> None:
    broker = MemoryBroker()
    threads_n, per_thread = 8, 400
    received: list[bytes] = []
    replies: list[bytes] = []
    inside = 0
    overlap = False
    guard = threading.Lock()
    sink = broker.connect("sink")

    def on_message(topic: str, payload: bytes) -> None:
        nonlocal inside, overlap
        with guard:
            inside += 1
            overlap = overlap or inside > 1
        if topic == "data":
            received.append(payload)
            sink.publish("reply", payload)  # handlers publishing while threads publish too
        else:
            replies.append(payload)
        with guard:
            inside -= 1

    sink.set_handlers(on_message, lambda up: None)
    sink.subscribe("data", 1)
    sink.subscribe("reply")
    sink.start()
    publishers: list[MemoryTransport] = []
    for n in range(threads_n):
        transport = broker.connect(f"pub{n}")
        transport.set_handlers(lambda t, p: None, lambda up: None)
        transport.start()
        publishers.append(transport)
    barrier = threading.Barrier(threads_n)

    def run(n: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            publishers[n].publish("data", b"%d:%d" % (n, i), 1)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    expected = {b"%d:%d" % (n, i) for n in range(threads_n) for i in range(per_thread)}
    assert len(received) == len(expected) == len(set(received))
    assert set(received) == expected
    assert sorted(replies) == sorted(received)
    assert not overlap  # the trampoline runs one delivering thread at a time
    for n in range(threads_n):  # each publisher's messages keep their order
        mine = [int(p.split(b":")[1]) for p in received if p.startswith(b"%d:" % n)]
        assert mine == sorted(mine)
    stats = broker.stats
    assert stats.delivered == 2 * len(expected)
    assert stats.dropped == 0
