"""What the codec's code generators share: one function per attrs class, made once and cached,
with the objects it refers to bound by name in its namespace (codec_structure, codec_emit)."""

from __future__ import annotations

import itertools
import types
import typing
from collections.abc import Callable
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def optional(tp: Any) -> Any | None:
    """`X` for `X | None` (either spelling), else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return rest[0]
    return None


class CodeGenerator(Generic[F]):
    """Generates, caches and compiles one function per class; `_generate` says how."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self._made: dict[type[Any], F | None] = {}
        self._names = itertools.count()
        self._ns = namespace

    def get(self, cls: type[Any]) -> F | None:
        """The generated function for `cls`, or None when the general path must keep it."""
        if cls not in self._made:
            self._made[cls] = None  # a class that contains itself keeps the general path
            self._made[cls] = self._generate(cls)
        return self._made[cls]

    def _generate(self, cls: type[Any]) -> F | None:
        raise NotImplementedError

    def _bind(self, value: Any) -> str:
        """A name for `value` in the generated code's namespace."""
        name = f"_v{next(self._names)}"
        self._ns[name] = value
        return name

    def _compile(self, cls: type[Any], kind: str, lines: list[str], result: str) -> F:
        """`def <kind>_<Class>(o): <lines>; return <result>`, its source kept as its doc."""
        body = "\n".join(f"    {line}" for line in lines)
        name = f"{kind}_{cls.__name__}"
        source = f"def {name}(o):\n{body}\n    return {result}\n"
        namespace: dict[str, Any] = dict(self._ns)
        exec(compile(source, f"<iotfsm {kind} {cls.__qualname__}>", "exec"), namespace)
        made: F = namespace[name]
        made.__doc__ = source  # what was generated, for whoever debugs it
        return made
