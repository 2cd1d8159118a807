"""A private PostgreSQL cluster for tests and benchmarks, never the machine's own server on 5432.

`PostgreSQL()` runs `initdb` into a temp directory and `pg_ctl start` on a free port, listening on
127.0.0.1 only, its unix socket in that directory; `close()` stops it (`pg_ctl stop -m immediate`
from a finalizer if the owner forgot) and removes every file. initdb and postgres refuse to run as
root, so under root both run as `nobody` (`runuser`), in a directory chowned to it. The superuser
`iotfsm` logs in over TCP with a password (scram-sha-256) kept in a 0600 pgpass file
(`passfile`): `conninfo()` gives libraries the password, `dsn` stays password-free for argv, with
`PGPASSFILE=passfile` in the environment (`environment()`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from ..adapters.durable import write_file_atomic
from .server import ServerController, free_port

BIN_DIRS = (
    *(str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)),
    "/usr/local/opt/postgresql/bin",
    "/opt/homebrew/opt/postgresql/bin",
)
USER = "iotfsm"


class PostgresNotFoundError(RuntimeError):
    """`initdb`/`pg_ctl` are not installed where we looked."""


class PostgresStartError(RuntimeError):
    """initdb or the server failed; the message carries the tail of its log."""


def find_bin(bin_dir: str | Path | None = None) -> Path:
    candidates = [Path(bin_dir)] if bin_dir is not None else [Path(d) for d in BIN_DIRS]
    for directory in candidates:
        if all(os.access(directory / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise PostgresNotFoundError(
        "PostgreSQL's initdb/pg_ctl/postgres were not found in "
        f"{', '.join(str(c) for c in candidates) or '/usr/lib/postgresql/*/bin'}; install them "
        "(Debian/Ubuntu: `apt-get install postgresql`, macOS: `brew install postgresql`) or pass "
        "bin_dir=... to PostgreSQL()"
    )


def _as_owner(argv: list[str]) -> list[str]:
    """Run as nobody when we are root (initdb and postgres refuse root)."""
    return ["runuser", "-u", "nobody", "--", *argv] if os.geteuid() == 0 else argv


def _stop(pg_ctl: Path, data: Path, directory: Path) -> None:
    if (data / "postmaster.pid").exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                _as_owner([str(pg_ctl), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=30,
                check=False,
            )
    shutil.rmtree(directory, ignore_errors=True)


class PostgreSQL(ServerController):
    """A PostgreSQL cluster owned by the caller; a context manager (start, then close)."""

    start_error = PostgresStartError

    def __init__(
        self, *, bin_dir: str | Path | None = None, durable: bool = False, timeout: float = 90.0
    ) -> None:
        """`durable=False` (tests) turns fsync off: a crash of the client is what tests show, not
        of the server, and a loaded machine needs the speed. Benchmarks pass `durable=True`."""
        self.bin = find_bin(bin_dir)
        super().__init__(prefix="iotfsm-postgres-", startup_timeout=timeout)
        self.port = free_port(self.host)
        self.durable = durable
        self.timeout = timeout
        self.password = secrets.token_urlsafe(18)
        self.data = self.directory / "data"
        self.log_file = self.directory / "server.log"
        self.passfile = self.directory / "pgpass"
        self._clean_up_with(
            functools.partial(_stop, self.bin / "pg_ctl", self.data, self.directory)
        )
        try:
            self._initdb()
        except BaseException:
            self.close()
            raise

    @property
    def dsn(self) -> str:
        """Connection string without the password (libpq finds it in `passfile`)."""
        return self.url("postgres")

    def url(self, dbname: str) -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{dbname}"

    def conninfo(self, dbname: str = "postgres") -> str:
        """For libraries in this process: the password included, never for argv or logs."""
        return f"{self.url(dbname)}?password={self.password}"

    def environment(self) -> dict[str, str]:
        """The caller's environment with PGPASSFILE pointing at this cluster's password."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSFILE"] = str(self.passfile)
        return env

    def _initdb(self) -> None:
        pwfile = self.directory / "pwfile"
        pwfile.write_text(self.password + "\n")
        write_file_atomic(self.passfile, f"{self.host}:{self.port}:*:{USER}:{self.password}\n")
        if os.geteuid() == 0:
            nobody = 65534
            os.chown(self.directory, nobody, nobody)
            os.chown(pwfile, nobody, nobody)
        result = subprocess.run(
            _as_owner(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    USER,
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    *([] if self.durable else ["--no-sync"]),
                ]
            ),
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
            cwd=self.directory,
        )
        pwfile.unlink()
        if result.returncode != 0:
            raise PostgresStartError(
                f"initdb failed ({result.returncode}): {result.stderr[-2000:]}"
            )

    def start(self) -> None:
        options = [
            f"-c listen_addresses={self.host}",
            f"-c port={self.port}",
            f"-c unix_socket_directories={self.directory}",
            "-c shared_buffers=32MB",
            "-c max_connections=60",
            *([] if self.durable else ["-c fsync=off", "-c full_page_writes=off"]),
        ]
        result = subprocess.run(
            _as_owner(
                [
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log_file),
                    "-o",
                    " ".join(options),
                    "-w",
                    "-t",
                    str(int(self.timeout)),
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=self.timeout + 10,
            check=False,
            cwd=self.directory,
        )
        if result.returncode != 0:
            raise PostgresStartError(
                f"pg_ctl start failed ({result.returncode}): {result.stderr.strip()}\n"
                f"{self.log_tail()}"
            )

    def create_database(self, name: str) -> str:
        """A new empty database; its password-free DSN."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def log_files(self) -> list[Path]:
        return [self.log_file]
