"""The shared life cycle of the private test servers (iotfsm.testing.server): a failed start says
why with the server's own log, and leaves no process and no directory behind."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iotfsm.testing.mosquitto import Mosquitto, MosquittoStartError
from iotfsm.testing.server import ServerController, end_process, free_ports


def test_a_broker_that_cannot_start_fails_with_its_log_and_cleans_up() -> None:
    broker = Mosquitto(extra_config="no_such_option true")
    directory = broker.directory
    with pytest.raises(MosquittoStartError) as caught, broker:
        pass
    message = str(caught.value)
    assert "mosquitto exited during startup (exit code" in message
    assert "no_such_option" in message  # mosquitto's own words about the bad line
    assert not broker.running and not directory.exists()


class _Listener(ServerController):
    """A stand-in server: a Python child that listens on a port after `delay` seconds."""

    def __init__(self, delay: float, startup_timeout: float = 5.0) -> None:
        super().__init__(prefix="iotfsm-test-server-", startup_timeout=startup_timeout)
        (self.port,) = free_ports(1)
        self.delay = delay
        self.popen: subprocess.Popen[bytes] | None = None
        self.log_file = self.directory / "out.log"

    def log_files(self) -> list[Path]:
        return [self.log_file]

    def start(self) -> None:
        code = (
            "import socket, sys, time; print('booting', flush=True); time.sleep(float(sys.argv[2]));"
            "s = socket.create_server(('127.0.0.1', int(sys.argv[1]))); time.sleep(60)"
        )
        with self.log_file.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", code, str(self.port), str(self.delay)], stdout=out
            )
        self.wait_accepting(
            [self.port], time.monotonic() + self.startup_timeout, self.popen, self.stop
        )

    def stop(self) -> None:
        end_process(self.popen, timeout=5.0)

    def close(self) -> None:
        self.stop()
        super().close()


def test_waiting_returns_once_the_port_accepts() -> None:
    with _Listener(delay=0.2) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=1):
            pass
        directory = server.directory
    assert not directory.exists() and server.popen is not None and server.popen.poll() is not None


def test_a_server_too_slow_to_listen_is_ended_with_its_log_tail() -> None:
    server = _Listener(delay=30, startup_timeout=0.5)
    with pytest.raises(
        RuntimeError,
        match=r"(?s)did not accept connections on 127\.0\.0\.1:\d+ "
        r"within 0\.5s; log:\nbooting",
    ):
        server.__enter__()
    assert server.popen is not None and server.popen.poll() is not None
    assert not server.directory.exists()
