"""A campaign across the platform pool runs once, and survives losing the worker that runs it.

Two `iotfsm platform --broker amqp://… --store postgresql://…` workers share the session's
private RabbitMQ node and PostgreSQL (`pool_world`); `TARGETED` simulated devices and one more
(`OUTSIDER`, registered and online but not in the campaign) log in over the MQTT plugin. The
operator starts a campaign the way the README says, `iotfsm campaign start --store DSN` (three
waves, a start rate, the threshold advance), and the pool's leader (the holder of the leader
advisory lock) runs it. In the middle of the second wave the leader is SIGKILLed and another
worker is started; the survivor takes the lead, restores the campaign from the store and goes on.
Then:

- the campaign ended succeeded, applied from the queued command by one worker only;
- its waves started in order (history and start times), and no start came sooner than the rate
  lets it, across the failover too;
- every targeted device has exactly one OTA success recorded (`pool.outcomes`), the campaign
  started each once (its snapshot's `starts`) and each device was offered the image once;
- the outsider was offered nothing and still runs the old version;
- `iotfsm campaign status --store DSN` shows the campaign succeeded, wave by wave.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import cattrs
import psycopg
import pytest
from pool_devices import OLD
from pool_world import ACCOUNT, PARTITIONS, PRODUCT, SRC, Devices, Pool, logins, register, wait_for

from iotfsm.adapters.amqp.leases import LEADER_SPACE, MEMBER_SPACE, PARTITION_SPACE
from iotfsm.adapters.http.broker_auth import BrokerAuthServer
from iotfsm.adapters.identity.broker_policy import BrokerPolicy
from iotfsm.adapters.identity.registry import device_topics
from iotfsm.adapters.store.postgres import PostgresStore
from iotfsm.campaigns import COMMANDS, TABLE, CampaignStatus, stored_statuses
from iotfsm.fsm.machine import Machine
from iotfsm.fsm.snapshot import restore
from iotfsm.machines import all_features, campaign
from iotfsm.machines.campaign import CampaignContext
from iotfsm.pool import Outcome, outcomes

TARGETED = 300
TARGETS = [f"d{i:04d}" for i in range(TARGETED)]
WAVES = (40, 100)
"""`--wave-counts`: the rest, 160, is the third wave."""
SIZES = (40, 100, 160)
RATE = 1800.0  # starts per minute: 30/s, so the starts alone take 10 s
OUTSIDER = "outsider"
CAMPAIGN = "c-pool"
TARGET = "2.0.0"
IMAGE = bytes(range(256)) * 32  # 8 KiB
WAIT = 90.0


def _iotfsm(pool: Pool, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's command line, with the database password from PGPASSFILE as documented."""
    env = pool.cluster.environment()
    env["PYTHONPATH"] = str(SRC)
    done = subprocess.run(
        [sys.executable, "-m", "iotfsm", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


def _leader(pool: Pool) -> int | None:
    """The index in `pool.workers` of the worker holding the leader lock: the lock's backend
    also holds that worker's membership lock, whose number its log names."""
    with psycopg.connect(pool.cluster.conninfo(pool.dbname)) as conn:
        row = conn.execute(
            "SELECT m.objid::bigint FROM pg_locks l JOIN pg_locks m ON m.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::int::oid"
            " AND l.objsubid = 2 AND m.locktype = 'advisory' AND m.granted"
            " AND m.classid = %s::int::oid AND m.objsubid = 2",
            (LEADER_SPACE, MEMBER_SPACE),
        ).fetchone()
    if row is None:
        return None
    for n in range(len(pool.workers)):
        text = (pool.root / f"worker{n}.log").read_text(errors="replace")
        if f"(member {row[0]})" in text and f"worker {row[0]} leads the pool" in text:
            return n
    return None


def _status(store: PostgresStore) -> CampaignStatus | None:
    found = [s for s in stored_statuses(store) if s.id == CAMPAIGN]
    return found[0] if found else None


def _context(store: PostgresStore) -> CampaignContext:
    doc = store.get(TABLE, CAMPAIGN)
    assert isinstance(doc, dict)
    session = restore(Machine(campaign.SPEC), CAMPAIGN, doc, cattrs.Converter())
    ctx: CampaignContext = session.ctx
    return ctx


def _diagnosis(pool: Pool, devices: Devices, store: PostgresStore) -> str:
    status = _status(store)
    stuck = [d for found in devices.ask("stuck") for d in found]
    traces = pool.lines_about([f".{name}" for name, *_ in stuck if name != OUTSIDER])
    return f"{status}\n{devices.totals()}\n{stuck}\n{traces}\n{pool.logs()}"


def _logged(pool: Pool, pattern: str) -> list[str]:
    found = []
    for n in range(len(pool.workers)):
        text = (pool.root / f"worker{n}.log").read_text(errors="replace")
        found += [f"worker{n}: {line}" for line in text.splitlines() if re.search(pattern, line)]
    return found


@attrs.frozen
class Seen:
    """What the run left behind, read after the devices stopped."""

    status: CampaignStatus
    ctx: CampaignContext
    recorded: list[Outcome]
    counts: dict[str, int]
    stuck: list[Any]
    queued: list[tuple[str, Any]]
    campaigns: list[str]
    starts_applied: list[str]
    victim: int
    successor: int | None
    shown: str
    table: str
    timing: str


def _run(pool: Pool, image: Path) -> Seen:
    """Two workers, the fleet, the operator's start, the leader killed mid-wave, another
    worker started; until the campaign ends and every targeted device is done."""
    began = time.monotonic()
    store = PostgresStore(pool.cluster.conninfo(pool.dbname))
    registry = register(store, pool.root / "secrets", [*TARGETS, OUTSIDER])
    policy = BrokerPolicy(registry, ACCOUNT, all_features(), device_topics)
    auth = BrokerAuthServer(policy, *pool.node.auth_address, workers=8, pending=2048).start()
    devices = Devices(count=2)
    try:
        for _ in range(2):
            pool.start_worker()
        wait_for("two workers holding every partition", lambda: pool.locks(MEMBER_SPACE) == 2
                 and pool.locks(PARTITION_SPACE) == PARTITIONS
                 and _leader(pool) is not None, WAIT)  # fmt: skip
        devices.start(pool, logins(registry, [*TARGETS, OUTSIDER]))
        wait_for(
            "every device's version answered", lambda: devices.totals()["rsp"] > TARGETED, WAIT
        )
        ready = time.monotonic()
        started = _iotfsm(
            pool, "campaign", "start", "--store", pool.dsn, "--id", CAMPAIGN, "--product",
            PRODUCT, "--version", TARGET, "--image", str(image), "--devices", ",".join(TARGETS),
            "--wave-counts", ",".join(map(str, WAVES)), "--rate", f"{RATE:g}", "--json",
        )  # fmt: skip
        assert json.loads(started.stdout)["campaign"] == CAMPAIGN

        def mid_second_wave() -> bool:
            status = _status(store)
            return status is not None and status.wave == 2 and status.waves[1].succeeded >= 30

        wait_for("the second wave half way", mid_second_wave, WAIT)
        victim = _leader(pool)
        assert victim is not None, "a worker leads the pool"
        pool.workers[victim].send_signal(signal.SIGKILL)
        pool.workers[victim].wait()
        killed, at_kill = time.monotonic(), _status(store)
        pool.start_worker()

        def ended() -> bool:
            status = _status(store)
            return status is not None and status.state in ("succeeded", "aborted", "cancelled")

        try:
            wait_for("the campaign to end", ended, WAIT)
            wait_for("every targeted device done", lambda: devices.totals()["done"] == TARGETED, 45)
        except AssertionError:
            raise AssertionError(_diagnosis(pool, devices, store)) from None
        finished = time.monotonic()
        counts = devices.totals()
        stuck = [d for found in devices.ask("stuck") for d in found]
        successor = _leader(pool)
    finally:
        devices.stop()
        auth.stop()
        pool.logs()  # kept in $IOTFSM_POOL_LOGS when set
    status = _status(store)
    assert status is not None
    waves_at_kill = [(w.succeeded, w.running, w.pending) for w in at_kill.waves] if at_kill else []
    seen = Seen(
        status,
        _context(store),
        outcomes(store),
        counts,
        stuck,
        store.items(COMMANDS),
        [cid for cid, _ in store.items(TABLE)],
        _logged(pool, rf"campaign {CAMPAIGN}: start \(operator command\)"),
        victim,
        successor,
        _iotfsm(pool, "campaign", "status", CAMPAIGN, "--store", pool.dsn, "--json").stdout,
        _iotfsm(pool, "campaign", "status", "--store", pool.dsn).stdout,
        f"setup {ready - began:.1f} s, campaign {finished - ready:.1f} s (leader worker{victim}"
        f" SIGKILLed {killed - ready:.1f} s in; per wave succeeded/running/pending then:"
        f" {waves_at_kill})",
    )
    store.close()
    return seen


@pytest.mark.timeout(300)
def test_a_campaign_goes_on_once_when_its_leader_is_killed(pool: Pool, tmp_path: Path) -> None:
    image = tmp_path / "fw-2.0.0.bin"
    image.write_bytes(IMAGE)
    seen = _run(pool, image)
    print(f"\npool campaign: {TARGETED} devices, waves {SIZES}, {RATE:g}/min; {seen.timing};"
          f" device counts {seen.counts}")  # fmt: skip
    _check_once(seen)
    _check_waves(seen)
    _check_devices(seen)
    _check_status_command(seen)


def _check_once(seen: Seen) -> None:
    """It ran once, from the one queued command, and ended succeeded under the new leader."""
    assert seen.status.state == "succeeded", seen.status
    assert seen.queued == [], "the queued start was consumed"
    assert len(seen.starts_applied) == 1, seen.starts_applied
    assert seen.campaigns == [CAMPAIGN]
    assert seen.successor is not None and seen.successor != seen.victim, "a survivor leads"


def _check_waves(seen: Seen) -> None:
    """Waves in order, each once, each after the one before; no start sooner than the rate."""
    notes = [text for _, text in seen.status.history]
    assert [n for n in notes if n.startswith(("launched", "wave", "succeeded"))] == [
        f"launched: {TARGETED} devices in 3 waves",
        *(f"wave {n + 1} started ({size} devices)" for n, size in enumerate(SIZES)),
        notes[-1],
    ] and notes[-1].startswith("succeeded"), notes
    assert [(w.size, w.succeeded) for w in seen.status.waves] == [(n, n) for n in SIZES]
    runs = seen.ctx.devices
    assert sorted(runs) == TARGETS, "the campaign targets exactly the named devices"
    assert {r.state for r in runs.values()} == {campaign.SUCCEEDED}
    assert {r.starts for r in runs.values()} == {1}, "no device started twice"
    for wave in range(len(SIZES) - 1):
        last = max(r.started for r in runs.values() if r.wave == wave)
        first_next = min(r.started for r in runs.values() if r.wave == wave + 1)
        assert last < first_next, f"wave {wave + 2} started before wave {wave + 1} ended"
    # the rate holds across the failover: the k-th start never before the first plus k gaps
    times = sorted(r.started for r in runs.values())
    too_soon = [k for k, t in enumerate(times) if t - times[0] < k * 60.0 / RATE - 1e-3]
    assert not too_soon, f"starts ahead of the rate at {too_soon[:5]}"


def _check_devices(seen: Seen) -> None:
    """One success per targeted device, one offer each, nothing for the outsider."""
    per_device: dict[str, int] = {}
    for outcome in seen.recorded:
        assert outcome.ok and outcome.version == TARGET, outcome
        per_device[outcome.device] = per_device.get(outcome.device, 0) + 1
    assert sorted(per_device) == TARGETS, "every targeted device has a success, the outsider none"
    assert set(per_device.values()) == {1}, "no OTA success recorded twice"
    counts = seen.counts
    assert counts["offers"] == TARGETED and counts["downloads"] == TARGETED, counts
    assert counts["duplicates"] == 0 and counts["failed_fetches"] == 0, counts
    # every report answered the first time: a resend (after `pool_devices.RESEND` s) means an
    # answer was lost, e.g. a redelivery taken for a step committed with no answers
    assert counts["resends"] == 0 and counts["rsp"] == counts["reports"], counts
    outsider = [(name, version, c["offers"]) for name, _s, version, _o, c, _h in seen.stuck]
    assert outsider == [(OUTSIDER, OLD, 0)], "the outsider was offered nothing"


def _check_status_command(seen: Seen) -> None:
    """`iotfsm campaign status --store DSN`, as JSON and as the table an operator reads."""
    doc: list[dict[str, Any]] = json.loads(seen.shown)
    assert [(d["id"], d["state"]) for d in doc] == [(CAMPAIGN, "succeeded")]
    assert [(w["size"], w["succeeded"]) for w in doc[0]["waves"]] == [(n, n) for n in SIZES]
    assert f"campaign {CAMPAIGN}: {PRODUCT} → {TARGET}, succeeded" in seen.table
