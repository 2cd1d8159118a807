"""`iotfsm` on the command line: the demo now; device and platform agents as features land."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from . import __version__

if TYPE_CHECKING:
    from .demo_web import WebDemo


def _demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskID, TextColumn
    from rich.table import Table

    from .demo import Check, run_demo

    console = Console(stderr=args.json)
    bars = Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        console=console,
        transient=False,
    )
    tasks: dict[tuple[str, str], TaskID] = {}

    def progress(device: str, feature: str, pct: int) -> None:
        key = (device, feature)
        if key not in tasks:
            tasks[key] = bars.add_task(f"{device} {feature}", total=100)
        bars.update(tasks[key], completed=pct)

    def show(check: Check) -> None:
        mark = "[green]✓[/green]" if check.passed else "[red]✗[/red]"
        bars.console.print(f"{mark} {check.name}")

    web = _web_demo(args)

    def opened(demo: WebDemo) -> None:
        # The token rides in the URL's fragment, which the browser never sends to a server.
        bars.console.print(f"console: {demo.url}#token={demo.token}", soft_wrap=True)
        bars.console.print(f"API token (for curl; it ends with the demo): {demo.token}")
        bars.console.print(f"the demo keeps its fleet running {demo.until}")
        demo.announce = lambda line: bars.console.print(line, soft_wrap=True)

    from .commands.common import CommandError
    from .demo_web import WebDemoError

    with bars:
        try:
            report = run_demo(
                devices=args.devices,
                broker_url=args.broker,
                on_check=show,
                on_progress=progress,
                web=web,
                on_web=opened if web else None,
            )
        except WebDemoError as exc:
            raise CommandError(str(exc)) from None
    if args.json:
        doc = {
            "passed": report.passed,
            "devices": report.devices,
            "broker": report.broker,
            "checks": [attrs.asdict(c) for c in report.checks],
        }
        print(json.dumps(doc, indent=2))
    else:
        title = f"iotfsm demo: 1 platform, {report.devices} devices, broker: {report.broker}"
        table = Table(title=title)
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail")
        for c in report.checks:
            result = "[green]pass[/green]" if c.passed else "[red]FAIL[/red]"
            table.add_row(c.name, result, c.detail)
        console.print(table)
        verdict = (
            "[green]all checks passed[/green]" if report.passed else "[red]checks failed[/red]"
        )
        console.print(verdict)
    return 0 if report.passed else 1


def _web_demo(args: argparse.Namespace) -> WebDemo | None:
    """`--web`: the options checked before anything starts, Ctrl-C and SIGTERM wired to stop."""
    from .commands.common import CommandError

    if not args.web:
        if args.web_seconds is not None or args.web_address is not None:
            raise CommandError("--web-seconds and --web-address need --web")
        return None
    from .commands.common import parse_address, stop_on_signals
    from .demo_web import WebDemo, WebOptions

    host, port = parse_address("--web-address", args.web_address or "127.0.0.1:8090")
    if args.web_seconds is not None and args.web_seconds < 0:
        raise CommandError("--web-seconds must be 0 or more")
    return WebDemo(WebOptions(host, port, args.web_seconds), stop_on_signals())


if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time
    _SubParsers = argparse._SubParsersAction


class _Commands(_SubParsers):
    """Subcommands whose options are declared only once they are the one on the command line.

    Declaring a command's options means importing its module, and its module imports what the
    command runs on (the machines, paho, the HTTP servers, `cryptography`, the diagrams): about
    0.3 s for all of them, paid by every `iotfsm registry add` and every test that spawns one.
    `iotfsm --help` lists the commands from their one-line help, given here without imports."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mounts: dict[str, Callable[[argparse.ArgumentParser], None]] = {}

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if isinstance(values, Sequence) and values:
            mount = self.mounts.pop(str(values[0]), None)
            if mount is not None:
                mount(self.choices[str(values[0])])
        super().__call__(parser, namespace, values, option_string)


def _mount(
    sub: _Commands,
    name: str,
    module_name: str,
    help_text: str,
    description: str,
    *,
    exit_codes: bool = False,
) -> None:
    """One subcommand from a `commands` module (`add_arguments`, and `run` unless its own
    subcommands set theirs), with the help layout every command shares: `description` and the
    module's EXAMPLE, then the exit codes where they apply. The module is imported only when the
    command is the one given (see `_Commands`)."""
    sub.add_parser(name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)

    def mount(parser: argparse.ArgumentParser) -> None:
        module = importlib.import_module(f".commands.{module_name}", __package__)
        parser.description = f"{description} {module.EXAMPLE}"
        if exit_codes:
            from .commands.common import EXIT_CODES

            parser.epilog = EXIT_CODES
        module.add_arguments(parser)
        run = getattr(module, "run", None)
        if run is not None:
            parser.set_defaults(run=run)

    sub.mounts[name] = mount


def _mount_diagram(parser: argparse.ArgumentParser) -> None:
    from .diagrams import cli as diagram_cli

    diagram_cli.add_arguments(parser)
    parser.set_defaults(run=diagram_cli.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iotfsm",
        description="Tencent IoT Hub device features as declared state machines.",
    )
    parser.add_argument("--version", action="version", version=f"iotfsm {__version__}")
    parser.add_argument(
        "--log-level",
        default="error",
        choices=list(LEVELS),
        help="how much of the library's log goes to stderr (default: error)",
    )
    parser.add_argument(
        "--log",
        action="append",
        default=[],
        type=_logger_level,
        metavar="LOGGER=LEVEL",
        help="the level of one logger and those below it, over --log-level (repeatable), "
        "e.g. --log iotfsm.pool.deliveries=debug for every delivery a pool worker takes",
    )
    sub = parser.add_subparsers(dest="command", required=True, action=_Commands)
    assert isinstance(sub, _Commands)

    demo = sub.add_parser(
        "demo",
        help="a platform and devices in one process, every outcome checked",
        description="Run a platform and N devices (OTA with a cut and a resume, an upload, a "
        "download, a config push, a log-level change with log upload) and check every outcome. "
        "Example: iotfsm demo --devices 5",
    )
    demo.add_argument("--devices", type=int, default=3, help="how many devices (default 3)")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.add_argument(
        "--broker",
        help="run over a real MQTT broker, e.g. mqtt://127.0.0.1:1883 (default: the embedded one)",
    )
    demo.add_argument(
        "--web",
        action="store_true",
        help="also serve the management API and the web console, print its URL and a token, "
        "and keep running after the checks until Ctrl-C",
    )
    demo.add_argument(
        "--web-address",
        metavar="HOST:PORT",
        help="where the console listens with --web (default 127.0.0.1:8090; port 0: any free one)",
    )
    demo.add_argument(
        "--web-seconds",
        type=float,
        metavar="N",
        help="with --web, stop N seconds after the checks instead of waiting for Ctrl-C",
    )
    demo.set_defaults(run=_demo)

    sub.add_parser(
        "diagram",
        help="render a feature's state machines (svg, png or dot)",
        description="Render state diagrams from the declarations. Examples: "
        "iotfsm diagram ota --role device --format png -o out/ ; "
        "iotfsm diagram --all -o docs/diagrams",
    )
    sub.mounts["diagram"] = _mount_diagram
    _mount(
        sub,
        "device",
        "device",
        "run the device role of every feature until SIGINT or SIGTERM",
        "Run the device role of every feature against a broker (RRPC calls answered with"
        " --rrpc-commands).",
    )
    _mount(
        sub,
        "platform",
        "platform",
        "run the platform role, reconciled toward a desired-state file",
        "Run the platform role (OTA, resources, config, log level) against a broker, with the "
        "HTTP file service and a SQLite store.",
        exit_codes=True,
    )
    _mount(
        sub,
        "status",
        "status",
        "devices by feature, from a platform's data directory",
        "Show every device's state per feature.",
        exit_codes=True,
    )
    _mount(
        sub,
        "firmware-key",
        "firmware_key",
        "make the key pair that signs firmware (platform) and checks it (devices)",
        "Ed25519 firmware signing keys.",
    )
    _mount(
        sub,
        "registry",
        "registry",
        "register, list, enable, disable and remove the devices a platform admits",
        "The devices a platform admits (kept in its data directory; a running platform sees "
        "changes within a second).",
        exit_codes=True,
    )
    _mount(
        sub,
        "api-token",
        "api_token",
        "create, list and revoke the tokens of the management API",
        "Tokens for `iotfsm platform --api` (kept hashed in the platform's store).",
        exit_codes=True,
    )
    _mount(
        sub,
        "campaign",
        "campaign",
        "start, pause, resume, cancel a rollout campaign, or show its waves",
        "Operate a platform's rollout campaigns through its data directory or its PostgreSQL "
        "store (a running platform applies a command within a second).",
        exit_codes=True,
    )
    _mount(
        sub,
        "broker-config",
        "broker_config",
        "write a broker configuration that lets only registered devices in",
        "Write a ready broker configuration.",
        exit_codes=True,
    )
    _mount(
        sub,
        "conformance",
        "conformance",
        "play the platform against any device and check the protocol, scenario by scenario",
        "Walk a device through the scenarios the declarations imply (offers, cut downloads, "
        "wrong md5, 404, expired URL, config, log level, resources).",
    )
    return parser


LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip


def _logger_level(text: str) -> tuple[str, int]:
    name, equals, level = text.partition("=")
    if not equals or not name or level.lower() not in LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text[:80]!r} is not LOGGER=LEVEL (level one of {', '.join(LEVELS)})"
        )
    return name, LEVELS[level.lower()]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=LEVELS[args.log_level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name, level in args.log:
        logging.getLogger(name).setLevel(level)
    if getattr(args, "devices", 1) < 1:
        print("iotfsm: --devices must be at least 1", file=sys.stderr)
        return 2
    from .adapters.store.session_store import StoreCorruptError
    from .commands.common import STORE_DAMAGED, CommandError

    try:
        code: int = args.run(args)
    except CommandError as exc:
        print(f"iotfsm: {exc}", file=sys.stderr)
        return exc.exit_code
    except StoreCorruptError as exc:
        # every command that opens platform.sqlite3 (platform, status, registry, api-token,
        # campaign, broker-config): one line and the same exit code, never a traceback
        print(f"iotfsm: {exc}", file=sys.stderr)
        return STORE_DAMAGED
    return code


if __name__ == "__main__":
    sys.exit(main())
