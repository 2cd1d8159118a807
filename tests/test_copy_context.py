"""`copy_context`, the planners' fast stand-in for `copy.deepcopy` of session contexts: equal to
deepcopy's copy, sharing nothing with the original, and keeping shared parts shared."""

from __future__ import annotations

import copy
import enum
from typing import Any

import attrs

from iotfsm.machines import all_features
from iotfsm.machines.examples import KEY
from iotfsm.testing.paths import copy_context


class Colour(enum.Enum):
    RED = 1


@attrs.define
class Inner:
    items: list[Any] = attrs.Factory(list)


@attrs.frozen
class Outer:
    a: Inner
    b: Inner
    table: dict[str, Any]
    tags: set[str]
    pair: tuple[int, list[int]]
    colour: Colour = Colour.RED


def test_a_copy_equals_deepcopy_and_shares_what_the_original_shares() -> None:
    shared = Inner([1, {"k": [2]}])
    original = Outer(shared, shared, {"x": shared, "y": None}, {"t"}, (1, [2]))
    clone = copy_context(original)
    assert clone == copy.deepcopy(original)
    assert clone.a is clone.b is clone.table["x"] and clone.a is not shared
    assert clone.pair[1] is not original.pair[1] and clone.colour is Colour.RED
    clone.a.items[1]["k"].append(3)
    assert shared.items == [1, {"k": [2]}]


def test_every_declared_context_copies_like_deepcopy() -> None:
    for feature in all_features():
        for spec in (feature.device, feature.platform):
            ctx = spec.context(KEY)
            assert copy_context(ctx) == copy.deepcopy(ctx) and copy_context(ctx) is not ctx
