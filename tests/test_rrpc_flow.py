"""RRPC through the role facades over the memory broker (manual clock): `Platform.call_async`
and `call`, `Device(on_rrpc=...)` and `answer_rrpc`, timeouts, late answers, bad input."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from iotfsm import DeviceKey, MemoryBroker, Platform, RrpcTimeout
from iotfsm.adapters.identity.registry import RegistryError
from iotfsm.fsm import ManualClock
from iotfsm.fsm.trace import StepRecord
from iotfsm.testing.pair import START, Pair


def test_a_call_is_answered_on_the_process_id_of_its_request(tmp_path: Path) -> None:
    seen: list[tuple[bytes, str]] = []

    def answer(payload: bytes, process_id: str) -> bytes:
        seen.append((payload, process_id))
        return payload.upper()

    with Pair(tmp_path) as pair:
        pair.device("dev-1", on_rrpc=answer).start()
        key = DeviceKey(pair.product, "dev-1")
        futures = [pair.platform.call_async(key, f"ping {n}") for n in range(3)]
        pair.settle()
        assert [f.result(timeout=0) for f in futures] == [b"PING 0", b"PING 1", b"PING 2"]
        ids = [p for _, p in seen]
        assert len(set(ids)) == 3 and all(p.isdigit() for p in ids)
        requests = [d.topic for d in pair.broker.record or [] if d.topic.startswith("$rrpc/rxd")]
        answers = [d.topic for d in pair.broker.record or [] if d.topic.startswith("$rrpc/txd")]
        assert [t.rsplit("/", 1)[1] for t in requests] == ids
        assert [t.rsplit("/", 1)[1] for t in answers] == ids
        assert answers[0] == f"$rrpc/txd/{pair.product}/dev-1/{ids[0]}"
        session = pair.platform.runtime.session("rrpc", key)
        assert session.state == "idle" and session.ctx.answered == 3


def test_a_call_nobody_answers_times_out_and_a_late_answer_is_dropped(tmp_path: Path) -> None:
    later: list[str] = []
    with Pair(tmp_path) as pair:
        device = pair.device("dev-1", on_rrpc=lambda p, pid: later.append(pid)).start()
        key = DeviceKey(pair.product, "dev-1")
        future = pair.platform.call_async(key, b"slow", timeout=5.0)
        pair.settle()
        assert not future.done() and len(later) == 1
        pair.advance(5.0)
        with pytest.raises(RrpcTimeout, match="no answer within 5 s") as caught:
            future.result(timeout=0)
        assert caught.value.key == key
        device.answer_rrpc(later[0], b"too late")  # the device still holds it open: sent
        pair.settle()
        assert pair.platform.rrpc_dropped == {"late": 1}
        assert pair.platform.runtime.session("rrpc", key).state == "idle"


def test_calls_refuse_bad_input_at_once(tmp_path: Path) -> None:
    with Pair(tmp_path) as pair:
        pair.device("dev-1").start()
        key = DeviceKey(pair.product, "dev-1")
        with pytest.raises(RegistryError, match="not registered"):
            pair.platform.call_async(DeviceKey(pair.product, "nobody"), b"x")
        with pytest.raises(TypeError, match="DeviceKey"):
            pair.platform.call_async("dev-1", b"x")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="bytes or str"):
            pair.platform.call_async(key, {"cmd": 1})  # type: ignore[arg-type]
        for timeout in (0, -1, 61, float("nan"), True):
            with pytest.raises(ValueError, match="timeout"):
                pair.platform.call_async(key, b"x", timeout=timeout)
        with pytest.raises(ValueError, match="limit"):
            pair.platform.call_async(key, b"x" * 20_000)
        assert pair.platform.runtime.session("rrpc", key).ctx.pending == {}


def test_answers_on_foreign_or_malformed_topics_change_nothing(tmp_path: Path) -> None:
    with Pair(tmp_path) as pair:
        device = pair.device("dev-1", on_rrpc=lambda p, pid: None).start()
        pair.device("dev-2").start()
        key = DeviceKey(pair.product, "dev-1")
        future = pair.platform.call_async(key, b"x", timeout=5.0)
        pair.settle()
        session = pair.platform.runtime.session("rrpc", key)
        before = (session.state, repr(session.ctx))
        (process_id,) = session.ctx.pending
        runtime = pair.platform.runtime
        rejected = runtime.rejected
        # the right processId on another device's topic: that device has no such call
        runtime.on_message(f"$rrpc/txd/{pair.product}/dev-2/{process_id}", b"forged")
        runtime.on_message(f"$rrpc/txd/{pair.product}/dev-1/{process_id}/x", b"bad")
        runtime.on_message(f"$rrpc/txd/{pair.product}/dev-1/a.b", b"bad")
        runtime.on_message(f"$rrpc/txd/{pair.product}/dev-1/abc", b"bad")
        runtime.on_message(f"$rrpc/txd/{pair.product}/unregistered/{process_id}", b"x")
        assert runtime.rejected == rejected + 2
        assert pair.platform.rrpc_dropped == {"unknown": 1, "malformed": 1}
        assert (session.state, repr(session.ctx)) == before and not future.done()
        # the device refuses requests on another device's topic and bad processIds
        drt = device.runtime
        drt.on_message(f"$rrpc/rxd/{pair.product}/dev-2/7", b"x")
        drt.on_message(f"$rrpc/rxd/{pair.product}/dev-1/abc", b"x")
        assert drt.session("rrpc", device.key).ctx.open.keys() == {process_id}
        with pytest.raises(ValueError, match="processId"):
            device.answer_rrpc("abc", b"x")
        with pytest.raises(TypeError, match="bytes or str"):
            device.answer_rrpc(process_id, 5)  # type: ignore[arg-type]
        device.answer_rrpc(process_id, "ok")
        pair.settle()
        assert future.result(timeout=0) == b"ok"


def test_call_blocks_only_its_caller_and_refuses_the_runtime_thread(tmp_path: Path) -> None:
    refused: list[BaseException] = []
    holder: list[Pair] = []

    def tracer(record: StepRecord) -> None:  # runs inside the platform's steps
        if record.machine == "rrpc.platform" and record.trigger == "CallDevice" and not refused:
            try:
                holder[0].platform.call(DeviceKey(holder[0].product, "dev-1"), b"nested")
            except RuntimeError as exc:
                refused.append(exc)

    with Pair(tmp_path, on_step=tracer) as pair:
        holder.append(pair)
        device = pair.device("dev-1", on_rrpc=lambda p, pid: None).start()
        key = DeviceKey(pair.product, "dev-1")
        result: list[bytes] = []
        caller = threading.Thread(target=lambda: result.append(pair.platform.call(key, b"hi")))
        caller.start()
        pair.wait_for("the request", lambda: bool(device.runtime.session("rrpc", key).ctx.open))
        (process_id,) = device.runtime.session("rrpc", key).ctx.open
        device.answer_rrpc(process_id, b"hello")
        caller.join(timeout=10)
        assert result == [b"hello"]
        assert len(refused) == 1 and "call_async" in str(refused[0])


def test_stop_ends_waiting_calls(tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    pair.device("dev-1").start()
    future = pair.platform.call_async(DeviceKey(pair.product, "dev-1"), b"x")
    pair.close()
    with pytest.raises(RrpcTimeout, match="platform stopped"):
        future.result(timeout=0)


def test_call_raises_the_machines_timeout_at_the_deadline(tmp_path: Path) -> None:
    with Pair(tmp_path) as pair:
        pair.device("dev-1").start()  # no on_rrpc: it never answers
        key = DeviceKey(pair.product, "dev-1")
        caught: list[BaseException] = []

        def caller() -> None:
            try:
                pair.platform.call(key, b"x", timeout=2.0)
            except RrpcTimeout as exc:
                caught.append(exc)

        thread = threading.Thread(target=caller)
        thread.start()
        session = pair.platform.runtime.session("rrpc", key)
        pair.wait_for("the call", lambda: bool(session.ctx.pending))
        pair.advance(2.0)
        thread.join(timeout=10)
        assert [str(e).split(";")[0] for e in caught] == [
            f"RRPC to {pair.product}/dev-1: no answer within 2 s"
        ]


def test_calls_in_flight_at_a_restart_expire_quietly_and_process_ids_keep_counting(
    tmp_path: Path,
) -> None:
    clock = ManualClock(START)
    broker = MemoryBroker(scheduler=clock)
    first = Platform(broker, data_dir=tmp_path / "data", clock=clock).start()
    first.register_device("P1", "dev-1")
    key = DeviceKey("P1", "dev-1")
    waiting = first.call_async(key, b"x", timeout=5.0)  # nobody is online to answer
    (old,) = first.runtime.session("rrpc", key).ctx.pending
    first.stop()
    with pytest.raises(RrpcTimeout, match="platform stopped"):
        waiting.result(timeout=0)
    again = Platform(broker, data_dir=tmp_path / "data", clock=clock).start()
    try:
        session = again.runtime.session("rrpc", key)
        assert session.state == "waiting" and list(session.ctx.pending) == [old]
        clock.advance(5.0)  # its deadline: timed out in the session, no caller to tell
        assert (session.state, session.ctx.timed_out) == ("idle", 1)
        fresh = again.call_async(key, b"y", timeout=5.0)
        assert list(session.ctx.pending) == [str(int(old) + 1)] and not fresh.done()
    finally:
        again.stop()
