"""The per-message path in one process: the platform's runtime against the dict + json floor.

Two measurements, each alternating the two variants in one run so that load on the shared machine
hits both alike, and reporting ratios:

- `event`: one OTA `report_progress` ("downloading", numbers as strings, as devices send it) for a
  platform session in `downloading`. Engine + codec: `Codec.decode` into the message classes,
  `Machine.step` (the session's percent rises, the silence timer is re-armed), `Codec.encode` of the
  message back to its exact wire form. Floor: `json.loads`, a dict dispatch on `type` into a
  per-device dict, `json.dumps` of the document back. Target: engine + codec <= 1.4x the floor.
- `runtime`: the whole inbound path, `Runtime.on_message(topic, payload)` (route, admit, decode,
  step, effects, reply encode and publish to a transport that only keeps the last reply), over
  the load of `bench/mqtt.py` (40 % `get_log_level` asks, 30 % `report_version`, 30 % progress
  from 1,000 devices). Floor: `floor.DictPlatform.handle`, the decode-and-reply subscriber of
  `bench/mqtt.py`, publishing to the same transport.

Timing: `--rounds` rounds, each one pass of every variant in alternating order over `--events`
events (process CPU time); the median of the per-round ratios is the verdict. With `--callgrind`
(valgrind installed), each variant also runs under `valgrind --tool=callgrind` twice, with
`--callgrind-events` and three times as many events; the difference of the two instruction
totals over the difference of the event counts is the instructions per event, start-up and
imports cancelled out. Instruction counts do not move with load.

    python bench/per_message.py                 # ~20 s
    python bench/per_message.py --callgrind     # + ~2 minutes under valgrind
    python bench/per_message.py --profile /tmp/runtime.pstats   # cProfile the runtime variant
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchkit import cpu_model
from floor import DictPlatform

TARGET_EVENT = 1.4
"""Engine + codec per event at most this many times the dict + json floor."""

PROGRESS = (
    b'{"type":"report_progress","report":{"progress":{"state":"downloading","percent":"%d",'
    b'"result_code":"0","result_msg":""},"version":"2.0.0"}}'
)
PRODUCT = "BENCHPRD00"


# ---- the variants: each a setup returning a callable that handles events [start, stop) -------


def event_engine() -> Callable[[int, int], None]:
    from iotfsm.adapters.codec import Codec
    from iotfsm.fsm import Machine
    from iotfsm.machines import DeviceKey, ota

    codec = Codec([ota.FEATURE])
    machine = Machine(ota.PLATFORM)
    session = machine.new_session(DeviceKey(PRODUCT, "dev0000"))
    session.state = "downloading"
    session.ctx.target = "2.0.0"  # the task's version: the reports are this task's progress
    payloads = [PROGRESS % (n % 100) for n in range(100)]
    decode, step, encode = codec.decode, machine.step, codec.encode

    def run(start: int, stop: int) -> None:
        for n in range(start, stop):
            message = decode("ota", "up", payloads[n % 100])
            step(session, message, 1000.0 + n)
            encode(message)
            if n % 100 == 99:
                session.ctx.percent = 0  # so that every report raises the percent again

    return run


def event_floor() -> Callable[[int, int], None]:
    loads = json.loads
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    state: dict[str, Any] = {"state": "downloading", "percent": 0, "timer": 0.0}

    def progress(doc: dict[str, Any], now: float) -> None:
        report = doc["report"]
        got = report["progress"]
        if got["state"] == "downloading":
            percent = int(got["percent"])
            state["percent"] = max(state["percent"], percent)
            state["timer"] = now + 600.0

    handlers = {"report_progress": progress}
    payloads = [PROGRESS % (n % 100) for n in range(100)]

    def run(start: int, stop: int) -> None:
        for n in range(start, stop):
            doc = loads(payloads[n % 100])
            handlers[doc["type"]](doc, 1000.0 + n)
            dumps(doc).encode()
            if n % 100 == 99:
                state["percent"] = 0

    return run


class LastReply:
    """A transport that keeps only the last reply: what publishing costs beyond the encoding is
    the MQTT client's, measured by bench/mqtt.py."""

    connected = True

    def __init__(self) -> None:
        self.last: tuple[str, bytes, int] | None = None
        self.count = 0

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.last = (topic, payload, qos)
        self.count += 1

    def set_handlers(self, on_message: Any, on_connection: Any) -> None:
        pass

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


LOAD_SIZE = 5_000
"""Messages in the runtime load, cycled: the same whatever `--events`, so that the warm-up pass
(which creates every session) costs the same in the callgrind runs of different lengths."""


def _load() -> list[tuple[str, bytes, int]]:
    from mqtt import build_load

    return build_load(LOAD_SIZE, 1000).messages


def runtime_engine(sqlite: bool = False) -> Callable[[int, int], None]:
    from mqtt import device_keys

    from iotfsm.adapters.runtime import Runtime
    from iotfsm.adapters.store.session_store import SqliteStore
    from iotfsm.machines import DeviceKey, all_features

    registered = {DeviceKey(p, d) for p, d in device_keys(1000)}
    transport = LastReply()
    where = Path(tempfile.mkdtemp(prefix="iotfsm-pm-")) / "store.db"
    store = SqliteStore(where) if sqlite else None
    runtime = Runtime(
        "platform", transport, all_features(), admit=registered.__contains__, store=store
    )
    messages = _load()
    on_message = runtime.on_message
    size = len(messages)

    def run(start: int, stop: int) -> None:
        for n in range(start, stop):
            topic, payload, _ = messages[n % size]
            on_message(topic, payload)
        if runtime.rejected or runtime.ignored:
            raise RuntimeError(f"{runtime.rejected} rejected, {runtime.ignored} ignored")

    run(0, size)  # every session exists before the timed passes
    return run


def runtime_floor() -> Callable[[int, int], None]:
    from mqtt import device_keys

    registered = set(device_keys(1000))
    transport = LastReply()
    consumer = DictPlatform()
    handle, publish = consumer.handle, transport.publish
    messages = _load()
    size = len(messages)

    def run(start: int, stop: int) -> None:
        for n in range(start, stop):
            topic, payload, _ = messages[n % size]
            _, product, device = topic.rsplit("/", 2)
            if (product, device) not in registered:
                continue
            reply = handle(topic, payload)
            if reply is not None:
                publish(reply[0], reply[1], 0)

    run(0, size)
    return run


SECTIONS: dict[str, tuple[tuple[str, str], str]] = {
    "event": (("event_engine", "event_floor"), "engine + codec / dict + json, per event"),
    "runtime": (("runtime_engine", "runtime_floor"), "Runtime.on_message / dict platform"),
    "sqlite": (("sqlite_engine", "runtime_floor"), "the same with a SqliteStore / dict platform"),
}
LABELS = {
    "event_engine": "engine + codec (report_progress)",
    "event_floor": "dict + json floor (report_progress)",
    "runtime_engine": "Runtime.on_message (mqtt.py load)",
    "runtime_floor": "DictPlatform.handle (mqtt.py load)",
    "sqlite_engine": "Runtime.on_message, SqliteStore",
}


def build(variant: str) -> Callable[[int, int], None]:
    if variant == "event_engine":
        return event_engine()
    if variant == "event_floor":
        return event_floor()
    if variant == "runtime_engine":
        return runtime_engine()
    if variant == "sqlite_engine":
        return runtime_engine(sqlite=True)
    if variant == "runtime_floor":
        return runtime_floor()
    raise SystemExit(f"unknown variant {variant!r}")


# ---- timing -----------------------------------------------------------------------------------


def timed(rounds: int, events: int, profile: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, ((engine, floor), _) in SECTIONS.items():
        runs = {engine: build(engine), floor: build(floor)}
        for run in runs.values():
            run(0, min(events, 2000))  # warm: hooks generated, caches filled
        per_event: dict[str, list[float]] = {engine: [], floor: []}
        ratios: list[float] = []
        for number in range(rounds):
            order = (engine, floor) if number % 2 == 0 else (floor, engine)
            took: dict[str, float] = {}
            for variant in order:
                started = time.process_time()
                runs[variant](0, events)
                took[variant] = (time.process_time() - started) / events * 1e6
                per_event[variant].append(took[variant])
            ratios.append(took[engine] / took[floor])
        if profile and section == "runtime":
            profiler = cProfile.Profile()
            profiler.enable()
            runs[engine](0, events)
            profiler.disable()
            profiler.dump_stats(profile)
        out[section] = {
            "us_per_event": {v: statistics.median(xs) for v, xs in per_event.items()},
            "us_range": {v: (min(xs), max(xs)) for v, xs in per_event.items()},
            "ratios": ratios,
            "ratio": statistics.median(ratios),
        }
    return out


def child(variant: str, events: int) -> None:
    """Set up, warm up, handle `events` events: run under callgrind by `callgrind`."""
    run = build(variant)
    run(0, 500)
    run(0, events)


_SUMMARY = re.compile(r"^(?:summary|totals):\s+(\d+)", re.M)


def instructions(variant: str, events: int, workdir: str) -> int:
    out = os.path.join(workdir, f"cg.{variant}.{events}")
    env = dict(os.environ, PYTHONHASHSEED="0")
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         sys.executable, __file__, "--child", variant, "--events", str(events)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    found = _SUMMARY.search(Path(out).read_text(encoding="utf-8", errors="replace"))
    if found is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(found.group(1))


def callgrind(events: int) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        raise SystemExit("--callgrind needs valgrind (apt-get install valgrind)")
    out: dict[str, Any] = {}
    counted: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="iotfsm-cg-") as workdir:
        for section, ((engine, floor), _) in SECTIONS.items():
            for variant in (engine, floor):
                if variant not in counted:
                    low = instructions(variant, events, workdir)
                    high = instructions(variant, 3 * events, workdir)
                    counted[variant] = (high - low) / (2 * events)
            per = {v: counted[v] for v in (engine, floor)}
            out[section] = {"instructions_per_event": per, "ratio": per[engine] / per[floor]}
    return out


def report(doc: dict[str, Any]) -> str:
    lines = [
        f"iotfsm per-message path: {doc['python']}, {doc['nproc']} CPU ({doc['cpu']}), "
        f"{doc['date']}; {doc['events']:,} events x {doc['rounds']} rounds, alternated",
        "",
        f"{'variant':<38}{'µs/event (median)':>18}{'range':>16}{'instr/event':>13}",
        "-" * 85,
    ]
    cg = doc.get("callgrind", {})
    for section, ((engine, floor), title) in SECTIONS.items():
        t = doc["timed"][section]
        for variant in (engine, floor):
            lo, hi = t["us_range"][variant]
            instr = cg.get(section, {}).get("instructions_per_event", {}).get(variant)
            shown = f"{instr:>13,.0f}" if instr is not None else f"{'-':>13}"
            lines.append(
                f"{LABELS[variant]:<38}{t['us_per_event'][variant]:>18.2f}"
                f"{f'{lo:.2f}-{hi:.2f}':>16}{shown}"
            )
        per_round = ", ".join(f"{r:.2f}" for r in t["ratios"])
        line = f"  ratio {title}: {t['ratio']:.2f}x (per round {per_round})"
        if section in cg:
            line += f"; callgrind {cg[section]['ratio']:.2f}x"
        lines += [line, ""]
    event = doc["timed"]["event"]["ratio"]
    verdict = "PASS" if event <= TARGET_EVENT else "FAIL"
    lines.append(
        f"{verdict}  engine + codec <= {TARGET_EVENT}x the dict + json floor: {event:.2f}x"
    )
    if "event" in cg:
        ratio = cg["event"]["ratio"]
        verdict = "PASS" if ratio <= TARGET_EVENT else "FAIL"
        lines.append(f"{verdict}  the same in callgrind instructions: {ratio:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=20_000, help="events per variant and round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--callgrind", action="store_true", help="count instructions too (valgrind)")
    p.add_argument("--callgrind-events", type=int, default=2_000)
    p.add_argument("--profile", metavar="PATH", help="cProfile one runtime pass into PATH")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.events)
        return 0
    doc: dict[str, Any] = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "events": args.events,
        "rounds": args.rounds,
        "load_average": os.getloadavg()[0],
    }
    doc["timed"] = timed(args.rounds, args.events, args.profile)
    if args.callgrind:
        doc["callgrind"] = callgrind(args.callgrind_events)
    print(json.dumps(doc, indent=2) if args.json else report(doc))
    if args.profile:
        stats = pstats.Stats(args.profile)
        stats.sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
