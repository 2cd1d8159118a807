"""What both role facades share: a runtime to start and stop, usable as a context manager."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

from .adapters.runtime import Runtime

R = TypeVar("R", bound="RoleFacade")


class RoleFacade:
    runtime: Runtime

    def start(self: R) -> R:
        """Subscribe and connect; returns self so `Device(...).start()` reads as one step."""
        self.runtime.start()
        return self

    def stop(self) -> None:
        """Disconnect and stop timers. Safe to call twice."""
        self.runtime.stop()

    def __enter__(self: R) -> R:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
