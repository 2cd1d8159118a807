"""Names a package re-exports but imports on first use (PEP 562), so that importing the package
costs only what the caller touches: `iotfsm` (paho, the HTTP servers, `cryptography`) and
`iotfsm.testing` (the Platform and Devices of `Pair`, the certificates of `Mosquitto`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], table: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The package's `__getattr__` and `__dir__`: `table` maps each public name to the module
    (relative to the package whose `globals()` is `namespace`) that defines it."""
    package = str(namespace["__name__"])
    here = Path(str(namespace["__file__"])).parent
    shadowed = sorted(n for n in table if (here / f"{n}.py").exists() or (here / n).is_dir())
    if shadowed:  # importing that submodule would bind it over the name, for good
        raise ValueError(f"{package}: lazy names {shadowed} are also submodules: import them now")

    def get(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value  # the next lookup finds it without this function
        return value

    def names() -> list[str]:
        return sorted([*namespace, *table])

    return get, names
