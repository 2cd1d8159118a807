"""Engine benchmark: µs per step and bytes per idle session, against two naive `transitions` uses.

Three ways to run the log-level platform machine for many devices:

- `engine`: this library. One compiled `transitions.Machine(model=None)` shared by every session;
  a session is a `__slots__` object; a step is `sessions[key]` plus `machine.step(...)`.
- `per-machine`: one stock `transitions.Machine(model=obj)` per session.
- `add_model`: one stock shared `transitions.Machine`, `add_model(obj)` per session.

The naive variants declare the same states and transitions and call the same guard and action
functions (wrapped as `transitions` callbacks); stepping is `models[key]` plus the model's trigger
method. `check_equivalent` asserts all three produce the same states and effects before timing.

Each (variant, size) runs in its own child process, so that RSS deltas and allocator state of one
case do not leak into the next, and so that a runaway case can be stopped. Each naive variant has a
time budget for all its sizes (`--budget`, 60 s): a size that would not fit is measured as far as it
takes to tell, then reported as skipped with an extrapolation, never waited for.

    python bench/engine.py                      # 1k, 10k, 100k sessions; a few minutes on 2 cores
    python bench/engine.py --quick              # smoke run, a few seconds
    python bench/engine.py --sizes 1000,5000 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import transitions
from benchkit import cpu_model, parse_sizes

from iotfsm.fsm import ANY_STATE, Effect, Event, Machine, MachineSpec
from iotfsm.fsm.spec import Action, Guard
from iotfsm.machines.log_level import PLATFORM, DeviceKey, GetLogLevel, SetLogLevel

ENGINE = "engine"
PER_MACHINE = "per-machine"
ADD_MODEL = "add_model"
VARIANTS = (ENGINE, PER_MACHINE, ADD_MODEL)
LABELS = {
    ENGINE: "engine (shared, model=None)",
    PER_MACHINE: "one Machine per session",
    ADD_MODEL: "add_model per session",
}

STEP_TARGET_US = 15.0
IDLE_TARGET_BYTES = 1024
LINEAR_MAX_RATIO = 2.0
"""Per-session creation cost at n versus n/10 that still counts as linear. Quadratic gives ~10."""

PRODUCT = "P1234567"
NOW = 1_700_000_000.0

Adder = Callable[[dict[Any, Any], Any], None]
Stepper = Callable[[dict[Any, Any], list[tuple[Any, Event]]], None]


# ---- the three variants ---------------------------------------------------------------------


class NaiveSession:
    """A model for stock `transitions`: it gets `state`, trigger methods and `is_*` added to it."""

    def __init__(self, key: DeviceKey, ctx: Any) -> None:
        self.key = key
        self.ctx = ctx
        self.out: list[Effect] = []


def _wrap_guard(guard: Guard) -> Callable[[Any], bool]:
    def condition(event_data: Any) -> bool:
        return guard(event_data.model.ctx, event_data.args[0])

    return condition


def _wrap_action(action: Action) -> Callable[[Any], None]:
    def after(event_data: Any) -> None:
        produced = action(event_data.model.ctx, event_data.args[0], event_data.args[1])
        if produced:
            event_data.model.out.extend(produced)

    return after


def naive_config(spec: MachineSpec[Any]) -> dict[str, Any]:
    """Keyword arguments for a stock `transitions.Machine` equivalent to `spec` (model left out)."""
    non_final = [s.name for s in spec.states if not s.final]
    table: list[dict[str, Any]] = []
    for on in spec.transitions:
        sources = [s for src in on.source for s in (non_final if src == ANY_STATE else [src])]
        row: dict[str, Any] = {"trigger": on.trigger_name, "source": sources, "dest": on.dest}
        if on.guard is not None:
            row["conditions"] = [_wrap_guard(on.guard)]
        if on.action is not None:
            row["after"] = [_wrap_action(on.action)]
        table.append(row)
    return {
        "states": list(spec.state_names),
        "initial": spec.initial,
        "transitions": table,
        "auto_transitions": False,
        "ignore_invalid_triggers": True,
        "send_event": True,
    }


def make_variant(variant: str, spec: MachineSpec[Any]) -> tuple[Adder, Stepper]:
    """`add(population, key)` creates one session; `run(population, work)` steps a work list.

    The stepping loops are what is timed, so each is written out for its variant: a dict lookup
    by key and the variant's own dispatch, nothing else.
    """
    if variant == ENGINE:
        machine: Machine[Any] = Machine(spec)
        new_session = machine.new_session

        def add_engine(population: dict[Any, Any], key: Any) -> None:
            population[key] = new_session(key)

        def run_engine(population: dict[Any, Any], work: list[tuple[Any, Event]]) -> None:
            step = machine.step
            for key, event in work:
                step(population[key], event, NOW)

        return add_engine, run_engine

    config = naive_config(spec)
    context = spec.context

    def run_naive(population: dict[Any, Any], work: list[tuple[Any, Event]]) -> None:
        for key, event in work:
            model = population[key]
            model.out = []
            getattr(model, event.trigger)(event, NOW)

    if variant == PER_MACHINE:

        def add_per_machine(population: dict[Any, Any], key: Any) -> None:
            model = NaiveSession(key, context(key))
            transitions.Machine(model=model, **config)
            population[key] = model

        return add_per_machine, run_naive

    if variant == ADD_MODEL:
        shared = transitions.Machine(model=None, **config)

        def add_to_shared(population: dict[Any, Any], key: Any) -> None:
            model = NaiveSession(key, context(key))
            shared.add_model(model)
            population[key] = model

        return add_to_shared, run_naive

    raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def check_equivalent(spec: MachineSpec[Any]) -> None:
    """The naive variants must step exactly like the engine, or the comparison means nothing."""
    keys = make_keys(0, 4)
    events: list[Event] = [
        GetLogLevel("t1"),
        SetLogLevel(3),
        GetLogLevel("t2"),
        SetLogLevel(9),
        SetLogLevel(0),
        GetLogLevel("t3"),
    ]
    machine: Machine[Any] = Machine(spec)
    sessions = {k: machine.new_session(k) for k in keys}
    expected = []
    for key in keys:
        for event in events:
            out = machine.step(sessions[key], event, NOW)
            expected.append((sessions[key].state, out or []))
    for variant in (PER_MACHINE, ADD_MODEL):
        add, _ = make_variant(variant, spec)
        models: dict[Any, Any] = {}
        for key in keys:
            add(models, key)
        got = []
        for key in keys:
            for event in events:
                model = models[key]
                model.out = []
                getattr(model, event.trigger)(event, NOW)
                got.append((model.state, model.out))
        if got != expected:
            raise AssertionError(f"{variant} does not step like the engine:\n{got}\n!=\n{expected}")


# ---- measuring one case ---------------------------------------------------------------------


def make_keys(start: int, stop: int) -> list[DeviceKey]:
    return [DeviceKey(PRODUCT, f"dev{i:06d}") for i in range(start, stop)]


def rss_bytes() -> int | None:
    """Resident set size now (Linux /proc); None where that is not available."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def work_window(keys: Sequence[DeviceKey], start: int, count: int) -> list[tuple[Any, Event]]:
    """Steps `start .. start+count` of an endless round-robin over all sessions.

    Pass p gives session j a GetLogLevel when j + p is even and a SetLogLevel otherwise, so every
    session alternates between the two; global step g sets level g % 5.
    """
    n = len(keys)
    work: list[tuple[Any, Event]] = []
    for g in range(start, start + count):
        j = g % n
        if (j + g // n) % 2 == 0:
            work.append((keys[j], GetLogLevel(f"{PRODUCT}-{g}")))
        else:
            work.append((keys[j], SetLogLevel(g % 5)))
    return work


def project(points: Sequence[tuple[int, float]], n: int) -> float:
    """Seconds to make all n sessions, from (sessions made, seconds elapsed) after each chunk.

    Models the cost of one more session as linear in the sessions already made (constant for a
    linear build, rising for `add_model`'s list scan), from the cheapest chunk of the first third
    and of the last third: a burst of load from another process makes chunks slower, never
    faster, so minima show the build's own curve where a least-squares fit would bend with bursts.
    """
    made, elapsed = points[-1]
    costs: list[tuple[float, float]] = []
    previous = (0, 0.0)
    for m, t in points:
        costs.append(((previous[0] + m) / 2, (t - previous[1]) / (m - previous[0])))
        previous = (m, t)
    third = max(1, len(costs) // 3)
    early, late = costs[:third], costs[-third:]
    early_at, early_cost = sum(c[0] for c in early) / len(early), min(c[1] for c in early)
    late_at, late_cost = sum(c[0] for c in late) / len(late), min(c[1] for c in late)
    slope = max(0.0, (late_cost - early_cost) / (late_at - early_at)) if late_at > early_at else 0.0
    return elapsed + (n - made) * (late_cost + slope * ((made + n) / 2 - late_at))


@dataclasses.dataclass(frozen=True)
class Case:
    """One (variant, size) measurement, as the parent process hands it to a child."""

    variant: str
    n: int
    budget: float
    """Seconds this case may take in all; creation stops early when it would not fit."""
    reserve: float = 0.0
    """Seconds to keep for the step and tracemalloc phases (the previous size's figure)."""
    reps: int = 5
    min_steps: int = 20_000
    max_steps: int = 200_000
    sample: int = 0
    """Fresh sessions to trace with tracemalloc; 0 means as many as the case has."""
    gc_off_builds: int = 0


def run_case(case: Case) -> dict[str, Any]:
    """Create n sessions, step them, measure an idle session; stop early if over budget."""
    started = time.perf_counter()
    n = case.n
    add, run = make_variant(case.variant, PLATFORM)
    keys = make_keys(0, n)
    traced = n if case.sample <= 0 else min(n, case.sample)
    extra_keys = make_keys(n, n + traced)
    warm_up(case.variant, make_keys(n + traced, n + traced + 100))
    # the harness's own objects (keys) stay out of the collector's way while sessions are made
    gc.collect()
    gc.freeze()

    result: dict[str, Any] = {"variant": case.variant, "sessions": n, "skipped": False}
    population: dict[Any, Any] = {}
    result.update(create(case, add, keys, population, started))
    if not result["skipped"]:
        if case.gc_off_builds:
            result["create_us_gc_off"] = create_gc_off(add, keys, case.gc_off_builds)
        result.update(time_steps(case, run, keys, population, started))
        result.update(trace_idle(add, extra_keys))
    result["wall_s"] = time.perf_counter() - started
    return result


def warm_up(variant: str, keys: list[DeviceKey]) -> None:
    """First calls, attrs classes and allocator arenas, on a throwaway instance of the variant."""
    add, run = make_variant(variant, PLATFORM)
    population: dict[Any, Any] = {}
    for key in keys:
        add(population, key)
    run(population, work_window(keys, 0, 2 * len(keys)))


def create(
    case: Case, add: Adder, keys: list[DeviceKey], population: dict[Any, Any], started: float
) -> dict[str, Any]:
    """Make the sessions in chunks, so that an over-budget size is noticed early."""
    n = len(keys)
    chunk = max(1, n // 50)
    points: list[tuple[int, float]] = []
    rss0 = rss_bytes()
    c0, t0 = time.process_time(), time.perf_counter()
    made = 0
    while made < n:
        for key in keys[made : made + chunk]:
            add(population, key)
        made = min(n, made + chunk)
        elapsed = time.perf_counter() - t0
        points.append((made, elapsed))
        available = case.budget - case.reserve - (time.perf_counter() - started - elapsed)
        # decide once a tenth of what is available has gone into it: cheap, and it has seen
        # enough of the curve to tell linear from quadratic
        decide = elapsed > available or (elapsed > available / 10 and len(points) >= 6)
        if made < n and decide:
            projected = project(points, n)
            if projected > available or elapsed > available:
                return {
                    "skipped": True,
                    "made": made,
                    "made_s": elapsed,
                    "extrapolated_create_s": projected,
                    "create_us": projected / n * 1e6,
                }
    create_s = time.perf_counter() - t0
    create_cpu_s = time.process_time() - c0
    rss1 = rss_bytes()
    return {
        "create_s": create_s,
        "create_us": create_s / n * 1e6,
        "create_cpu_us": create_cpu_s / n * 1e6,
        "rss_bytes": None if rss0 is None or rss1 is None else (rss1 - rss0) / n,
    }


def create_gc_off(add: Adder, keys: list[DeviceKey], builds: int) -> float:
    """µs per session for the same creation with the cyclic collector paused, best of builds.

    That is the engine's own work per session, without CPython's full collections, which only
    start once enough objects are tracked and so make small sizes look cheaper than large ones.
    The best build, because other processes on a shared machine only ever make a build slower.
    """
    runs = []
    for _ in range(builds):
        scratch: dict[Any, Any] = {}
        gc.disable()
        try:
            t = time.perf_counter()
            for key in keys:
                add(scratch, key)
            runs.append((time.perf_counter() - t) / len(keys) * 1e6)
        finally:
            gc.enable()
        del scratch
        gc.collect()
    return min(runs)


def time_steps(
    case: Case, run: Stepper, keys: list[DeviceKey], population: dict[Any, Any], started: float
) -> dict[str, Any]:
    """Median µs per step over repetitions of a round-robin continued across them."""
    steps = max(case.min_steps, min(2 * len(keys), case.max_steps))
    timings: list[float] = []
    cpu: list[float] = []
    phase = time.perf_counter()
    for rep in range(case.reps):
        work = work_window(keys, rep * steps, steps)
        gc.collect()
        c, t = time.process_time(), time.perf_counter()
        run(population, work)
        timings.append((time.perf_counter() - t) / steps * 1e6)
        cpu.append((time.process_time() - c) / steps * 1e6)
        del work
        if time.perf_counter() - started > case.budget:
            break
    return {
        "step_us": statistics.median(timings),
        "step_runs_us": timings,
        "step_cpu_us": statistics.median(cpu),
        "steps_per_run": steps,
        "step_phase_s": time.perf_counter() - phase,
    }


def trace_idle(add: Adder, keys: list[DeviceKey]) -> dict[str, Any]:
    """Bytes per idle session: fresh sessions made under tracemalloc into their own dict."""
    phase = time.perf_counter()
    fresh: dict[Any, Any] = {}
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for key in keys:
        add(fresh, key)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "traced_sessions": len(keys),
        "traced_bytes": (after - before) / len(keys),
        "trace_phase_s": time.perf_counter() - phase,
    }


# ---- orchestration --------------------------------------------------------------------------


def run_child(
    args: argparse.Namespace, variant: str, n: int, budget: float, reserve: float
) -> dict[str, Any]:
    naive = variant != ENGINE
    case = Case(
        variant=variant,
        n=n,
        budget=budget,
        reserve=reserve,
        reps=args.naive_reps if naive else args.reps,
        min_steps=args.min_steps,
        max_steps=args.naive_max_steps if naive else args.max_steps,
        sample=args.naive_sample if naive else 0,
        gc_off_builds=0 if naive else args.gc_off_builds,
    )
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--case",
        json.dumps(dataclasses.asdict(case)),
    ]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=budget + 30, check=False)
    except subprocess.TimeoutExpired:
        return {
            "variant": variant,
            "sessions": n,
            "skipped": True,
            "killed": True,
            "wall_s": time.perf_counter() - started,
        }
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark case {variant} n={n} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def extrapolate(measured: Sequence[dict[str, Any]], n: int) -> float | None:
    """Seconds to create n sessions, by a power law through the last two sizes that completed."""
    done = [r for r in measured if not r["skipped"]]
    if not done:
        return None
    size, seconds = float(done[-1]["sessions"]), float(done[-1]["create_s"])
    if len(done) == 1:
        return seconds * n / size
    prev_size, prev_seconds = float(done[-2]["sessions"]), float(done[-2]["create_s"])
    k = math.log(seconds / prev_seconds) / math.log(size / prev_size)
    return seconds * float((n / size) ** max(1.0, k))


def run_all(args: argparse.Namespace, sizes: list[int]) -> list[dict[str, Any]]:
    check_equivalent(PLATFORM)
    results: list[dict[str, Any]] = []
    for variant in VARIANTS:
        remaining = args.engine_budget if variant == ENGINE else args.budget
        reserve = 0.0
        mine: list[dict[str, Any]] = []
        for n in sizes:
            if remaining < 1.0:
                guess = extrapolate(mine, n)
                result: dict[str, Any] = {"variant": variant, "sessions": n, "skipped": True}
                if guess is not None:
                    result.update(extrapolated_create_s=guess, create_us=guess / n * 1e6, made=0)
            else:
                result = run_child(args, variant, n, remaining, reserve)
                remaining -= result["wall_s"]
                if not result["skipped"]:
                    reserve = result["step_phase_s"] + result["trace_phase_s"] * 2
            mine.append(result)
            if args.verbose:
                print(f"  {variant} {n}: {result}", file=sys.stderr)
        results.extend(mine)
    return results


# ---- reporting ------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _get(results: Sequence[dict[str, Any]], variant: str, n: int) -> dict[str, Any]:
    return next(r for r in results if r["variant"] == variant and r["sessions"] == n)


def skip_note(r: dict[str, Any]) -> str:
    if r.get("killed"):
        return "skipped (over budget: killed, no estimate)"
    est = r.get("extrapolated_create_s")
    text = "skipped (over budget" + (f": extrapolated ~{est:,.0f} s to create" if est else "") + ")"
    if r.get("made"):
        text += f"; made {r['made']:,} in {r['made_s']:.1f} s"
    return text


def linearity(
    results: Sequence[dict[str, Any]], variant: str, sizes: Sequence[int], field: str = "create_us"
) -> tuple[float | None, bool]:
    """Per-session creation cost at the largest size / at the one before; (ratio, extrapolated)."""
    if len(sizes) < 2:
        return None, False
    hi, lo = _get(results, variant, sizes[-1]), _get(results, variant, sizes[-2])
    if lo["skipped"] or field not in hi or field not in lo:
        return None, False
    return hi[field] / lo[field], bool(hi["skipped"])


def facts() -> dict[str, Any]:
    cpu = cpu_model()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "transitions": transitions.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def verdicts(results: Sequence[dict[str, Any]], sizes: Sequence[int]) -> list[tuple[bool, str]]:
    engine = [r for r in results if r["variant"] == ENGINE and not r["skipped"]]
    out: list[tuple[bool, str]] = []
    if len(engine) < len(sizes):
        out.append((False, "engine: some sizes did not complete"))
    if engine:
        worst = max(engine, key=lambda r: r["step_us"])
        out.append(
            (
                worst["step_us"] <= STEP_TARGET_US,
                f"step <= {STEP_TARGET_US:g} µs including dispatch: worst median"
                f" {worst['step_us']:.2f} µs (at {worst['sessions']:,} sessions)",
            )
        )
        fat = max(engine, key=lambda r: r["traced_bytes"])
        rss = [r["rss_bytes"] for r in engine if r["rss_bytes"] is not None]
        cross = f"; RSS delta at most {max(rss):.0f} B" if rss else ""
        out.append(
            (
                fat["traced_bytes"] <= IDLE_TARGET_BYTES,
                f"idle session <= 1 KB: worst {fat['traced_bytes']:.0f} B by tracemalloc"
                f" (at {fat['sessions']:,}){cross}",
            )
        )
    own, _ = linearity(results, ENGINE, sizes, "create_us_gc_off")
    whole, _ = linearity(results, ENGINE, sizes)
    if own is None or whole is None:
        out.append((False, "creation linear: needs two completed sizes"))
    else:
        out.append(
            (
                own <= LINEAR_MAX_RATIO,
                f"creation linear: µs per session at {sizes[-1]:,} / at {sizes[-2]:,} ="
                f" {own:.2f} with the GC paused (<= {LINEAR_MAX_RATIO:g}; quadratic would be"
                f" ~{sizes[-1] / sizes[-2]:g}); {whole:.2f} with the GC running",
            )
        )
    return out


def report(results: Sequence[dict[str, Any]], sizes: Sequence[int], info: dict[str, Any]) -> str:
    lines = [
        f"iotfsm engine benchmark: log_level.platform, {info['implementation']} {info['python']},"
        f" transitions {info['transitions']}, {info['nproc']} CPU ({info['cpu']}), {info['date']}",
        "",
    ]
    head = (
        f"{'variant':<28} {'sessions':>9} {'create µs/session':>18} {'step µs, median':>16}"
        f" {'B/idle session':>15} {'B/idle session':>15}  notes"
    )
    sub = f"{'':<28} {'':>9} {'wall / CPU':>18} {'wall / CPU':>16} {'tracemalloc':>15} {'RSS':>15}"
    lines += [head, sub, "-" * len(head)]
    for variant in VARIANTS:
        for n in sizes:
            r = _get(results, variant, n)
            if r["skipped"]:
                create = r.get("create_us")
                lines.append(
                    f"{LABELS[variant]:<28} {n:>9,} {('~' + _num(create)) if create else '-':>18}"
                    f" {'-':>16} {'-':>15} {'-':>15}  {skip_note(r)}"
                )
                continue
            create = f"{_num(r['create_us'])} / {_num(r['create_cpu_us'])}"
            step = f"{_num(r['step_us'], 2)} / {_num(r['step_cpu_us'], 2)}"
            runs = r["step_runs_us"]
            notes = (
                f"{len(runs)} runs x {r['steps_per_run']:,} steps: {min(runs):.2f}-{max(runs):.2f}"
                f" µs wall; {r['traced_sessions']:,} fresh sessions traced"
            )
            if "create_us_gc_off" in r:
                notes += f"; create {r['create_us_gc_off']:.2f} µs with GC paused (best build)"
            lines.append(
                f"{LABELS[variant]:<28} {n:>9,} {create:>18} {step:>16}"
                f" {_num(r['traced_bytes'], 0):>15} {_num(r['rss_bytes'], 0):>15}  {notes}"
            )
    lines.append("")
    if len(sizes) >= 2:
        lines.append(
            f"Creation linearity (µs per session at {sizes[-1]:,} / at {sizes[-2]:,};"
            f" 1 = linear, ~{sizes[-1] / sizes[-2]:g} = quadratic):"
        )
        for variant in VARIANTS:
            ratio, guessed = linearity(results, variant, sizes)
            shown = "n/a" if ratio is None else ("~" if guessed else "") + f"{ratio:.2f}"
            if guessed:
                shown += " (extrapolated)"
            paused, _ = linearity(results, variant, sizes, "create_us_gc_off")
            if paused is not None:
                shown += f" with the GC running, {paused:.2f} with it paused"
            lines.append(f"  {LABELS[variant]:<28} {shown}")
        lines.append("")
    lines.append("Naive / engine (how many times more the naive variant costs):")
    for variant in (PER_MACHINE, ADD_MODEL):
        parts = []
        for n in sizes:
            e, v = _get(results, ENGINE, n), _get(results, variant, n)
            if e["skipped"] or v["skipped"]:
                create = (
                    f"create ~{v['create_us'] / e['create_us']:.0f}x"
                    if "create_us" in v and "create_us" in e
                    else "create n/a"
                )
                parts.append(f"{n:,}: {create}, step/memory not measured")
                continue
            parts.append(
                f"{n:,}: step {v['step_us'] / e['step_us']:.1f}x,"
                f" memory {v['traced_bytes'] / e['traced_bytes']:.0f}x,"
                f" create {v['create_us'] / e['create_us']:.0f}x"
            )
        lines.append(f"  {LABELS[variant]}")
        lines += [f"    {p}" for p in parts]
    lines.append("")
    lines.append("Targets for this engine:")
    for ok, text in verdicts(results, sizes):
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {text}")
    return "\n".join(lines)


# ---- command line ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = p.add_argument
    add(
        "--sizes",
        type=parse_sizes,
        default=None,
        help="sessions per case; default 1000,10000,100000",
    )
    add("--quick", action="store_true", help="small sizes and short runs (smoke test)")
    add("--json", action="store_true", help="print one JSON document instead of the table")
    add("--budget", type=float, default=60.0, help="seconds per naive variant, all sizes (60)")
    add("--reps", type=int, default=5, help="timed step runs per engine case (median)")
    add("--naive-reps", type=int, default=3, help="timed step runs per naive case (median)")
    add("--min-steps", type=int, default=20_000, help="steps per timed run, at least")
    add("--max-steps", type=int, default=200_000, help="engine steps per timed run, at most")
    add("--naive-max-steps", type=int, default=40_000, help="naive steps per timed run, at most")
    add("--naive-sample", type=int, default=2_000, help="fresh naive sessions under tracemalloc")
    add("--gc-off-builds", type=int, default=3, help="engine creations timed with the GC paused")
    add("--engine-budget", type=float, default=300.0, help=argparse.SUPPRESS)
    add("--verbose", action="store_true", help=argparse.SUPPRESS)
    # one Case as JSON: how the parent runs each (variant, size) in a child process
    add("--case", help=argparse.SUPPRESS)
    return p


def main(argv: Iterable[str] | None = None) -> int:
    args = parser().parse_args(None if argv is None else list(argv))

    if args.case:
        result = run_case(Case(**json.loads(args.case)))
        print(json.dumps(result))
        return 0

    if args.quick:
        sizes = args.sizes or [100, 1_000]
        args.budget = min(args.budget, 5.0)
        args.reps = args.naive_reps = 3
        args.min_steps = 1_000
        args.max_steps = args.naive_max_steps = 2_000
        args.naive_sample = 100
        args.gc_off_builds = 1
    else:
        sizes = args.sizes or [1_000, 10_000, 100_000]

    info = facts()
    results = run_all(args, sizes)
    if args.json:
        doc = {
            "facts": info,
            "sizes": sizes,
            "results": results,
            "targets": [{"pass": ok, "text": text} for ok, text in verdicts(results, sizes)],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(report(results, sizes, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
