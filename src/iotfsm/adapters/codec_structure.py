"""One-pass structuring of parsed JSON into message classes: generated code, one function per class.

cattrs' generated hooks call one hook function per field (two arguments each), gather optional
fields into a keyword dict, and need the message's unknown keys copied into a second dict under a
marker key first. For the messages this library declares (strings, integers, booleans, JSON
objects, tuples of these from JSON lists, nested attrs classes and their `| None` forms) the
checks are a `type(v) is` test each, so this module writes the whole structuring of a class as
one function: the checks inline, the nested classes called directly, unknown keys gathered
straight into `extra`, the constructor called positionally.

It only ever *accepts* what the codec's cattrs converters accept, and builds the same object: any
document it refuses (a wrong type, a missing field, a number out of range) raises, and the codec
then runs the detailed cattrs pass, which names the problem. A class with a field type outside
that set, or a default it cannot reproduce, gets no generated function (`None`), and the codec
keeps cattrs for it.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import attrs

from ..machines.messages import Message, wire_info
from .codec_gen import CodeGenerator, optional

Structure = Callable[[Any], Any]
FieldHook = Callable[[Any, Any], Any]


class RefusedError(Exception):
    """The fast path does not take this document; the codec's detailed pass says why."""


_MISSING = object()
_SCALARS = {str: "str", bool: "bool", dict[str, Any]: "dict"}


class Generator(CodeGenerator[Structure]):
    """Writes structuring functions for attrs classes; shared helpers live in its namespace.

    `int_hook` is the codec's lenient integer rule (an int or a numeric string, in the signed
    64-bit range), called for anything but a plain in-range int; `field_hook` gives a (class,
    field)'s own structure hook (the codec's `object_text` rule)."""

    def __init__(
        self,
        int_hook: FieldHook,
        field_hook: Callable[[type[Any], attrs.Attribute[Any]], FieldHook | None],
    ) -> None:
        super().__init__({"_int": int_hook, "_Refused": RefusedError, "_MISSING": _MISSING})
        self._field_hook = field_hook
        self._int_hook = int_hook

    def _converter(self, tp: Any) -> Callable[[Any], Any] | None:
        """A function that checks and converts one value of `tp` (ints, scalars and tuples of
        them: a JSON list of the right length, items by the same rules), or None."""
        if tp is int:
            int_hook = self._int_hook

            def to_int(v: Any) -> Any:
                if type(v) is int and -9223372036854775808 <= v <= 9223372036854775807:
                    return v
                return int_hook(v, None)

            return to_int
        if tp in (str, bool):

            def same(v: Any, tp: type[Any] = tp) -> Any:
                if type(v) is not tp:
                    raise RefusedError
                return v

            return same
        if typing.get_origin(tp) is not tuple:
            return None
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            each = self._converter(args[0])
            if each is None:
                return None

            def many(v: Any, each: Callable[[Any], Any] = each) -> tuple[Any, ...]:
                if type(v) is not list:
                    raise RefusedError
                return tuple(each(x) for x in v)

            return many
        items = [self._converter(a) for a in args]
        if not args or any(c is None for c in items):
            return None
        fixed = typing.cast(list[Callable[[Any], Any]], items)

        def exact(v: Any) -> tuple[Any, ...]:
            if type(v) is not list or len(v) != len(fixed):
                raise RefusedError
            return tuple(c(x) for c, x in zip(fixed, v, strict=True))

        return exact

    def _check(self, tp: Any, var: str, lines: list[str], indent: str) -> bool:
        """Append lines that check (and convert) `var` as `tp`; False when `tp` is unsupported."""
        if tp is int:
            # an in-range int as it is; up to 18 ASCII digits (what devices send as text, and
            # always in range) straight to int(); anything else by the codec's own rule
            lines.append(
                f"{indent}if type({var}) is not int or not "
                f"-9223372036854775808 <= {var} <= 9223372036854775807:"
            )
            lines.append(
                f"{indent}    if type({var}) is str and {var}.isascii() and {var}.isdigit()"
                f" and len({var}) <= 18: {var} = int({var})"
            )
            lines.append(f"{indent}    else: {var} = _int({var}, None)")
            return True
        if tp in _SCALARS:
            lines.append(f"{indent}if type({var}) is not {_SCALARS[tp]}: raise _Refused")
            return True
        inner = optional(tp)
        if inner is not None:
            body: list[str] = []
            if not self._check(inner, var, body, indent + "    "):
                return False
            lines.append(f"{indent}if {var} is not None:")
            lines.extend(body)
            return True
        if typing.get_origin(tp) is tuple:
            convert = self._converter(tp)
            if convert is None:
                return False
            lines.append(f"{indent}{var} = {self._bind(convert)}({var})")
            return True
        if isinstance(tp, type) and attrs.has(tp):
            nested = self.get(tp)
            if nested is None:
                return False
            lines.append(f"{indent}{var} = {self._bind(nested)}({var})")
            return True
        return False

    def _generate(self, cls: type[Any]) -> Structure | None:
        attrs.resolve_types(cls)
        message = issubclass(cls, Message)
        lines = ["if type(o) is not dict: raise _Refused"]
        positional: list[str] = []
        keywords: list[str] = []
        known = {"type"}
        for n, field in enumerate(attrs.fields(cls)):
            if not field.init:
                continue
            var = f"f{n}"
            param = field.alias or field.name
            if message and field.name == "extra":
                keywords.append(f"{param}={var}")
                continue  # filled once every known key is gathered
            key = wire_info(field).name or field.name
            known.add(key)
            default = field.default
            if default is attrs.NOTHING:
                lines.append(f"{var} = o[{key!r}]")
            elif isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                if default.takes_self:
                    return None
                lines.append(f"{var} = o.get({key!r}, _MISSING)")
                lines.append(f"if {var} is _MISSING: {var} = {self._bind(default.factory)}()")
                lines.append("else:")
            else:
                lines.append(f"{var} = o.get({key!r}, _MISSING)")
                lines.append(f"if {var} is _MISSING: {var} = {self._bind(default)}")
                lines.append("else:")
            indent = "" if default is attrs.NOTHING else "    "
            hook = self._field_hook(cls, field)
            if hook is not None:
                lines.append(f"{indent}{var} = {self._bind(hook)}({var}, None)")
            elif not self._check(field.type, var, lines, indent):
                return None
            (keywords if field.kw_only else positional).append(
                f"{param}={var}" if field.kw_only else var
            )
        if message:
            extra = next((f for f in attrs.fields(cls) if f.name == "extra"), None)
            if extra is None or not extra.init:
                return None
            n = attrs.fields(cls).index(extra)
            known_name = self._bind(frozenset(known))
            # most documents carry no unknown key: a C-level subset test, no comprehension
            lines.append(
                f"f{n} = {{}} if o.keys() <= {known_name} else "
                f"{{k: v for k, v in o.items() if k not in {known_name}}}"
            )
        call = ", ".join(positional + keywords)
        return self._compile(cls, "structure", lines, f"{self._bind(cls)}({call})")
