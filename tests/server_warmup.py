"""Session servers that boot on a thread while the first tests run.

A RabbitMQ node takes 10-20 s to boot and a PostgreSQL cluster a few seconds, most of it waiting
on the server. Once collection shows that some test will ask for one (`conftest.py`), its boot
starts at once on a thread; the session fixture then only waits for what is left of it. A boot
that fails (nothing installed, a start error) raises in the fixture, as a synchronous boot would:
the test fails, or skips where the fixture says so. A run that asks for no server starts none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Warmup(Generic[T]):
    def __init__(self, boot: Callable[[], T]) -> None:
        self._boot = boot
        self._thread: threading.Thread | None = None
        self._value: T | None = None
        self._error: BaseException | None = None

    def begin(self) -> None:
        """Start booting on a daemon thread (once; later calls do nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="server-warmup", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._boot()
        except BaseException as exc:  # pytest.fail/skip raise BaseExceptions: hand them over
            self._error = exc

    def take(self) -> T:
        """The booted server (booting it now if `begin` was never called); raises what the boot
        raised. Call once: the caller owns the server from then on."""
        self.begin()
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value
