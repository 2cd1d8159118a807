"""Generated tests: one pytest case per planned path, and a failure shrunk to its shortest path.

    @generated_paths(ota.DEVICE)
    def test_my_burn_step(path):
        run_path(path, ota.DEVICE, handlers={BurnFirmware: my_burn_step})

The test function takes the `path` argument (and any fixtures). When it fails, it is run again
on ever shorter paths that are still executable on the declaration, and the failure names the
shortest one that still fails, which is usually the two or three steps that matter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from ..fsm.examples import Examples
from ..fsm.spec import MachineSpec
from .paths import Cover, Path, plan, shrink

F = TypeVar("F", bound=Callable[..., Any])


class ShrunkPathError(AssertionError):
    """A generated test failed; `path` is the shortest path found that still fails it."""

    def __init__(self, path: Path, original: Path, error: BaseException) -> None:
        self.path, self.original = path, original
        super().__init__(
            f"{error!r}\nshortest failing path ({len(path)} of {len(original)} steps):\n"
            f"{path.describe()}"
        )


def generated_paths(
    spec: MachineSpec[Any], examples: Examples | None = None, *, cover: Cover = "transitions"
) -> Callable[[F], F]:
    """Parametrize a test over the paths planned for `spec`; shrink the path of a failure."""
    planned = plan(spec, examples, cover=cover).paths

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(path: Path, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(path, *args, **kwargs)
            except Exception as exc:

                def fails(candidate: Path) -> bool:
                    try:
                        fn(candidate, *args, **kwargs)
                    except Exception:
                        return True
                    return False

                raise ShrunkPathError(shrink(path, fails, spec), path, exc) from exc

        mark = pytest.mark.parametrize("path", planned, ids=[p.name for p in planned])
        return mark(wrapper)  # type: ignore[no-any-return]

    return decorate
