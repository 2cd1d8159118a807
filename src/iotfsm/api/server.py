"""The API served by uvicorn on its own thread with its own event loop, inside the platform
process. Handlers reach the platform through its thread-safe calls on worker threads; the step
feed is tapped onto the runtime's machines while the server runs and taken off at `stop`."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

import uvicorn

from ..platform import Platform
from .app import build_app
from .context import MAX_IMAGE, ApiContext
from .feed import StepFeed, Taps, device_tracer, inbound_triggers

log = logging.getLogger(__name__)


class ApiServer:
    def __init__(
        self,
        platform: Platform,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_image: int = MAX_IMAGE,
        feed: StepFeed | None = None,
    ) -> None:
        """`feed` lets in-process devices trace into the same step feed before the server
        starts (`iotfsm.api.device_steps`); by default the server makes its own."""
        self.ctx = ApiContext(platform, max_image=max_image, feed=feed)
        self.app = build_app(self.ctx)
        self.host = host
        self.port = port
        self._taps = Taps()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ApiServer:
        """Bind now (OSError for a port in use) and serve on a thread; returns when serving."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: without it a small answer (headers and body written
        # apart) waits ~40 ms for the client's delayed ACK (Nagle), on every call
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self._tap()
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=3,
            h11_max_incomplete_event_size=64 * 1024,
        )
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])),
            name="iotfsm-api",
            daemon=True,
        )
        self._thread.start()
        while not server.started and self._thread.is_alive():
            self._thread.join(0.01)
        if not server.started:
            raise OSError(f"the API server on {self.url} did not start")
        log.info("management API on %s/api/v1", self.url)
        return self

    def _tap(self) -> None:
        platform = self.ctx.platform
        triggers = inbound_triggers(platform.runtime.features.values())
        for name, machine in platform.runtime.machines.items():
            tracer = device_tracer(self.ctx.feed, self.ctx.last_seen, name, triggers[name])
            self._taps.install(machine, tracer)
        feed = self.ctx.feed
        self._taps.install(platform.campaigns.machine, lambda r: feed.observe("campaign", r))

    def stop(self) -> None:
        """Stop serving (open streams end) and take the taps off. Safe to call twice."""
        self.ctx.stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._taps.remove()
        self._server = self._thread = None
