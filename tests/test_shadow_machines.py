"""The device shadow machines stepped by hand (manual clock, exact effects), and the shadow codec."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfsm.adapters.codec import Codec, DecodeError
from iotfsm.fsm import CancelTimer, Connected, Disconnected, Publish, SetTimer, Stepper
from iotfsm.machines import all_features
from iotfsm.machines.feature import DeviceKey
from iotfsm.machines.shadow import (
    DEVICE,
    INVALID_UPDATE,
    OK,
    PLATFORM,
    VERSION_CONFLICT,
    ApplyShadowDelta,
    DeleteResult,
    GetResult,
    ReportShadow,
    SetDesired,
    ShadowDelete,
    ShadowDelta,
    ShadowGet,
    ShadowUpdate,
    UpdateResult,
)

KEY = DeviceKey("P1", "dev-1")
CODEC = Codec(all_features())


# ---- platform -------------------------------------------------------------------------------


def test_platform_get_of_an_empty_shadow_answers_version_0() -> None:
    s = Stepper(PLATFORM, key=KEY, start=100.0)
    doc = {"state": {"reported": {}}, "metadata": {"reported": {}}, "version": 0, "timestamp": 0}
    assert s.step(ShadowGet("P1-0")) == [Publish(GetResult(OK, 100, "P1-0", doc), 0)]


def test_platform_update_desired_delta_report_round_trip() -> None:
    s = Stepper(PLATFORM, key=KEY, start=100.0)
    answer = UpdateResult(
        OK, 100, "P1-1", {"state": {"reported": {"t": 20}}, "version": 1, "timestamp": 100_000}
    )
    assert s.step(ShadowUpdate({"reported": {"t": 20}}, 0, "P1-1")) == [Publish(answer, 0)]
    assert s.state == "kept"
    delta = ShadowDelta({"state": {"t": 25}, "version": 2, "timestamp": 100_000}, 100)
    assert s.step(SetDesired({"t": 25})) == [Publish(delta, 0)]
    assert s.ctx.desired_meta == {"t": 100_000} and s.ctx.reported_meta == {"t": 100_000}
    # the device reports the desired value on version 2: accepted, no delta left
    effects = s.step(ShadowUpdate({"reported": {"t": 25}}, 2, "P1-2"))
    assert effects == [
        Publish(
            UpdateResult(
                OK,
                100,
                "P1-2",
                {"state": {"reported": {"t": 25}}, "version": 3, "timestamp": 100_000},
            ),
            0,
        )
    ]
    assert s.step(SetDesired({"t": 25})) == []  # desired equals reported: nothing to push
    got = s.step(ShadowGet("P1-3"))[0].message.payload  # type: ignore[attr-defined]
    assert got["state"] == {"reported": {"t": 25}, "desired": {"t": 25}, "delta": {}}
    assert got["version"] == 4


def test_platform_refuses_a_version_conflict_with_the_current_document() -> None:
    s = Stepper(PLATFORM, key=KEY, start=100.0)
    s.step(ShadowUpdate({"reported": {"t": 1}}, 0, "a"))
    s.step(SetDesired({"t": 2}))  # version 2
    [answer] = s.step(ShadowUpdate({"reported": {"t": 9}}, 1, "b"))
    assert answer.message.result == VERSION_CONFLICT  # type: ignore[attr-defined]
    assert answer.message.payload["version"] == 2  # type: ignore[attr-defined]
    assert answer.message.payload["state"]["delta"] == {"t": 2}  # type: ignore[attr-defined]
    assert (s.ctx.reported, s.ctx.version) == ({"t": 1}, 2)  # state intact


def test_platform_refuses_an_update_without_reported_or_desired() -> None:
    s = Stepper(PLATFORM, key=KEY, start=100.0)
    effects = s.step(ShadowUpdate({"reported": 5}, 0, "x"))
    assert effects[0] == Publish(UpdateResult(INVALID_UPDATE, 100, "x"), 0)
    assert (s.state, s.ctx.version) == ("empty", 0)


def test_platform_delete_clears_and_null_removes_a_key() -> None:
    s = Stepper(PLATFORM, key=KEY, start=100.0)
    s.step(ShadowUpdate({"reported": {"a": 1, "b": 2}}, 0, "x"))
    s.step(ShadowUpdate({"reported": {"a": None}}, 0, "y"))
    assert s.ctx.reported == {"b": 2} and "a" not in s.ctx.reported_meta
    assert s.step(ShadowDelete("z")) == [
        Publish(DeleteResult(OK, 100, "z", {"version": 3, "timestamp": 100_000}), 0)
    ]
    assert (s.state, s.ctx.reported, s.ctx.version) == ("empty", {}, 3)


# ---- device ---------------------------------------------------------------------------------


def _synced(version: int = 1, delta: dict[str, Any] | None = None) -> Stepper:
    s = Stepper(DEVICE, key=KEY)
    assert s.step(Connected()) == [Publish(ShadowGet("P1-1"), 0), SetTimer("reply", 5.0, 1)]
    state: dict[str, Any] = {"reported": {"t": 20}}
    if delta:
        state["delta"] = delta
    effects = s.step(GetResult(OK, 0, "P1-1", {"state": state, "version": version}))
    assert effects[0] == CancelTimer("reply")
    assert effects[1:] == ([ApplyShadowDelta(delta)] if delta else [])
    assert (s.state, s.ctx.reported, s.ctx.version) == ("synced", {"t": 20}, version)
    return s


def test_device_syncs_on_connect_and_catches_up_with_the_delta() -> None:
    _synced(version=4, delta={"t": 25})


def test_device_applies_a_newer_delta_and_ignores_a_stale_one() -> None:
    s = _synced(version=1)
    assert s.step(ShadowDelta({"state": {"t": 25}, "version": 2})) == [ApplyShadowDelta({"t": 25})]
    assert s.ctx.version == 2
    [log] = s.step(ShadowDelta({"state": {"t": 9}, "version": 2}))
    assert "ignored a shadow delta of version 2" in log.text  # type: ignore[attr-defined]


def test_device_reports_with_its_version_and_keeps_the_accepted_copy() -> None:
    s = _synced(version=2)
    assert s.step(ReportShadow({"t": 25})) == [
        Publish(ShadowUpdate({"reported": {"t": 25}}, 2, "P1-2"), 0),
        SetTimer("report", 5.0, 2),
    ]
    assert s.step(ReportShadow({"h": 1})) == []  # one report at a time: this one waits
    effects = s.step(UpdateResult(OK, 0, "P1-2", {"version": 3}))
    assert effects == [  # re-armed in the same state: a new generation, no cancel
        Publish(ShadowUpdate({"reported": {"h": 1}}, 3, "P1-3"), 0),
        SetTimer("report", 5.0, 3),
    ]
    assert s.ctx.reported == {"t": 25}


def test_device_on_conflict_adopts_the_document_applies_its_delta_and_resends() -> None:
    s = _synced(version=2)
    s.step(ReportShadow({"t": 21}))
    doc = {"state": {"reported": {"t": 20}, "desired": {"t": 30}, "delta": {"t": 30}}, "version": 5}
    effects = s.step(UpdateResult(VERSION_CONFLICT, 0, "P1-2", doc))
    assert effects == [
        ApplyShadowDelta({"t": 30}),
        Publish(ShadowUpdate({"reported": {"t": 21}}, 5, "P1-3"), 0),
        SetTimer("report", 5.0, 3),
    ]


def test_device_offline_reports_wait_for_the_sync() -> None:
    s = Stepper(DEVICE, key=KEY)
    assert s.step(ReportShadow({"t": 1})) == []
    s.step(Connected())
    effects = s.step(GetResult(OK, 0, "P1-1", {"state": {"reported": {}}, "version": 7}))
    assert effects[1:] == [
        Publish(ShadowUpdate({"reported": {"t": 1}}, 7, "P1-2"), 0),
        SetTimer("report", 5.0, 2),
    ]
    s.step(Disconnected())
    assert s.state == "offline" and s.ctx.sending == {"t": 1}
    # reconnected: the unanswered report goes out again after the next sync
    s.step(Connected())
    assert s.ctx.pending == {"t": 1} and s.ctx.sending is None


def test_device_ignores_answers_to_someone_else() -> None:
    s = _synced()
    [log] = s.step(UpdateResult(OK, 0, "other", {"version": 9}))
    assert "ignored a shadow update" in log.text  # type: ignore[attr-defined]
    assert s.ctx.version == 1


# ---- codec ----------------------------------------------------------------------------------

TENCENT_EXAMPLES = [
    # Tencent's C SDK shadow_sample log (docs/IoT_Hub/shadow_sample_设备影子.md)
    ("up", b'{"type":"get", "clientToken":"S3EUVBRJLB-0"}'),
    (
        "up",
        b'{"type":"update", "state":{"reported":{"updateCount":0}}, "clientToken":"S3EUVBRJLB-1"}',
    ),
    (
        "down",
        b'{"clientToken":"S3EUVBRJLB-0","payload":{"state":{"reported":{"updateCount":5}},"timestamp":1568696289949,"version":5},"result":0,"timestamp":1568696341,"type":"get"}',
    ),
    # Tencent's device shadow data flow document (cloud.tencent.com/document/product/634/14072)
    (
        "up",
        b'{"type": "update","state": {"reported": {"temperature": 35}},"version": 0,"clientToken": "5551"}',
    ),
    (
        "down",
        b'{"type":"delta","payload":{"state":{"temperature":25},"version":2},"timestamp":1514967088}',
    ),
]


@pytest.mark.parametrize(("direction", "payload"), TENCENT_EXAMPLES)
def test_tencent_examples_decode(direction: str, payload: bytes) -> None:
    message = CODEC.decode("shadow", direction, payload)  # type: ignore[arg-type]
    assert CODEC.decode("shadow", direction, CODEC.encode(message)) == message  # type: ignore[arg-type]


def test_a_malformed_update_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="state"):
        CODEC.decode("shadow", "up", b'{"type":"update","state":[1],"clientToken":"x"}')


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.dictionaries(st.text(max_size=8), JSON, max_size=4),
    st.integers(0, 2**31),
    st.text(max_size=20),
)
def test_updates_and_deltas_round_trip(state: dict[str, Any], version: int, token: str) -> None:
    update = ShadowUpdate({"reported": state}, version, token)
    assert CODEC.decode("shadow", "up", CODEC.encode(update)) == update
    delta = ShadowDelta({"state": state, "version": version}, version)
    assert CODEC.decode("shadow", "down", CODEC.encode(delta)) == delta
