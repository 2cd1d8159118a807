"""`import iotfsm` is cheap, and every public name still resolves.

A process that only steps machines (a benchmark of 100k sessions, a worker that embeds the engine)
must not pay for paho, the HTTP servers and `cryptography` because the package's `__init__`
re-exports `Device` and `Platform`.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import iotfsm

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = (
    "paho",
    "cryptography",
    "http.server",
    "urllib.request",
    "iotfsm.platform",
    "iotfsm.device",
)


def test_engine_modules_import_without_transport_or_crypto() -> None:
    probe = (
        "import sys; import iotfsm.machines, iotfsm.fsm, iotfsm.adapters.runtime,"
        " iotfsm.adapters.codec, iotfsm.adapters.mqtt.memory_broker;"
        f" print(','.join(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(SRC)},
    ).stdout.strip()
    assert found == "", f"imported with the engine: {found}"


@pytest.mark.parametrize("name", sorted(set(iotfsm.__all__) - {"__version__"}))
def test_every_public_name_resolves(name: str) -> None:
    module = importlib.import_module(iotfsm._LAZY[name], "iotfsm")
    assert getattr(iotfsm, name) is getattr(module, name)
    assert name in dir(iotfsm)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Devise'"):
        iotfsm.Devise  # noqa: B018


def test_a_name_that_is_also_a_submodule_stays_the_name() -> None:
    """`iotfsm.testing.paths` is a function and a module: importing the module (as the pytest
    helper does) must not replace the function (README's generated-paths example)."""
    probe = (
        "import iotfsm.testing.generated; from iotfsm.testing import paths;"
        " import types; print(isinstance(paths, types.FunctionType))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(SRC)},
    ).stdout.strip()  # fmt: skip
    assert found == "True"


def test_lazy_names_may_not_be_submodules(tmp_path: Path) -> None:
    from iotfsm._lazy import lazy_exports

    (tmp_path / "paths.py").write_text("")
    namespace = {"__name__": "pkg", "__file__": str(tmp_path / "__init__.py")}
    with pytest.raises(ValueError, match=r"\['paths'\] are also submodules"):
        lazy_exports(namespace, {"paths": ".paths"})
