"""MQTT throughput: messages per second the platform runtime handles, vs bare subscribers.

All consumers read the same device reports from the same private Mosquitto in the same run:

- `same` (the headline and the target's baseline): a bare subscriber on the platform's own MQTT
  client (`BatchedIOClient`, adapters/mqtt/paho_io.py, as `MqttTransport` runs it) that decodes
  every message and publishes the reply the protocol asks for: `bench/floor.py`'s `DictPlatform`
  (topic split, `json.loads`, a dict dispatch, per-device dicts, `json.dumps` of the answer). The
  platform over the same client pays the same transport; the ratio is what its runtime costs.
- `bare`: a stock paho-mqtt 2.x client subscribed to the platform's topics that only
  `json.loads` each payload (and counts it): what any Python consumer on stock paho pays.
- `platform`: `iotfsm.platform.Platform` over `MqttTransport`. Each message is routed by topic,
  decoded (JSON, cattrs), stepped through its device's session (snapshotted into the platform's
  store), and answered where the protocol says so (a published `get_log_level` reply or
  `report_version_rsp`).
- `reference` (not part of the target; `--no-reference` skips it): the bare subscriber plus one
  fixed, pre-encoded reply published through paho for every message the platform answers. It
  shows what answering alone costs in paho, whatever the code that decides the answer.

Making the consumer the bottleneck. Publishers and a live consumer would share this 2-core machine's
CPU with the broker, so the rate measured would say as much about the scheduler as the consumer.
Instead, each round first creates every consumer's persistent session (clean session off, QoS 1
subscriptions) and disconnects it; publisher processes then pre-fill the broker, which queues each
message for each session (`queue_qos0_messages`, unbounded queues); a fence message per publisher
proves the broker has taken everything. Then each consumer in turn (a fresh process, imports and
set-up done before it connects) reconnects and drains its backlog alone. Its rate is taken from its
first to its last message, both stamped on arrival in the message callback; the CPU time of the
consumer process over the same span is recorded too. Rounds alternate the order of the consumers
and the medians of the rounds are compared. Every consumer must receive exactly the messages sent,
and the platform must have published one reply per question, or the run is invalid (exit 1).

The load: 1,000 devices (`dev0000`..`dev0999`) spread over 10 products, messages drawn with a
fixed seed: 40 % `get_log_level` asks (QoS 0, answered), 30 % OTA `report_version` (QoS 1,
answered with `report_version_rsp`), 30 % OTA `report_progress` "downloading" (QoS 0, numbers as
strings as devices send them; no task, so recorded without a reply).

    python bench/mqtt.py                  # 50,000 messages x 5 rounds; a few minutes on 2 cores
    python bench/mqtt.py --quick          # smoke run, a few seconds
    python bench/mqtt.py --messages 20000 --rounds 3 --json
    python bench/mqtt.py --py-spy /tmp/platform.txt   # sample the platform consumer (round 1)
    python bench/mqtt.py --profile /tmp/platform.pstats   # cProfile its network thread instead
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import datetime
import io
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import pstats
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import attrs
import paho.mqtt.client as paho
from benchkit import cpu_model
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

TARGET = 0.80
"""The platform must handle at least this share of the same-client decode-and-reply subscriber's
messages per second."""

BROKER_CONFIG = "\n".join(
    [
        # Offline persistent sessions keep QoS 0 messages too, so a backlog holds the whole mix.
        "queue_qos0_messages true",
        # Unbounded queues: a pre-filled backlog of every message, nothing dropped.
        "max_queued_messages 0",
        # No cap on QoS 1 messages in flight to a client. With a cap (20 by default, or 100,
        # 1000) Mosquitto 2.0.11 stops delivering a reconnected session's queued QoS 1 messages
        # part-way (seen here: 460 of 875 with 1000); fixes to its inflight quota came in 2.0.13.
        # Uncapped, the whole backlog flows and the consumer's own speed limits the drain.
        "max_inflight_messages 0",
    ]
)

PRODUCTS = tuple(f"BENCHPRD{n:02d}" for n in range(10))
DEVICES_DEFAULT = 1_000
SEED = 20_240_601
MIX = (("get_log_level", 0.40), ("report_version", 0.30), ("report_progress", 0.30))
"""(kind, share) of the load; the first two are answered by the platform."""
ANSWERED = frozenset({"get_log_level", "report_version"})

SAME = "same"
BARE = "bare"
PLATFORM = "platform"
REFERENCE = "reference"
LABELS = {
    SAME: "same client, decode+reply",
    BARE: "bare paho + json.loads",
    PLATFORM: "iotfsm Platform",
    REFERENCE: "bare + fixed reply (ref)",
}

IDLE_TIMEOUT = 10.0
"""Seconds without a message (or before the first) after which a consumer stops and reports."""


# --- the load -----------------------------------------------------------------------------------


@attrs.frozen
class Load:
    """The messages of one round, as (topic, payload, qos), and how many of each kind."""

    messages: list[tuple[str, bytes, int]]
    kinds: dict[str, int]

    @property
    def answered(self) -> int:
        return sum(n for kind, n in self.kinds.items() if kind in ANSWERED)


def device_keys(devices: int) -> list[tuple[str, str]]:
    """`devices` device names spread round-robin over the products."""
    return [(PRODUCTS[n % len(PRODUCTS)], f"dev{n:04d}") for n in range(devices)]


def build_load(count: int, devices: int, seed: int = SEED) -> Load:
    rng = random.Random(seed)
    keys = device_keys(devices)
    kinds = [kind for kind, _ in MIX]
    weights = [share for _, share in MIX]
    asks: dict[tuple[str, str], int] = {}
    counted = dict.fromkeys(kinds, 0)
    messages: list[tuple[str, bytes, int]] = []
    for _ in range(count):
        product, device = keys[rng.randrange(devices)]
        kind = rng.choices(kinds, weights)[0]
        counted[kind] += 1
        doc: dict[str, Any]
        if kind == "get_log_level":
            asks[(product, device)] = n = asks.get((product, device), 0) + 1
            topic, qos = f"$log/operation/{product}/{device}", 0
            doc = {"type": "get_log_level", "clientToken": f"{product}-{n}"}
        elif kind == "report_version":
            topic, qos = f"$ota/report/{product}/{device}", 1
            doc = {"type": "report_version", "report": {"version": f"1.{rng.randrange(8)}.0"}}
        else:
            topic, qos = f"$ota/report/{product}/{device}", 0
            progress = {
                "state": "downloading",
                "percent": str(rng.randrange(101)),
                "result_code": "0",
                "result_msg": "",
            }
            doc = {"type": "report_progress", "report": {"progress": progress, "version": "1.8.0"}}
        payload = json.dumps(doc, separators=(",", ":")).encode()
        messages.append((topic, payload, qos))
    return Load(messages, counted)


def platform_filters() -> list[str]:
    """What the platform subscribes (every product), so the other consumers take the same."""
    from iotfsm.adapters.topics import Topics
    from iotfsm.machines import all_features

    return Topics(all_features()).filters("platform")


# --- small paho helpers -------------------------------------------------------------------------


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[1]
    host, port = rest.rsplit(":", 1)
    return host, int(port)


def _nodelay(_client: paho.Client, _userdata: Any, sock: Any) -> None:
    # As MqttTransport does: PUBACKs and replies are small packets that must not wait for Nagle.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _client(client_id: str, clean_session: bool) -> paho.Client:
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.on_socket_open = _nodelay
    return client


def _pump(client: paho.Client, until: Callable[[], bool], timeout: float, what: str) -> None:
    """Run paho's loop on this thread until `until()` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        rc = client.loop(0.05)
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            raise ConnectionError(f"{what}: paho loop failed: {paho.error_string(rc)}")


def _connect(client: paho.Client, url: str, what: str) -> None:
    connected: list[str] = []
    refused: list[str] = []

    def on_connect(_c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        (refused if reason.is_failure else connected).append(str(reason))

    client.on_connect = on_connect
    host, port = _host_port(url)
    client.connect(host, port, keepalive=60)
    _pump(client, lambda: bool(connected or refused), 10.0, f"{what} to connect")
    if refused:
        raise ConnectionError(f"{what}: the broker refused the connection: {refused[0]}")


def _disconnect(client: paho.Client) -> None:
    client.disconnect()
    # Let the DISCONNECT reach the socket before the process moves on.
    for _ in range(5):
        if client.loop(0.01) != MQTTErrorCode.MQTT_ERR_SUCCESS:
            break


def open_sessions(url: str, client_ids: Iterable[str], filters: Sequence[str]) -> None:
    """Create persistent sessions subscribed (QoS 1) to `filters`, then go offline, so the broker
    queues the coming load for each of them."""
    for client_id in client_ids:
        _open_session(url, client_id, filters)


def _open_session(url: str, client_id: str, filters: Sequence[str]) -> None:
    client = _client(client_id, clean_session=False)
    _connect(client, url, f"session {client_id}")
    acked: list[int] = []
    client.on_subscribe = lambda _c, _u, mid, _codes, _p: acked.append(mid)
    client.subscribe([(topic_filter, 1) for topic_filter in filters])
    _pump(client, lambda: bool(acked), 10.0, f"SUBACK for {client_id}")
    _disconnect(client)


def close_sessions(url: str, client_ids: Iterable[str]) -> None:
    """Connecting with clean session on discards a session: its queue and subscriptions."""
    for client_id in client_ids:
        client = _client(client_id, clean_session=True)
        _connect(client, url, f"cleanup {client_id}")
        _disconnect(client)


# --- publishers (child processes) ---------------------------------------------------------------


def publisher(
    url: str, index: int, messages: list[tuple[str, bytes, int]], out: Connection
) -> None:
    """Publish `messages`, then a QoS 1 fence on a topic nobody reads: Mosquitto handles one
    connection's packets in order, so its PUBACK means every earlier message has been queued."""
    try:
        client = _client(f"bench-publisher-{os.getpid()}-{index}", clean_session=True)
        client.max_inflight_messages_set(0)  # unlimited QoS 1 in flight
        client.max_queued_messages_set(0)
        done = [0]

        def on_publish(_c: paho.Client, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
            done[0] += 1  # QoS 0: written to the socket; QoS 1: PUBACK received

        client.on_publish = on_publish
        _connect(client, url, f"publisher {index}")
        started = time.perf_counter()
        for n, (topic, payload, qos) in enumerate(messages, 1):
            info = client.publish(topic, payload, qos)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"publish failed: {paho.error_string(info.rc)}")
            if n % 200 == 0:
                client.loop(0)  # write what is buffered, read PUBACKs
        total = len(messages)
        _pump(client, lambda: done[0] >= total, 120.0, f"publisher {index} to flush")
        client.publish(f"bench/fence/{index}", b"fence", 1)
        _pump(client, lambda: done[0] >= total + 1, 30.0, f"publisher {index} fence")
        seconds = time.perf_counter() - started
        _disconnect(client)
        out.send({"sent": total, "seconds": seconds})
    except BaseException as exc:
        out.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        out.close()


def prefill(ctx: SpawnContext, url: str, load: Load, publishers: int) -> dict[str, float]:
    """Publish the round's load from `publishers` processes; returns sent and seconds."""
    procs: list[tuple[Any, Connection]] = []
    for index in range(publishers):
        receiver, sender = ctx.Pipe(duplex=False)
        chunk = load.messages[index::publishers]
        proc = ctx.Process(target=publisher, args=(url, index, chunk, sender), daemon=True)
        proc.start()
        sender.close()
        procs.append((proc, receiver))
    sent, seconds = 0, 0.0
    errors: list[str] = []
    for proc, receiver in procs:
        result = _receive(receiver, 180.0, "a publisher")
        proc.join(10.0)
        if "error" in result:
            errors.append(str(result["error"]))
            continue
        sent += int(result["sent"])
        seconds = max(seconds, float(result["seconds"]))
    if errors:
        raise RuntimeError("publisher failed: " + "; ".join(errors))
    return {"sent": sent, "seconds": seconds}


def _receive(receiver: Connection, timeout: float, what: str) -> dict[str, Any]:
    if not receiver.poll(timeout):
        raise TimeoutError(f"no result from {what} within {timeout:.0f} s")
    result: dict[str, Any] = receiver.recv()
    return result


# --- consumers (child processes) ----------------------------------------------------------------


class Meter:
    """Stamps every handled message; identical for every consumer so each pays the same."""

    __slots__ = (
        "count", "cpu_first", "cpu_last", "done", "first", "last", "on_first", "on_last", "target",
    )  # fmt: skip

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.first = self.last = 0.0
        self.cpu_first = self.cpu_last = 0.0
        self.done = threading.Event()
        self.on_first: Callable[[], None] | None = None
        self.on_last: Callable[[], None] | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        if not self.count:
            self.first = now
            self.cpu_first = time.process_time()
            if self.on_first is not None:
                self.on_first()
        self.count += 1
        self.last = now
        if self.count >= self.target:
            self.cpu_last = time.process_time()
            self.done.set()
            if self.on_last is not None:
                self.on_last()

    def wait(self) -> None:
        """Until the target count, or IDLE_TIMEOUT without a message (a loss)."""
        started = time.perf_counter()
        while not self.done.wait(0.25):
            since = self.last if self.count else started
            if time.perf_counter() - since > IDLE_TIMEOUT:
                self.cpu_last = time.process_time()
                return

    def result(self) -> dict[str, Any]:
        span = self.last - self.first
        return {
            "received": self.count,
            "seconds": span,
            "cpu_seconds": self.cpu_last - self.cpu_first,
            "rate": (self.count - 1) / span if self.count > 1 and span > 0 else 0.0,
        }


Go = Callable[[], None]
"""Blocks until the parent says to connect (after attaching a profiler, if any)."""


def consume_bare(url: str, client_id: str, meter: Meter, go: Go, reply: bool) -> dict[str, Any]:
    """paho, `json.loads`, count; with `reply`, also publish one fixed pre-encoded payload (QoS 0,
    as the platform answers) for each message of a kind the platform answers."""
    loads = json.loads
    tick = meter.tick
    answer = b'{"type":"get_log_level","clientToken":"BENCHPRD00-1","log_level":0,"result":0}'
    answer_topic = "$log/operation/result/BENCHPRD00/dev0000"

    def on_message(client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        loads(message.payload)
        tick()

    def on_message_and_reply(
        client: paho.Client, _userdata: Any, message: paho.MQTTMessage
    ) -> None:
        doc = loads(message.payload)
        if doc["type"] != "report_progress":
            client.publish(answer_topic, answer, 0)
        tick()

    # The persistent session holds the subscriptions; nothing to subscribe here.
    client = _client(client_id, clean_session=False)
    client.on_message = on_message_and_reply if reply else on_message
    return _drain_with(client, url, meter, go)


def _drain_with(client: paho.Client, url: str, meter: Meter, go: Go) -> dict[str, Any]:
    """Connect once the parent says go, drain the backlog on paho's network thread, report."""
    go()
    host, port = _host_port(url)
    client.connect(host, port, keepalive=60)
    client.loop_start()
    meter.wait()
    client.disconnect()
    client.loop_stop()
    return meter.result()


def consume_same(url: str, client_id: str, meter: Meter, go: Go) -> dict[str, Any]:
    """The platform's own client, `floor.DictPlatform` deciding and encoding every answer,
    published as `MqttTransport` publishes (QoS 0, untracked)."""
    from floor import DictPlatform

    from iotfsm.adapters.mqtt.paho_io import BatchedIOClient

    client = BatchedIOClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.on_socket_open = _nodelay
    handle, publish, tick = DictPlatform().handle, client.publish_untracked, meter.tick
    replies = [0]

    def answer(topic: str, payload: bytes | bytearray) -> None:
        reply = handle(topic, payload)
        if reply is not None:
            publish(reply[0], reply[1], 0)
            replies[0] += 1
        tick()

    # whole packets come to on_publish_received; what the fast path does not take, to on_message
    client.on_publish_received = lambda topic, payload: answer(topic.decode(), payload)
    client.on_message = lambda _c, _u, message: answer(message.topic, message.payload)
    result = _drain_with(client, url, meter, go)
    result["replies"] = replies[0]
    return result


class CountingTransport:
    """Delegates to an MqttTransport; counts each inbound message once the runtime has handled it
    (the same stamp the bare subscriber makes) and each reply the runtime publishes."""

    def __init__(self, inner: Any, meter: Meter) -> None:
        self.inner = inner
        self.meter = meter
        self.replies = 0

    def set_handlers(
        self, on_message: Callable[[str, bytes], None], on_connection: Callable[[bool], None]
    ) -> None:
        tick = self.meter.tick

        def counted(topic: str, payload: bytes) -> None:
            on_message(topic, payload)
            tick()

        self.inner.set_handlers(counted, on_connection)

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        self.inner.subscribe(topic_filter, qos)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.replies += 1
        self.inner.publish(topic, payload, qos)

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    @property
    def connected(self) -> bool:
        return bool(self.inner.connected)


def consume_platform(
    url: str, client_id: str, meter: Meter, go: Go, *, sqlite: bool, devices: int
) -> dict[str, Any]:
    """The default Platform (in-memory store), or with `sqlite` one with a data directory, which
    keeps its sessions in SQLite as a production platform does."""
    import tempfile

    from iotfsm.adapters.mqtt.transport import MqttTransport, settings_from_url
    from iotfsm.platform import Platform

    # A persistent session (clean session off) under a fixed client id, which MqttOptions does not
    # offer: so the transport is built here and handed to Platform, as the facade allows.
    settings = attrs.evolve(settings_from_url(url, client_id=client_id), clean_session=False)
    transport = CountingTransport(MqttTransport(settings), meter)
    data_dir = tempfile.mkdtemp(prefix="iotfsm-bench-") if sqlite else None
    facade = Platform(transport, data_dir=data_dir)
    for product, device in device_keys(devices):  # a production platform answers only these
        facade.register_device(product, device)
    go()
    facade.start()
    meter.wait()
    facade.stop()
    if data_dir is not None:
        shutil.rmtree(data_dir, ignore_errors=True)
    result = meter.result()
    runtime = facade.runtime
    result.update(
        replies=transport.replies,
        rejected=runtime.rejected,
        ignored=runtime.ignored,
        sessions=sum(len(s) for s in runtime.sessions.values()),
    )
    return result


@attrs.frozen
class Job:
    """What one consumer process is to do."""

    kind: str
    url: str
    client_id: str
    target: int
    cprofile: str | None = None
    store: str = "memory"
    devices: int = 1000


def consumer(job: Job, pipe: Connection) -> None:
    """A consumer process: set up, say ready, wait for go, drain, send the result."""
    import logging

    kind, url, client_id, target, profile = (
        job.kind, job.url, job.client_id, job.target, job.cprofile,
    )  # fmt: skip
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    meter = Meter(target)
    profiler: cProfile.Profile | None = None
    if profile:
        # `enable` hooks the thread it is called on: paho calls the meter on its network thread,
        # so this profiles that thread from the first message to the last.
        profiler = cProfile.Profile()
        meter.on_first = profiler.enable
        meter.on_last = profiler.disable

    def go() -> None:
        pipe.send({"ready": os.getpid()})
        if pipe.recv() != "go":
            raise RuntimeError("the bench did not say go")

    try:
        if kind == PLATFORM:
            result = consume_platform(
                url, client_id, meter, go, sqlite=job.store == "sqlite", devices=job.devices
            )
        elif kind == SAME:
            result = consume_same(url, client_id, meter, go)
        else:
            result = consume_bare(url, client_id, meter, go, reply=kind == REFERENCE)
        if profiler is not None and profile:
            profiler.dump_stats(profile)
        pipe.send(result)
    except BaseException as exc:
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        pipe.close()


def drain(
    ctx: SpawnContext,
    kind: str,
    url: str,
    client_id: str,
    target: int,
    *,
    cprofile: str | None = None,
    py_spy: str | None = None,
    store: str = "memory",
    devices: int = 1000,
) -> dict[str, Any]:
    parent, child = ctx.Pipe(duplex=True)
    job = Job(kind, url, client_id, target, cprofile, store, devices)
    proc = ctx.Process(target=consumer, args=(job, child), daemon=True)
    proc.start()
    child.close()
    spy: subprocess.Popen[bytes] | None = None
    try:
        ready = _receive(parent, 120.0, f"the {kind} consumer (start-up)")
        if "error" in ready:
            raise RuntimeError(f"{kind} consumer failed: {ready['error']}")
        if py_spy:
            spy = _attach_py_spy(int(ready["ready"]), py_spy)
        parent.send("go")
        result = _receive(parent, 600.0, f"the {kind} consumer")
    finally:
        proc.join(30.0)
        if proc.is_alive():
            proc.kill()
        if spy is not None:
            spy.wait(60.0)
    if "error" in result:
        raise RuntimeError(f"{kind} consumer failed: {result['error']}")
    return result


def _attach_py_spy(pid: int, output: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(binary).exists():
        raise SystemExit("--py-spy needs py-spy: pip install py-spy (into this venv)")
    spy = subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--threads", "--nonblocking", "--rate", "500",
         "--format", "raw", "--output", output],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(2.0)  # let it attach before the drain starts
    if spy.poll() is not None:
        err = spy.stderr.read().decode(errors="replace") if spy.stderr else ""
        raise RuntimeError(f"py-spy could not attach to {pid}: {err.strip()}")
    return spy


# --- a run --------------------------------------------------------------------------------------


@attrs.frozen
class Options:
    messages: int
    rounds: int
    publishers: int
    devices: int
    reference: bool
    cprofile: str | None
    py_spy: str | None
    store: str


def run(options: Options) -> dict[str, Any]:
    from iotfsm.testing.mosquitto import Mosquitto

    ctx = multiprocessing.get_context("spawn")
    load = build_load(options.messages, options.devices)
    filters = platform_filters()
    kinds = [SAME, PLATFORM, BARE] + ([REFERENCE] if options.reference else [])
    rounds: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with Mosquitto(extra_config=BROKER_CONFIG) as broker:
        url = broker.url
        for number in range(1, options.rounds + 1):
            ids = {kind: f"bench-{kind}-{number}" for kind in kinds}
            open_sessions(url, ids.values(), filters)
            fill = prefill(ctx, url, load, options.publishers)
            order = kinds if number % 2 else kinds[::-1]
            for position, kind in enumerate(order, 1):
                profiled = kind == PLATFORM and number == 1
                result = drain(
                    ctx,
                    kind,
                    url,
                    ids[kind],
                    len(load.messages),
                    cprofile=options.cprofile if profiled else None,
                    py_spy=options.py_spy if profiled else None,
                    store=options.store,
                    devices=options.devices,
                )
                result.update(
                    round=number,
                    consumer=kind,
                    sent=fill["sent"],
                    prefill_seconds=fill["seconds"],
                    position=position,
                )
                rounds.append(result)
            close_sessions(url, ids.values())
    return {
        "load": {
            "messages": len(load.messages),
            "devices": options.devices,
            "products": len(PRODUCTS),
            "publishers": options.publishers,
            "kinds": load.kinds,
            "answered": load.answered,
            "filters": filters,
            "store": options.store,
        },
        "rounds": rounds,
        "summary": summarize(rounds, load, kinds),
        "wall_seconds": time.perf_counter() - started,
        "load_average": [load_before, os.getloadavg()[0]],
    }


def _cpu_rate(r: dict[str, Any]) -> float:
    return (r["received"] - 1) / r["cpu_seconds"] if r["cpu_seconds"] > 0 else 0.0


def summarize(rounds: Sequence[dict[str, Any]], load: Load, kinds: Sequence[str]) -> dict[str, Any]:
    of = {kind: [r for r in rounds if r["consumer"] == kind] for kind in kinds}
    medians = {kind: statistics.median(r["rate"] for r in rs) for kind, rs in of.items()}
    cpu_medians = {kind: statistics.median(_cpu_rate(r) for r in rs) for kind, rs in of.items()}

    def per_round(base: str) -> list[float]:
        return [
            p["rate"] / b["rate"] if b["rate"] else 0.0
            for b, p in zip(of[base], of[PLATFORM], strict=True)
        ]

    problems: list[str] = []
    for r in rounds:
        where = f"round {r['round']} {r['consumer']}"
        if r["received"] != r["sent"]:
            problems.append(f"{where}: received {r['received']} of {r['sent']} messages")
        if r["consumer"] in (PLATFORM, SAME) and r["replies"] != load.answered:
            problems.append(f"{where}: {r['replies']} replies, expected {load.answered}")
        if r["consumer"] == PLATFORM and (r["rejected"] or r["ignored"]):
            problems.append(f"{where}: {r['rejected']} rejected, {r['ignored']} ignored")

    def share(kind: str, table: dict[str, float], base: str = BARE) -> float | None:
        return table[kind] / table[base] if kind in table and table[base] else None

    ratio = share(PLATFORM, medians, SAME) or 0.0
    return {
        "median_rate": medians,
        "median_cpu_rate": cpu_medians,
        "ratio": ratio,
        "round_ratios": per_round(SAME),
        "cpu_ratio": share(PLATFORM, cpu_medians, SAME),
        "stock_ratio": share(PLATFORM, medians),
        "stock_round_ratios": per_round(BARE),
        "stock_cpu_ratio": share(PLATFORM, cpu_medians),
        "same_stock_ratio": share(SAME, medians),
        "reference_ratio": share(REFERENCE, medians),
        "reference_cpu_ratio": share(REFERENCE, cpu_medians),
        "target": TARGET,
        "pass": ratio >= TARGET,
        "problems": problems,
    }


# --- reporting ----------------------------------------------------------------------------------


def facts() -> dict[str, Any]:
    cpu = cpu_model()
    from importlib.metadata import version

    from iotfsm.testing.mosquitto import find_mosquitto

    mosquitto = "unknown"
    probe = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True, check=False)
    for line in (probe.stdout + probe.stderr).splitlines():
        if "version" in line:
            mosquitto = line.strip()
            break
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "paho_mqtt": version("paho-mqtt"),
        "cattrs": version("cattrs"),
        "transitions": version("transitions"),
        "mosquitto": mosquitto,
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def report(doc: dict[str, Any]) -> str:
    info, load, summary = doc["facts"], doc["load"], doc["summary"]
    kinds = ", ".join(f"{n:,} {kind}" for kind, n in load["kinds"].items())
    lines = [
        f"iotfsm MQTT throughput: {info['python']}, paho-mqtt {info['paho_mqtt']}, "
        f"{info['mosquitto']}, {info['nproc']} CPU ({info['cpu']}), {info['date']}",
        f"load per round: {load['messages']:,} messages ({kinds}) from {load['devices']:,} "
        f"devices in {load['products']} products, pre-filled by {load['publishers']} publisher "
        f"processes; {load['answered']:,} need a reply; platform store: {load['store']}",
        "",
        f"{'consumer':<26}{'round':>6}{'order':>6}{'sent':>9}{'received':>10}{'replies':>9}"
        f"{'seconds':>9}{'msg/s':>9}{'msg/CPU-s':>11}{'prefill s':>10}",
        "-" * 105,
    ]
    for r in doc["rounds"]:
        replies = f"{r['replies']:,}" if "replies" in r else "-"
        lines.append(
            f"{LABELS[r['consumer']]:<26}{r['round']:>6}{r['position']:>6}{r['sent']:>9,}"
            f"{r['received']:>10,}{replies:>9}{r['seconds']:>9.2f}"
            f"{r['rate']:>9,.0f}{_cpu_rate(r):>11,.0f}{r['prefill_seconds']:>10.2f}"
        )
    medians, cpu_medians = summary["median_rate"], summary["median_cpu_rate"]
    ratios = ", ".join(f"{x:.0%}" for x in summary["round_ratios"])
    verdict = "PASS" if summary["pass"] else "FAIL"
    lines += [
        "",
        f"{'median of the rounds':<26}{'msg/s':>10}{'msg/CPU-s':>11}{'vs stock':>10}{'vs same':>9}",
    ]
    for kind in medians:
        stock = medians[kind] / medians[BARE] if medians[BARE] else 0.0
        same = medians[kind] / medians[SAME] if medians[SAME] else 0.0
        lines.append(
            f"{LABELS[kind]:<26}{medians[kind]:>10,.0f}{cpu_medians[kind]:>11,.0f}"
            f"{stock:>10.1%}{same:>9.1%}"
        )
    stock_ratios = ", ".join(f"{x:.0%}" for x in summary["stock_round_ratios"])
    lines += [
        "",
        f"ratio platform / same-client decode+reply subscriber (median msg/s): "
        f"{summary['ratio']:.1%}  (per round: {ratios}); "
        f"per CPU-second: {summary['cpu_ratio']:.1%}",
        f"{verdict}  platform >= {TARGET:.0%} of the same-client decode-and-reply subscriber: "
        f"{summary['ratio']:.1%}",
        f"(beside it: platform / stock paho + json.loads {summary['stock_ratio']:.1%}, per round "
        f"{stock_ratios}, per CPU-second {summary['stock_cpu_ratio']:.1%}; the same-client "
        f"subscriber runs at {summary['same_stock_ratio']:.1%} of stock paho)",
    ]
    if summary["reference_ratio"] is not None:
        lines.append(
            f"(reference, not a target: a bare subscriber that also publishes the platform's "
            f"{load['answered']:,} replies runs at {summary['reference_ratio']:.1%} of bare, "
            f"{summary['reference_cpu_ratio']:.1%} per CPU-second)"
        )
    if summary["problems"]:
        lines += ["", "INVALID RUN:", *(f"  {p}" for p in summary["problems"])]
    lines.append(
        f"\nwall time {doc['wall_seconds']:.0f} s; load average before/after "
        f"{doc['load_average'][0]:.2f} / {doc['load_average'][1]:.2f}"
    )
    return "\n".join(lines)


def cprofile_top(path: str, limit: int = 25) -> str:
    stream = io.StringIO()
    stats = pstats.Stats(path, stream=stream)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return stream.getvalue()


_LINE_NUMBER = re.compile(r" \((.*?):\d+\)")


def py_spy_shares(path: str, limit: int = 30) -> str:
    """Share of the samples of paho's network thread (where messages are handled) in which each
    function is on the stack (inclusive) or running itself (self); C code counts as its caller."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, encoding="utf-8") as raw:
        for line in raw:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            if not frames or "paho-mqtt-client" not in frames[0]:
                continue
            n = int(count)
            total += n
            names = [_LINE_NUMBER.sub(r" (\1)", frame) for frame in frames[1:]]
            for name in set(names):
                inclusive[name] += n
            own[names[-1] if names else "?"] += n
    if not total:
        return f"no samples of the network thread in {path}"
    out = [f"py-spy samples of the platform's network thread: {total:,}", "", "inclusive:"]
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in inclusive.most_common(limit)]
    out += ["", "self:"]
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in own.most_common(limit)]
    return "\n".join(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=50_000, help="messages per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds (each drains every consumer)")
    p.add_argument("--publishers", type=int, default=3, help="publisher processes")
    p.add_argument("--devices", type=int, default=DEVICES_DEFAULT, help="distinct device ids")
    p.add_argument("--quick", action="store_true", help="smoke run: 3,000 messages, 1 round")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--no-reference", action="store_true", help="skip the bare + fixed reply reference"
    )
    p.add_argument(
        "--profile", metavar="PATH", help="cProfile the platform's network thread in round 1"
    )
    p.add_argument(
        "--py-spy", metavar="PATH", help="sample the platform consumer of round 1 with py-spy"
    )
    p.add_argument(
        "--store",
        choices=("memory", "sqlite"),
        default="memory",
        help="the platform's session store: the default in-memory one, or SQLite in a data "
        "directory (what a platform started with data_dir keeps)",
    )
    p.add_argument(
        "--check", action="store_true", help="exit 2 when the platform misses the target"
    )
    return p


def main(argv: Iterable[str] | None = None) -> int:
    args = parser().parse_args(None if argv is None else list(argv))
    if args.quick:
        args.messages, args.rounds, args.publishers = 3_000, 1, 2
    if args.messages < 2 or args.rounds < 1 or args.publishers < 1 or args.devices < 1:
        raise SystemExit("--messages must be >= 2 and --rounds, --publishers, --devices >= 1")
    options = Options(
        args.messages,
        args.rounds,
        args.publishers,
        args.devices,
        not args.no_reference,
        args.profile,
        args.py_spy,
        args.store,
    )
    doc = {"facts": facts(), **run(options)}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(report(doc))
        if args.py_spy:
            print(f"\n{py_spy_shares(args.py_spy)}")
        if args.profile:
            print(f"\ncProfile of the platform's network thread (round 1): {args.profile}\n")
            print(cprofile_top(args.profile))
    if doc["summary"]["problems"]:
        return 1
    if args.check and not doc["summary"]["pass"]:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
