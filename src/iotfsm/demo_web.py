"""`iotfsm demo --web`: the demo's platform with the management API and the web console, so a
newcomer watches the machines move and then moves them: deploy from a device's page, pause a
campaign, change a log level.

The demo runs on a manual clock that jumps whenever nothing is happening; once its checks are
done the clock follows the wall clock instead, so retries and campaign timers take the time they
say while a person clicks. The devices run in this process, so their own steps join the platform's
in the step feed and the device page shows both sides of each feature.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from .fsm.trace import Tracer

if TYPE_CHECKING:
    from .api.server import ApiServer
    from .testing.pair import Pair

TICK = 0.05
"""How often the clock catches up with the wall clock while the console is open (seconds)."""


class WebDemoError(RuntimeError):
    """The console cannot be served: the API's packages are missing or the address is taken."""


@attrs.frozen
class WebOptions:
    host: str = "127.0.0.1"
    port: int = 8090
    seconds: float | None = None
    """How long to keep running after the checks; None: until `stop` is set (Ctrl-C)."""


class WebDemo:
    """The API server and a token for one demo run; the token lives in the demo's temporary
    store and dies with it."""

    def __init__(self, options: WebOptions, stop: threading.Event | None = None) -> None:
        self.options = options
        self.stop = stop or threading.Event()
        self._server: ApiServer | None = None
        self.url = ""
        self.token = ""
        self.announce: Callable[[str], None] = lambda line: None
        """Told one line when the checks are done and the fleet is handed to the person."""

    def start(self, pair: Pair) -> WebDemo:
        try:
            from .api.server import ApiServer
        except ImportError as exc:
            raise WebDemoError(
                f"--web needs the API's packages ({exc.name} is missing): pip install 'iotfsm[api]'"
            ) from None
        address = f"{self.options.host}:{self.options.port}"
        try:
            server = ApiServer(pair.platform, self.options.host, self.options.port).start()
        except OSError as exc:
            raise WebDemoError(
                f"cannot serve the console on {address}: {exc.strerror or exc}; "
                "pick another with --web-address HOST:PORT (port 0: any free one)"
            ) from None
        self._server = server
        self.token = server.ctx.tokens.create("demo", ("write",))
        self.url = f"{server.url}/console/"
        return self

    def device_tracer(self) -> Tracer | None:
        """What each demo device traces its steps to: the console's step feed."""
        if self._server is None:
            return None
        from .api.device_steps import device_tracer

        return device_tracer(self._server.ctx.feed)

    @property
    def until(self) -> str:
        """How this run ends, for the line that tells the person at the terminal."""
        if self.options.seconds is None:
            return "until Ctrl-C"
        return f"for {self.options.seconds:g} s after its checks (or until Ctrl-C)"

    def hold(self, pair: Pair) -> None:
        """Keep the platform and devices running, their clock on wall time, until `stop` is set
        or `seconds` have passed."""
        self.announce(f"checks done: the console at {self.url} stays open {self.until}")
        deadline = None if self.options.seconds is None else time.monotonic() + self.options.seconds
        last = time.monotonic()
        while not self.stop.wait(TICK):
            now = time.monotonic()
            pair.clock.advance(now - last)
            last = now
            if deadline is not None and now >= deadline:
                return

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
