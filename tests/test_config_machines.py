"""The remote-config machines stepped by hand: no broker, a manual clock, every effect exact."""

from __future__ import annotations

import logging

import pytest

from iotfsm.adapters.codec import Codec, DecodeError
from iotfsm.fsm import CancelTimer, Connected, Disconnected, Log, Publish, SetTimer, Stepper
from iotfsm.machines.config import (
    DEVICE,
    FEATURE,
    PLATFORM,
    ApplyConfig,
    ConfigChanged,
    ConfigGet,
    ConfigLoaded,
    ConfigPush,
    ConfigReply,
    ConfigSaved,
    DeviceContext,
    LoadProductConfig,
    ProductConfig,
    PushConfig,
    RequestConfig,
    SaveConfig,
)
from iotfsm.machines.feature import DeviceKey

KEY = DeviceKey("P1", "dev-1")
A = {"ip": "10.0.0.1", "port": 8080}
B = {"ip": "10.0.0.2", "port": 8080}
GET = [Publish(ConfigGet(), 0), SetTimer("reply", 5.0, 1)]

DISABLED_TEXT = "remote config is disabled for this product (result 1001)"
NONE_TEXT = "the platform has no config for this product (result 1002)"


def device(config: dict[str, object] | None = None) -> Stepper:
    s = Stepper(DEVICE, key=KEY)
    s.session.ctx = DeviceContext(config=config)
    return s


# ---- device ---------------------------------------------------------------------------------


def test_device_asks_on_connect_applies_and_persists_the_reply() -> None:
    s = device()
    assert s.state == "offline"
    assert s.step(Connected()) == GET
    assert s.state == "asking"
    assert s.step(ConfigReply(0, A)) == [CancelTimer("reply"), SaveConfig(A)]
    assert s.step(ConfigSaved(A)) == [ApplyConfig(A)]
    assert (s.state, s.ctx.config, s.ctx.result, s.ctx.note) == ("listening", A, 0, "applied")
    assert s.advance(60.0) == []  # the cancelled reply timer is stale when it comes due


def test_device_applies_a_push_once_and_ignores_duplicates() -> None:
    s = device()
    s.step(Connected())
    s.step(ConfigReply(0, A))
    assert s.step(ConfigPush(0, B)) == [SaveConfig(B)]
    assert s.step(ConfigSaved(B)) == [ApplyConfig(B)]
    # a duplicate delivery of the same push, and a reply repeating it, apply nothing
    assert s.step(ConfigPush(0, dict(B))) == []
    assert s.step(ConfigReply(0, B)) == []
    assert (s.ctx.config, s.ctx.note) == (B, "up to date")


def test_a_restarted_device_starts_from_its_saved_config_and_only_a_change_applies() -> None:
    s = device(config=A)
    assert s.step(Connected()) == GET
    assert s.step(ConfigReply(0, A)) == [CancelTimer("reply")]  # already running A
    assert s.step(ConfigPush(0, B)) == [SaveConfig(B)]
    assert s.step(ConfigSaved(B)) == [ApplyConfig(B)]


def test_device_retries_with_backoff_then_listens_for_pushes() -> None:
    s = device(config=A)
    s.step(Connected())
    assert s.advance(5.0) == [Publish(ConfigGet(), 0), SetTimer("reply", 10.0, 2)]
    assert s.advance(10.0) == [Publish(ConfigGet(), 0), SetTimer("reply", 20.0, 3)]
    text = "no reply after 3 gets; keeping the current config, listening for pushes"
    assert s.advance(20.0) == [Log.warning(text)]
    assert (s.state, s.ctx.result, s.ctx.note) == ("listening", None, text)
    assert s.step(ConfigPush(0, B)) == [SaveConfig(B)]
    assert s.step(ConfigSaved(B)) == [ApplyConfig(B)]


def test_disabled_and_missing_config_keep_the_current_one_and_say_why() -> None:
    s = device(config=A)
    s.step(Connected())
    assert s.step(ConfigReply(1001)) == [
        CancelTimer("reply"),
        Log.warning(f"config reply not applied: {DISABLED_TEXT}; keeping the current config"),
    ]
    assert (s.state, s.ctx.config, s.ctx.result) == ("listening", A, 1001)
    assert s.ctx.note == f"{DISABLED_TEXT}; keeping the current config"
    # without any config yet, "no config" is news, not a problem: an info line
    fresh = device()
    fresh.step(Connected())
    assert fresh.step(ConfigReply(1002)) == [
        CancelTimer("reply"),
        Log.info(f"config reply: {NONE_TEXT}; no config yet"),
    ]
    assert (fresh.ctx.config, fresh.ctx.result) == (None, 1002)


def test_a_push_with_a_non_zero_result_is_not_applied() -> None:
    # the C SDK ignores `result` on push; we do not install what the platform marks as failed
    s = device(config=A)
    assert s.step(ConfigPush(1003, B)) == [
        Log.warning(
            "config push not applied: the platform says the config is invalid (result 1003);"
            " keeping the current config"
        )
    ]
    assert s.step(ConfigPush(0, None)) == [
        Log.warning(
            "config push not applied: a push with result 0 but no payload; keeping the current"
            " config"
        )
    ]
    assert (s.ctx.config, s.ctx.result) == (A, 0)


def test_request_config_asks_now_but_one_get_at_a_time() -> None:
    s = device()
    assert s.step(RequestConfig()) == [
        Log.info("config requested while offline: the device asks when it connects")
    ]
    s.step(Connected())
    assert s.step(RequestConfig()) == []  # a get is already out
    s.step(ConfigReply(1002))
    assert s.step(RequestConfig()) == [Publish(ConfigGet(), 0), SetTimer("reply", 5.0, 2)]
    assert s.state == "asking"


def test_reconnect_asks_again_and_a_late_timer_never_fires_into_it() -> None:
    s = device()
    s.step(Connected())
    assert s.step(Disconnected()) == [CancelTimer("reply")]
    assert s.step(Connected()) == [Publish(ConfigGet(), 0), SetTimer("reply", 5.0, 2)]
    assert s.advance(5.0) == [Publish(ConfigGet(), 0), SetTimer("reply", 10.0, 3)]
    stale = [r for r in s.trace if r.trigger == "timer:reply" and not r.handled]
    assert len(stale) == 1


# ---- platform -------------------------------------------------------------------------------

V1 = ProductConfig(enabled=True, version=1, payload=A, revision=1)
V2 = ProductConfig(enabled=True, version=2, payload=B, revision=2)
OFF = ProductConfig(enabled=False, version=2, payload=B, revision=3)
ON = ProductConfig(enabled=True, version=2, payload=B, revision=4)


def test_platform_loads_the_product_config_on_the_first_get_then_answers_from_it() -> None:
    s = Stepper(PLATFORM, key=KEY)
    assert s.step(ConfigGet()) == [LoadProductConfig()]
    assert (s.state, s.ctx.pending) == ("unknown", True)
    assert s.step(ConfigLoaded(V1)) == [Publish(ConfigReply(0, A), 0)]
    assert (s.state, s.ctx.pending) == ("serving", False)
    assert s.step(ConfigGet()) == [Publish(ConfigReply(0, A), 0)]
    assert s.ctx.replies == 2


def test_platform_answers_1002_without_config_and_1001_when_disabled() -> None:
    s = Stepper(PLATFORM, key=KEY)
    s.step(ConfigGet())
    assert s.step(ConfigLoaded(ProductConfig())) == [Publish(ConfigReply(1002), 0)]
    assert s.state == "empty"
    assert s.step(ConfigChanged(V1)) == [Publish(ConfigPush(0, A), 0)]
    assert s.step(ConfigChanged(V2)) == [Publish(ConfigPush(0, B), 0)]
    assert s.step(ConfigChanged(OFF)) == []
    assert s.state == "disabled"
    assert s.step(ConfigGet()) == [Publish(ConfigReply(1001), 0)]
    # switched back on: the current version goes out again
    assert s.step(ConfigChanged(ON)) == [Publish(ConfigPush(0, B), 0)]
    assert (s.state, s.ctx.pushes) == ("serving", 3)


def test_changes_while_disabled_are_remembered_and_pushed_on_enable() -> None:
    s = Stepper(PLATFORM, key=KEY)
    s.step(ConfigLoaded(ProductConfig(enabled=False, revision=1)))
    assert s.step(ConfigChanged(ProductConfig(False, 1, A, 2))) == []
    assert s.step(ConfigGet()) == [Publish(ConfigReply(1001), 0)]
    assert s.step(ConfigChanged(ProductConfig(True, 1, A, 3))) == [Publish(ConfigPush(0, A), 0)]


def test_stale_news_is_ignored_whatever_order_it_arrives_in() -> None:
    s = Stepper(PLATFORM, key=KEY)
    s.step(ConfigGet())
    # a set_config on another thread overtook the answer to LoadProductConfig
    assert s.step(ConfigChanged(V2)) == [Publish(ConfigReply(0, B), 0)]  # answers the get
    assert s.step(ConfigLoaded(V1)) == []
    assert s.step(ConfigChanged(V2)) == []  # the same news twice
    assert (s.state, s.ctx.config) == ("serving", V2)


def test_a_change_before_any_get_is_pushed_once() -> None:
    s = Stepper(PLATFORM, key=KEY)
    assert s.step(ConfigChanged(V1)) == [Publish(ConfigPush(0, A), 0)]
    # a flip of the switch that keeps the version does not repeat what the device has
    assert s.step(ConfigChanged(ProductConfig(True, 1, A, 2))) == []


def test_push_config_pushes_only_a_servable_config() -> None:
    s = Stepper(PLATFORM, key=KEY)
    assert s.step(PushConfig()) == [
        Log.warning("config push refused: the product's config is not loaded")
    ]
    s.step(ConfigLoaded(V1))
    assert s.step(PushConfig()) == [Publish(ConfigPush(0, A), 0)]
    s.step(ConfigChanged(OFF))
    assert s.step(PushConfig()) == [Log.warning("config push refused: remote config is disabled")]


# ---- the wire -------------------------------------------------------------------------------

CODEC = Codec([FEATURE])


def test_wire_forms_both_ways() -> None:
    assert CODEC.encode(ConfigGet()) == b'{"type":"get"}'
    assert CODEC.encode(ConfigReply(0, A)) == (
        b'{"type":"reply","result":0,"payload":{"ip":"10.0.0.1","port":8080}}'
    )
    # a non-zero answer carries no payload a result-ignoring device could install
    assert CODEC.encode(ConfigReply(1001)) == b'{"type":"reply","result":1001}'
    assert CODEC.encode(ConfigPush(0, A)).startswith(b'{"type":"push","result":0,"payload":{')
    got = CODEC.decode("config", "down", b'{"type":"push","result":"0","payload":{"a":[1,{}]}}')
    assert got == ConfigPush(0, {"a": [1, {}]})
    assert CODEC.decode("config", "down", b'{"type":"reply","result":1001}') == ConfigReply(1001)
    assert CODEC.decode("config", "up", b'{"type":"get"}') == ConfigGet()


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b'{"type":"push","result":0,"payload":[1,2]}', "expected a JSON object, got list"),
        (b'{"type":"reply","result":"ok","payload":{}}', "expected an integer or a numeric"),
        (b'{"type":"reply","result":true,"payload":{}}', "expected an integer"),
        (b'{"type":"reply","result":0,"payload":{},}', "not valid JSON"),
        (b'{"type":"update","result":0}', "unknown message type"),
    ],
)
def test_malformed_config_messages_are_refused_with_a_clear_error(
    payload: bytes, problem: str
) -> None:
    with pytest.raises(DecodeError, match=problem):
        CODEC.decode("config", "down", payload)


def test_log_levels_of_decline_lines() -> None:
    s = device()
    (no_config,) = s.step(ConfigPush(1002))
    (unknown,) = s.step(ConfigPush(7))
    assert isinstance(no_config, Log) and no_config.level == logging.INFO
    assert unknown == Log.warning(
        "config push not applied: the platform answered result 7; no config yet"
    )


def test_a_payload_sent_as_a_json_string_holding_an_object_is_accepted() -> None:
    """Seed 004's table types `payload` as a string, its examples show an object: both decode to
    the object; iotfsm emits the object (the form of the examples and of Tencent's C SDK)."""
    codec = Codec([FEATURE])
    text = b'{"type":"push","result":0,"payload":"{\\"ip\\":\\"10.0.0.1\\",\\"port\\":8080}"}'
    assert codec.decode("config", "down", text) == ConfigPush(0, A)
    assert (
        codec.encode(ConfigPush(0, A))
        == b'{"type":"push","result":0,"payload":{"ip":"10.0.0.1","port":8080}}'
    )
    for bad in (b'"[1]"', b'"not json"', b'"\\"x\\""', b"7"):
        with pytest.raises(DecodeError, match="payload"):
            codec.decode("config", "down", b'{"type":"reply","result":0,"payload":' + bad + b"}")
