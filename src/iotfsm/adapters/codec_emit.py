"""Generated wire documents for plain messages, which a fast JSON encoder can then write exactly.

The codec's exact output is what `json` writes for the document cattrs unstructures: `type`
first, the declared fields in order under their wire names, numbers as strings where marked
`text`, keys left out where marked `omit_if_none`, compact separators. For a message whose every
value is a string, an integer, a boolean or None (most of them: no free-form JSON object, no
kept extras), orjson writes the very same bytes ~7x faster than `json`; floats are the one JSON
type the two write differently (`1e-05` against `0.00001`), and those can only sit in free-form
objects or extras.

So this module writes, per class, one function that builds the document and checks every value's
type on the way (`type(v) is str`, `int`, `bool`, None, a nested class of this kind). A class with
any other field type gets no function (`None`); a value that fails its check raises
`FallbackError`, and the codec then encodes that message the way it always has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ..machines.messages import Message, wire_info
from .codec_gen import CodeGenerator, optional

Emit = Callable[[Any], dict[str, Any]]


class FallbackError(Exception):
    """This message holds a value the plain path does not write; the codec's general path does."""


_PLAIN = {str: "str", int: "int", bool: "bool"}


class EmitGenerator(CodeGenerator[Emit]):
    """Writes document-building functions for plain attrs classes."""

    def __init__(self) -> None:
        super().__init__({"_Fallback": FallbackError})

    def _value(self, tp: Any, var: str, lines: list[str], indent: str) -> bool:
        """Lines that check `var` as `tp` (and turn a nested object into its document)."""
        if tp in _PLAIN:
            lines.append(f"{indent}if type({var}) is not {_PLAIN[tp]}: raise _Fallback")
            return True
        inner = optional(tp)
        if inner is not None:
            body: list[str] = []
            if not self._value(inner, var, body, indent + "    "):
                return False
            lines.append(f"{indent}if {var} is not None:")
            lines.extend(body)
            return True
        if isinstance(tp, type) and attrs.has(tp) and not issubclass(tp, Message):
            nested = self.get(tp)
            if nested is None:
                return False
            lines.append(f"{indent}if type({var}) is not {self._bind(tp)}: raise _Fallback")
            lines.append(f"{indent}{var} = {self._bind(nested)}({var})")
            return True
        return False

    def _generate(self, cls: type[Any]) -> Emit | None:
        attrs.resolve_types(cls)
        message = issubclass(cls, Message)
        if message:
            lines = ["if o.extra: raise _Fallback", f"d = {{'type': {cls.TYPE!r}}}"]
        else:
            lines = ["d = {}"]
        for n, field in enumerate(attrs.fields(cls)):
            if message and field.name == "extra":
                continue
            if not field.init:
                return None  # cattrs' handling of such fields is not reproduced here
            info = wire_info(field)
            key = info.name or field.name
            if key == "type" and message:
                return None
            var = f"f{n}"
            lines.append(f"{var} = o.{field.name}")
            if info.text:
                lines.append(f"if {var} is not None: {var} = str({var})")
            elif not self._value(field.type, var, lines, ""):
                return None
            if info.omit_if_none:
                lines.append(f"if {var} is not None: d[{key!r}] = {var}")
            else:
                lines.append(f"d[{key!r}] = {var}")
        return self._compile(cls, "emit", lines, "d")
