"""JSON Schema from attrs classes, and a strict cattrs converter for request bodies.

The API's request and response shapes are attrs classes (the project's types; no pydantic). One
function turns a class into the schema the OpenAPI document publishes, and the converter that
reads request bodies refuses what that schema refuses: unknown fields, a string where a number
belongs, a bool passed as an int. So the document and the checks cannot drift apart.
"""

from __future__ import annotations

import re
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn
from cattrs.v import format_exception

Schema = dict[str, Any]


BOUNDS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
)
"""Field metadata keys copied into the schema."""


class BodyError(ValueError):
    """A request body that does not fit its class; the message lists every problem."""


def _strict(kind: type) -> Any:
    def check(value: Any, _: Any) -> Any:
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if ok:
                return float(value)
        elif kind is int and type(value) is float and value.is_integer():
            return int(value)  # JSON Schema's integer: 1.0 is one
        elif type(value) is kind:
            return value
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")

    return check


def bound_problem(value: Any, bounds: Any) -> str | None:
    """What is wrong with `value` under the schema bounds a field's metadata publishes."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in bounds and value < bounds["minimum"]:
            return f"{value} is below {bounds['minimum']}"
        if "maximum" in bounds and value > bounds["maximum"]:
            return f"{value} is above {bounds['maximum']}"
        if "exclusiveMinimum" in bounds and value <= bounds["exclusiveMinimum"]:
            return f"{value} must be above {bounds['exclusiveMinimum']}"
    if isinstance(value, str):
        if len(value) < bounds.get("minLength", 0):
            return f"must have at least {bounds['minLength']} characters"
        if len(value) > bounds.get("maxLength", len(value)):
            return f"must have at most {bounds['maxLength']} characters"
        if "pattern" in bounds and not re.search(bounds["pattern"], value):
            return f"{value[:40]!r} must match {bounds['pattern']}"
    if isinstance(value, list | tuple):
        if len(value) < bounds.get("minItems", 0):
            return f"must have at least {bounds['minItems']} items"
        if len(value) > bounds.get("maxItems", len(value)):
            return f"must have at most {bounds['maxItems']} items"
    return None


def _is_dict(kind: Any) -> bool:
    return get_origin(kind) is dict or kind is dict


def _is_sequence(kind: Any) -> bool:
    return get_origin(kind) in (list, tuple)


def strict_converter() -> cattrs.Converter:
    """A converter that never coerces ("1" is not 1, true is not 1) and refuses unknown keys."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    for kind in (str, int, float, bool):
        converter.register_structure_hook(kind, _strict(kind))

    def any_value(value: Any, _: Any) -> Any:
        return value

    converter.register_structure_hook(Any, any_value)

    def dict_hook(value: Any, kind: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        args = get_args(kind)
        value_type = args[1] if len(args) == 2 else Any
        if value_type is Any:
            return dict(value)
        return {
            converter.structure(k, str): converter.structure(v, value_type)
            for k, v in value.items()
        }

    converter.register_structure_hook_func(_is_dict, dict_hook)

    def list_hook(value: Any, kind: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError(f"expected an array, got {type(value).__name__}")
        args = get_args(kind)
        item = args[0] if args else Any
        made = [converter.structure(v, item) for v in value]
        return tuple(made) if get_origin(kind) is tuple else made

    converter.register_structure_hook_func(_is_sequence, list_hook)

    def union_hook(value: Any, kind: Any) -> Any:
        members = get_args(kind)
        others = [m for m in members if m is not type(None)]
        if value is not None and len(others) == 1:  # Optional[X]: X's own error, not "fits none"
            return converter.structure(value, others[0])
        if value is None:
            if type(None) in members:
                return None
            raise TypeError("expected a value, got null")
        problems = []
        for member in members:
            if member is type(None):
                continue
            try:
                return converter.structure(value, member)
            except Exception as exc:  # the next member may fit
                problems.append(str(exc))
        raise TypeError(f"fits none of the accepted shapes ({'; '.join(problems)})")

    converter.register_structure_hook_func(_is_union, union_hook)

    def class_hook(kind: type) -> Any:
        plain: Any = make_dict_structure_fn(kind, converter, _cattrs_forbid_extra_keys=True)

        def structure(value: Any, _: Any) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected an object, got {type(value).__name__}")
            made = plain(value, kind)
            for field in attrs.fields(kind):
                problem = bound_problem(getattr(made, field.name), field.metadata)
                if problem is not None:
                    raise ValueError(f"{field.name}: {problem}")
            return made

        return structure

    converter.register_structure_hook_factory(attrs.has, class_hook)
    return converter


def _formatted(exc: BaseException, kind: Any) -> str:
    """Our hooks' own messages ("expected int, got str", "level: 9 is above 4") as they are."""
    if type(exc) in (ValueError, TypeError) and str(exc):
        return str(exc)
    return format_exception(exc, kind)


def read_body(converter: cattrs.Converter, doc: Any, kind: type[Any]) -> Any:
    """`doc` (parsed JSON) as an instance of `kind`, or BodyError naming every bad field."""
    try:
        return converter.structure(doc, kind)
    except Exception as exc:  # cattrs raises several kinds; all mean "does not fit"
        problems = (
            cattrs.transform_error(exc, format_exception=_formatted)
            if isinstance(exc, cattrs.BaseValidationError)
            else [str(exc)]
        )
        raise BodyError("; ".join(problems)) from None


def _is_union(kind: Any) -> bool:
    return get_origin(kind) in (Union, types.UnionType)


class Schemas:
    """Collects component schemas while types are described, so classes appear once."""

    def __init__(self) -> None:
        self.components: dict[str, Schema] = {}

    def ref(self, kind: Any) -> Schema:
        """The schema of a type; attrs classes become `$ref`s to components."""
        if kind is Any:
            return {}
        if kind is type(None):
            return {"type": "null"}
        if kind is str:
            return {"type": "string"}
        if kind is bool:
            return {"type": "boolean"}
        if kind is int:
            return {"type": "integer"}
        if kind is float:
            return {"type": "number"}
        origin = get_origin(kind)
        if origin is Literal:
            return {"enum": list(get_args(kind))}
        if _is_union(kind):
            return {"anyOf": [self.ref(a) for a in get_args(kind)]}
        if origin in (list, tuple) or kind in (list, tuple):
            args = [a for a in get_args(kind) if a is not Ellipsis]
            return {"type": "array", "items": self.ref(args[0]) if args else {}}
        if origin is dict or kind is dict:
            pair = get_args(kind)
            values = self.ref(pair[1]) if len(pair) == 2 else {}
            return {"type": "object", "additionalProperties": values}
        if attrs.has(kind):
            name = kind.__name__
            if name not in self.components:
                self.components[name] = {}  # placeholder: recursive references terminate
                self.components[name] = self._object(kind)
            return {"$ref": f"#/components/schemas/{name}"}
        raise TypeError(f"no JSON schema for {kind!r}")

    def _object(self, kind: type) -> Schema:
        hints = get_type_hints(kind)
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for field in attrs.fields(kind):
            schema = dict(self.ref(hints[field.name]))
            for key in BOUNDS:
                if key in field.metadata:
                    schema[key] = field.metadata[key]
            if "description" in field.metadata:
                schema["description"] = field.metadata["description"]
            properties[field.name] = schema
            if field.default is attrs.NOTHING:
                required.append(field.name)
        doc: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
        if required:
            doc["required"] = required
        if kind.__doc__:
            doc["description"] = " ".join(kind.__doc__.split())
        return doc


__all__ = ["BodyError", "Schemas", "read_body", "strict_converter"]
