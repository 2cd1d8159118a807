"""A private RabbitMQ node for tests and benchmarks, never touching the machine's own broker.

The broker-enforced guarantees (a device may use only its own topics, only registered devices log
in) can only be shown against the real MQTT plugin and its HTTP auth backend, so tests run a real
node. A machine that has `rabbitmq-server` installed usually runs its own node too (port 5672, dist
port 25672, the system epmd on 4369, the cookie in /var/lib/rabbitmq): this controller shares none
of that. Each `RabbitMQ` has

- its own node name (`iotfsm-<random>@localhost`) and Erlang cookie, in a private HOME, so the CLI
  tools it runs can only ever reach this node;
- its own epmd, started by us on a free port (ERL_EPMD_PORT is honoured by both the node and the
  CLI), listening on 127.0.0.1 only, so nothing is registered with the machine's epmd;
- free ports for AMQP, MQTT and distribution (RABBITMQ_DIST_PORT, bound to 127.0.0.1);
- its own rabbitmq.conf (from `iotfsm.adapters.amqp.rabbitmq_config`, the generator behind `iotfsm
  broker-config rabbitmq`), enabled_plugins file, rabbitmq-env.conf (empty, so the system's is not
  read), mnesia and log directories, all in one temp directory removed by `close()`.

The scripts in /usr/lib/rabbitmq/bin are run directly: Debian's wrappers in /usr/sbin switch to the
`rabbitmq` user and its HOME, which would mean the system cookie and the system directories.
A node needs 10-20 s to boot, so the test suite starts one per session (tests/rabbitmq_fixtures.py).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from ..adapters.amqp.rabbitmq_config import RabbitConfig
from .server import ServerController, end_process, free_ports

log = logging.getLogger(__name__)

_SCRIPT_DIRS = (
    "/usr/lib/rabbitmq/bin",  # Debian, Ubuntu
    "/usr/local/opt/rabbitmq/sbin",  # Homebrew on Intel
    "/opt/homebrew/opt/rabbitmq/sbin",  # Homebrew on Apple silicon
)


class RabbitMQNotFoundError(RuntimeError):
    """`rabbitmq-server` (or `epmd`) is not installed where we looked."""


class RabbitMQStartError(RuntimeError):
    """The node exited or did not open its ports in time."""


def find_scripts(scripts_dir: str | Path | None = None) -> Path:
    """The directory holding `rabbitmq-server` and `rabbitmqctl` themselves (not wrappers)."""
    candidates = [Path(scripts_dir)] if scripts_dir is not None else [Path(d) for d in _SCRIPT_DIRS]
    for directory in candidates:
        if os.access(directory / "rabbitmq-server", os.X_OK) and os.access(
            directory / "rabbitmqctl", os.X_OK
        ):
            return directory
    raise RabbitMQNotFoundError(
        "rabbitmq-server was not found in "
        f"{', '.join(str(c) for c in candidates)}; install it (Debian/Ubuntu: "
        "`apt-get install rabbitmq-server`, macOS: `brew install rabbitmq`) or pass "
        "scripts_dir=... to RabbitMQ()"
    )


def find_epmd() -> str:
    found = shutil.which("epmd")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd")):
        return str(candidate)
    raise RabbitMQNotFoundError(
        "epmd (Erlang's port mapper, part of erlang-base) was not found on PATH or in "
        "/usr/lib/erlang; install rabbitmq-server, which depends on it"
    )


class _Processes:
    """What a finalizer needs to clean up after a forgotten node, kept apart from `RabbitMQ`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.node: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None

    @staticmethod
    def _end(popen: subprocess.Popen[bytes] | None, timeout: float) -> None:
        # The node runs in a session of its own (start_new_session): its group is ours to end,
        # including erl_child_setup and inet_gethost that beam starts.
        end_process(popen, signal.SIGTERM, timeout, group=True)

    def end_node(self, timeout: float) -> None:
        self._end(self.node, timeout)
        self.node = None

    def cleanup(self) -> None:
        self.end_node(timeout=10.0)
        self._end(self.epmd, timeout=5.0)
        self.epmd = None
        shutil.rmtree(self.directory, ignore_errors=True)


class RabbitMQ(ServerController):
    """A RabbitMQ node owned by the caller.

    `RabbitMQ()` only prepares (scripts, ports, files); `start()` boots it and returns once its
    listeners accept connections and `rabbitmqctl await_startup` agrees. Use it as a context
    manager or call `close()`, which stops the node and removes every file.
    `auth_url` points the HTTP auth backend at a platform's broker-auth listener.
    """

    start_error = RabbitMQStartError

    def __init__(
        self,
        *,
        auth_url: str | None = None,
        scripts_dir: str | Path | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        self.scripts = find_scripts(scripts_dir)
        self.epmd_binary = find_epmd()
        super().__init__(prefix="iotfsm-rabbitmq-", startup_timeout=startup_timeout)
        self.auth_url = auth_url
        self._processes = _Processes(self.directory)
        self._clean_up_with(self._processes.cleanup)
        self.node_name = f"iotfsm-{secrets.token_hex(4)}@localhost"
        self.log_dir = self.directory / "log"
        self.stdout_file = self.directory / "node.stdout"
        try:
            self.port, self.amqp_port, self.dist_port, self.epmd_port = self._pick_ports()
            self._write_files()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        node = self._processes.node
        return node is not None and node.poll() is None

    # --- life cycle ---

    def start(self) -> None:
        if self.running:
            raise RuntimeError("the RabbitMQ node is already running; stop() it first")
        self._start_epmd()
        env = self.environment()
        with self.stdout_file.open("ab") as out:
            self._processes.node = subprocess.Popen(
                [str(self.scripts / "rabbitmq-server")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=self.directory,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        self.wait_accepting(
            (self.port, self.amqp_port), deadline, self._processes.node, self._end_node
        )
        remaining = max(1.0, deadline - time.monotonic())
        result = self.ctl("await_startup", "--timeout", str(int(remaining)), timeout=remaining + 15)
        if result.returncode != 0:
            self._processes.end_node(timeout=10.0)
            raise RabbitMQStartError(
                f"rabbitmqctl await_startup failed ({result.returncode}): "
                f"{result.stderr.strip()}\n{self.log_tail(40)}"
            )
        log.debug("rabbitmq node %s: mqtt %s, amqp %s", self.node_name, self.port, self.amqp_port)

    def stop(self, timeout: float = 30.0) -> None:
        """A clean shutdown: SIGTERM, which the node answers as `rabbitmqctl stop` would (it logs
        "SIGTERM received - shutting down", closes its listeners and message stores), then
        SIGKILL if it has not ended in `timeout`. Not `rabbitmqctl stop` itself: that boots an
        Erlang VM of its own first, 2-3 s idle and over 10 s on a loaded machine, to send the
        same request, and a second one in `close()` found the node still going down."""
        self._processes.end_node(timeout=timeout)

    def close(self) -> None:
        """Stop the node (cleanly, see `stop`) and our epmd, remove every file. Safe to call
        twice."""
        self.stop()
        super().close()

    @property
    def what(self) -> str:
        return f"RabbitMQ node {self.node_name}"

    # --- tools ---

    def environment(self) -> dict[str, str]:
        """The environment of the node and of every CLI call aimed at it: nothing inherited from
        a RABBITMQ_* or ERL_* variable of the caller, everything pointing into our directory."""
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_", "ERLANG"))
        }
        d = self.directory
        env.update(
            HOME=str(d / "home"),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS=self.host,
            RABBITMQ_NODENAME=self.node_name,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_PID_FILE=str(d / "node.pid"),
        )
        return env

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run `rabbitmqctl -n NODE ARGS` against this node only."""
        return subprocess.run(
            [str(self.scripts / "rabbitmqctl"), "-n", self.node_name, *args],
            env=self.environment(),
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def log_files(self) -> list[Path]:
        """The node's console output and its log files."""
        return [self.stdout_file, *sorted(self.log_dir.glob("*.log"))]

    def log_size(self) -> int:
        """Where the log ends now: `log_since(size)` later shows only what came after."""
        return len(self.log_text())

    def log_since(self, size: int) -> str:
        return self.log_text()[size:]

    # --- internals ---

    def _pick_ports(self) -> tuple[int, int, int, int]:
        ports = free_ports(4, self.host)
        return ports[0], ports[1], ports[2], ports[3]

    def _write_files(self) -> None:
        d = self.directory
        home = d / "home"
        home.mkdir(mode=0o700)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        config = RabbitConfig(
            mqtt=(self.host, self.port),
            amqp=(self.host, self.amqp_port),
            auth_url=self.auth_url,
            extra_lines=(
                "log.console = false",
                "log.file.level = info",
                # a busy 2-core test machine: do not refuse to work because the disk looks full
                "disk_free_limit.absolute = 1MB",
            ),
        )
        (d / "rabbitmq.conf").write_text(config.rabbitmq_conf())
        (d / "enabled_plugins").write_text(config.enabled_plugins())
        (d / "advanced.config").write_text(config.advanced_config())
        (d / "rabbitmq-env.conf").write_text("")
        self.log_dir.mkdir()

    def _start_epmd(self) -> None:
        epmd = self._processes.epmd
        if epmd is not None and epmd.poll() is None:
            return
        with (self.directory / "epmd.out").open("ab") as out:
            self._processes.epmd = subprocess.Popen(
                [self.epmd_binary, "-address", self.host, "-port", str(self.epmd_port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.wait_accepting(
            (self.epmd_port,), time.monotonic() + 10.0, self._processes.epmd, self._end_node
        )

    def _end_node(self) -> None:
        self._processes.end_node(timeout=5.0)
