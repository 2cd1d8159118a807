"""`iotfsm device`: the device role of every feature, until SIGINT or SIGTERM.

Checkpoints, firmware and the adopted version live in the state directory, so a device killed in
the middle of a download resumes from its checkpoint when it is started again.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
from pathlib import Path

from ..device import Device
from .common import (
    CommandError,
    JsonLines,
    add_login_arguments,
    login_options,
    stop_on_signals,
    wait_connected,
)
from .rrpc_commands import RrpcCommands, load_commands

EXAMPLE = """example:
  iotfsm device --broker mqtt://127.0.0.1:1883 --product-id S3EUVBRJLB \\
      --device-name dev-1 --psk-file dev-1.psk --version 1.0 \\
      --state-dir ./dev-1 --events jsonl --rrpc-commands ./rrpc-commands.json
  (or IOTFSM_PSK in the environment; a certificate device gives --cert and --key instead)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    parser.add_argument("--product-id", required=True)
    parser.add_argument("--device-name", required=True)
    parser.add_argument("--version", required=True, help="the firmware version running now")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--tls-ca", type=Path, help="CA file that signed the broker's certificate")
    add_login_arguments(parser, device=True)
    parser.add_argument(
        "--burn-command",
        help="installs a verified image: run with the image path and version appended (and in "
        "IOTFSM_IMAGE, IOTFSM_VERSION); exit 0 for success. Default: keep the image in the "
        "state directory and adopt its version",
    )
    parser.add_argument(
        "--firmware-pubkey",
        type=Path,
        help="the platform's firmware.pub: install only images signed with its key",
    )
    parser.add_argument(
        "--trusted-url-base",
        action="append",
        default=[],
        metavar="URL",
        help="fetch and upload only under this base URL (repeatable); link-local addresses "
        "are always refused",
    )
    parser.add_argument(
        "--rrpc-commands",
        type=Path,
        metavar="FILE",
        help='answer RRPC calls {"command": NAME} by running the command FILE names for NAME '
        '(a JSON object such as {"disk": ["df", "-h", "/"]}, not writable by group or others;'
        " no shell, nothing from the call on the command line)",
    )
    parser.add_argument(
        "--rrpc-timeout",
        type=float,
        default=8.0,
        help="seconds an RRPC command may run before it is killed (default 8, under the"
        " platform's 10 s call deadline)",
    )
    parser.add_argument(
        "--events", choices=["jsonl"], help="print one JSON object per state change"
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=15.0,
        help="seconds to wait for the broker at start",
    )


def _burn_with(command: str) -> object:
    def burn(image: Path, version: str) -> None:
        env = {**os.environ, "IOTFSM_IMAGE": str(image), "IOTFSM_VERSION": version}
        done = subprocess.run([*shlex.split(command), str(image), version], env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"burn command exited with {done.returncode}")

    return burn


def run(args: argparse.Namespace) -> int:
    mqtt, psk = login_options(args, device=True)
    events = JsonLines() if args.events == "jsonl" else None
    rrpc = None
    if args.rrpc_commands is not None:
        if not 0 < args.rrpc_timeout <= 60:
            raise CommandError(f"--rrpc-timeout {args.rrpc_timeout}: give 0-60 seconds")
        rrpc = RrpcCommands(load_commands(args.rrpc_commands), args.rrpc_timeout)
    try:
        device = Device(
            args.product_id,
            args.device_name,
            psk,
            broker=args.broker,
            state_dir=args.state_dir,
            version=args.version,
            burn=_burn_with(args.burn_command) if args.burn_command else None,  # type: ignore[arg-type]
            on_step=events.step if events else None,
            mqtt=mqtt,
            firmware_public_key=args.firmware_pubkey,
            trusted_url_bases=args.trusted_url_base,
            on_rrpc=rrpc,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if rrpc is not None:
        rrpc.answer = device.answer_rrpc
    stop = stop_on_signals()
    # The version it starts with: by the time the first connection is seen, an OTA offered at
    # once may already have been adopted.
    version = device.version
    device.start()
    try:
        if not wait_connected(lambda: device.connected, stop, args.connect_timeout, args.broker):
            return 0
        if events:
            events.write({"event": "started", "device": args.device_name, "version": version})
        stop.wait()
    finally:
        device.stop()
        if rrpc is not None:
            rrpc.close()
    return 0
