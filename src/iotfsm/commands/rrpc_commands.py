"""`iotfsm device --rrpc-commands FILE`: answer RRPC calls by running commands named in a file.

The file is the whole of what a call may run: a JSON object from a name to an argument vector,

    {"uptime": ["uptime"], "disk": ["df", "-h", "/"], "restart": ["systemctl", "restart", "app"]}

A call's payload only picks a name, `{"command": "disk"}`; nothing from it reaches the command
line, the environment or a shell (no shell is used at all). The file must not be writable by
group or others, since whoever can change it runs commands as the agent. Commands run on worker
threads, never on the device's runtime thread, and their answer is sent when they exit:

    {"command": "disk", "exit_code": 0, "stdout": "...", "stderr": ""}

A request the agent refuses (not JSON, no known name, more than a name) is answered at once with
`{"error": "..."}` and runs nothing; a command that outlives `timeout` is killed and answered
`{"command": ..., "error": "timed out after N s"}`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..adapters.limits import MAX_PAYLOAD_BYTES
from .common import PASSWORD_ENV, PSK_ENV, CommandError

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_OUTPUT = 6000
"""Characters kept of each of stdout and stderr (their ends): the answer stays under 16 KB."""
MAX_ARGS = 64
WORKERS = 4
"""Commands running at once; more calls wait for a worker (and may reach their deadline)."""

Commands = dict[str, list[str]]
Answer = Callable[[str, bytes], None]
"""`answer(process_id, payload)`: `Device.answer_rrpc`."""


def load_commands(path: Path) -> Commands:
    """The name -> argv mapping of `path`; CommandError saying what to fix for anything else."""
    flag = f"--rrpc-commands {path}"
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"{flag}: {exc.strerror or exc}") from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CommandError(
            f"{flag} is writable by group or others, who could make the agent run anything;"
            f" chmod go-w {path}"
        )
    try:
        doc: Any = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{flag} is not JSON: {exc}") from None
    example = '{"uptime": ["uptime"], "disk": ["df", "-h", "/"]}'
    if not isinstance(doc, dict) or not doc:
        raise CommandError(f"{flag} must hold a JSON object of names to commands, e.g. {example}")
    commands: Commands = {}
    for name, argv in doc.items():
        if not NAME.fullmatch(name):
            raise CommandError(f"{flag}: name {name[:40]!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        if (
            not isinstance(argv, list)
            or not 1 <= len(argv) <= MAX_ARGS
            or not all(isinstance(a, str) and a and "\0" not in a for a in argv)
        ):
            raise CommandError(
                f"{flag}: {name!r} must be a list of 1-{MAX_ARGS} non-empty strings (the program"
                ' and its arguments, no shell), e.g. ["df", "-h", "/"]'
            )
        commands[name] = list(argv)
    return commands


def _tail(text: str, keep: int = MAX_OUTPUT) -> str:
    return text if len(text) <= keep else "..." + text[-keep:]


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class RrpcCommands:
    """The device's `on_rrpc`: refuses at once what it will not run, runs the rest on workers."""

    def __init__(self, commands: Commands, timeout: float = 8.0) -> None:
        self.commands = commands
        self.timeout = timeout
        self.answer: Answer | None = None
        """Set once the device exists (`Device.answer_rrpc`)."""
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="iotfsm-rrpc")
        self._env = {k: v for k, v in os.environ.items() if k not in (PSK_ENV, PASSWORD_ENV)}
        """The agent's environment without its secrets."""

    def __call__(self, payload: bytes, process_id: str) -> bytes | None:
        name, problem = self._pick(payload)
        if problem is not None:
            log.warning("RRPC %s refused: %s", process_id, problem)
            return _json({"error": problem})
        self._pool.submit(self._run, name, process_id)
        return None

    def _pick(self, payload: bytes) -> tuple[str, str | None]:
        known = ", ".join(sorted(self.commands))
        try:
            doc: Any = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return "", f'the request is not JSON; send {{"command": NAME}} with NAME one of {known}'
        name = doc.get("command") if isinstance(doc, dict) else None
        if not isinstance(name, str) or set(doc) != {"command"}:
            return "", f'send {{"command": NAME}} and nothing else; NAME one of {known}'
        if name not in self.commands:
            return "", f"no command {name[:40]!r} here; known: {known}"
        return name, None

    def _run(self, name: str, process_id: str) -> None:
        argv = self.commands[name]
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout,
                env=self._env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            doc: dict[str, Any] = {"command": name, "error": f"timed out after {self.timeout:g} s"}
        except OSError as exc:
            doc = {"command": name, "error": f"cannot run {argv[0]}: {exc.strerror or exc}"}
        else:
            out, err = (b.decode("utf-8", "replace") for b in (done.stdout, done.stderr))
            doc = {"command": name, "exit_code": done.returncode}
            keep = MAX_OUTPUT
            while True:  # escapes (control characters) may make the output grow in JSON
                doc.update(stdout=_tail(out, keep), stderr=_tail(err, keep))
                if len(_json(doc)) <= MAX_PAYLOAD_BYTES or keep < 16:
                    break
                keep //= 2
        log.info("RRPC %s: %s -> %s", process_id, name, doc.get("exit_code", doc.get("error")))
        if self.answer is None:
            return
        try:
            self.answer(process_id, _json(doc))
        except Exception:  # a worker thread: nobody else would hear of it
            log.exception("RRPC %s: the answer to %s could not be sent", process_id, name)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["RrpcCommands", "load_commands"]
