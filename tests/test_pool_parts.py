"""The pool's parts one at a time, against the session's private PostgreSQL: signed commands,
partition leases, uplink marks, and files any worker serves (issue 17)."""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_fixtures import fresh_database

from iotfsm.adapters.amqp.commands import CommandCodec, CommandError
from iotfsm.adapters.amqp.leases import LeaseLostError, Leases, fair_share
from iotfsm.adapters.amqp.worker import PoolSettings, PoolWorker
from iotfsm.adapters.http.file_service import FileService
from iotfsm.adapters.store.postgres import PostgresStore
from iotfsm.adapters.store.postgres_blobs import PostgresBlobs
from iotfsm.machines import ota
from iotfsm.machines.feature import DeviceKey
from iotfsm.testing.postgres import PostgreSQL
from iotfsm.testing.server import free_port
from iotfsm.testing.waiting import wait_for

KEY = DeviceKey("PPOOL", "dev-1")
SECRET = b"k" * 32


@pytest.fixture
def database(postgres_cluster: PostgreSQL) -> tuple[PostgreSQL, str]:
    return postgres_cluster, fresh_database(postgres_cluster)


@pytest.fixture
def store(database: tuple[PostgreSQL, str]) -> Iterator[PostgresStore]:
    cluster, name = database
    opened = PostgresStore(cluster.conninfo(name))
    yield opened
    opened.close()


# ---- commands -------------------------------------------------------------------------------


def test_a_command_signed_by_the_pool_comes_back_as_the_event() -> None:
    codec = CommandCodec(SECRET)
    event = ota.DeployFirmware("2.0.0", "fw-x", 10, "0" * 32)
    body, signature = codec.encode("ota", KEY, event)
    command = codec.decode(body, signature)
    assert (command.feature, command.key, command.event) == ("ota", KEY, event)
    again, _ = codec.encode("ota", KEY, event)
    assert again != body, "every command is unique, so redelivery checks never merge two"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body, sig: (body, "0" * 64),  # forged signature
        lambda body, sig: (body, None),  # none at all (a device publishing into the exchange)
        lambda body, sig: (body.replace(b"2.0.0", b"6.6.6"), sig),  # changed on the way
        lambda body, sig: (body, CommandCodec(b"x" * 32).sign(body)),  # another pool's key
    ],
)
def test_a_command_not_signed_by_this_pool_is_refused(tamper: object) -> None:
    codec = CommandCodec(SECRET)
    body, signature = codec.encode("ota", KEY, ota.DeployFirmware("2.0.0", "fw-x", 10, "0" * 32))
    forged_body, forged_sig = tamper(body, signature)  # type: ignore[operator]
    with pytest.raises(CommandError, match="signature"):
        codec.decode(forged_body, forged_sig)


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"type": "os:system", "event": {}}, "not one of iotfsm.machines"),
        ({"type": "iotfsm.machines.ota:FEATURE", "event": {}}, "not an event class"),
        ({"type": "iotfsm.machines.ota:DeployFirmware", "event": {"version": 1}}, "malformed"),
    ],
)
def test_a_signed_command_naming_no_machine_event_is_refused(
    doc: dict[str, object], problem: str
) -> None:
    codec = CommandCodec(SECRET)
    body = json.dumps({"feature": "ota", "product": "P", "device": "d", **doc}).encode()
    with pytest.raises(CommandError, match=problem):
        codec.decode(body, codec.sign(body))
    with pytest.raises(CommandError, match="malformed"):
        codec.decode(b"{not json", codec.sign(b"{not json"))


# ---- leases ---------------------------------------------------------------------------------


def test_fair_share_rounds_up_so_every_partition_has_an_owner() -> None:
    assert [fair_share(16, n) for n in (1, 2, 3, 4, 16, 17)] == [16, 8, 6, 4, 1, 1]
    assert fair_share(16, 0) == 16


def test_leases_are_exclusive_counted_and_gone_with_the_connection(
    database: tuple[PostgreSQL, str],
) -> None:
    cluster, name = database
    dsn = cluster.conninfo(name)
    first, second = Leases(dsn, 4), Leases(dsn, 4)
    first.join()
    assert first.members() == 1 and first.share() == 4
    second.join()
    assert first.members() == 2 and second.share() == 2
    assert first.take(0) and first.take(1)
    assert not second.take(0), "a partition has one owner"
    assert second.take(2)
    assert first.lead() and not second.lead()
    first.close()  # a worker that dies: its connection goes, and with it every lock
    wait_for("the closed connection's locks to go", lambda: second.members() == 1)
    assert second.take(0) and second.lead()
    second.close()
    with pytest.raises(LeaseLostError):
        second.take(3)


def test_a_worker_whose_database_is_gone_keeps_trying_and_warns_once(
    store: PostgresStore, caplog: pytest.LogCaptureFixture
) -> None:
    """An outage is one warning, not a line a second on stderr for as long as it lasts; the
    worker keeps trying (the database may come back) until it is stopped."""
    caplog.set_level(logging.DEBUG, logger="iotfsm.adapters.amqp.worker")
    gone = f"postgresql://iotfsm@127.0.0.1:{free_port()}/nothing"  # nothing listens there
    settings = PoolSettings("amqp://127.0.0.1:1/%2F", backoff=0.001, backoff_max=0.01)
    worker = PoolWorker(settings, store, gone, CommandCodec(SECRET))

    def tries() -> list[int]:
        return [r.levelno for r in caplog.records if "partitions given up" in r.getMessage()]

    worker.start()
    try:
        wait_for("four failed tries", lambda: len(tries()) >= 4)
    finally:
        worker.stop()
    assert tries()[:4] == [logging.WARNING, logging.DEBUG, logging.DEBUG, logging.DEBUG]
    first = next(r.getMessage() for r in caplog.records if "partitions given up" in r.getMessage())
    assert "LeaseLostError" in first and "every 0.01 s at most" in first
    assert not worker.connected


# ---- marks ----------------------------------------------------------------------------------


def test_marks_of_a_batch_are_committed_with_it_and_name_their_answers(
    store: PostgresStore,
) -> None:
    answer = ("$ota.update.PPOOL.dev-1", '{"type":"report_version_rsp"}', 0)
    store.save("ota", KEY, {"state": "offered"})
    store.mark("$ota.report.PPOOL.dev-1", KEY, 3, "d1", [])
    store.mark("$ota.report.PPOOL.dev-1", KEY, 3, "d1", [answer])
    store.mark("$ota.report.PPOOL.dev-1", KEY, 3, "d2", [])
    assert store.marked_answers("$ota.report.PPOOL.dev-1", "d1") is None, "not committed yet"
    store.commit()
    assert store.marked_answers("$ota.report.PPOOL.dev-1", "d1") == [answer]
    assert store.marked_answers("$ota.report.PPOOL.dev-1", "d2") == []
    assert store.marked_answers("$ota.report.PPOOL.dev-1", "d3") is None
    found = store.partition_sessions(3)
    assert [(f, k) for _, f, k, _ in found] == [("ota", KEY)]
    assert store.partition_sessions(4) == []
    # a worker that lost its partitions drops what it had not committed
    store.save("ota", KEY, {"state": "succeeded"})
    store.mark("$ota.report.PPOOL.dev-1", KEY, 3, "d4", [])
    assert store.discard_pending() == 2
    store.commit()
    assert store.device_sessions(KEY, ("ota",)) == [("ota", {"state": "offered"})]


def test_a_record_written_in_the_middle_of_a_batch_does_not_commit_the_batch(
    store: PostgresStore, database: tuple[PostgreSQL, str]
) -> None:
    """The leader's campaign runner writes its snapshot inside the step that ended an OTA task
    (and relays outcomes from another thread at any time): that write must carry neither the
    half-done step's uplink mark (the next owner would take the redelivery for a step done and
    never record its outcome) nor its snapshot or staged outcome. A worker that drops its batch
    drops the staged outcome with it."""
    rk = "$ota.report.PPOOL.dev-1"
    store.save("ota", KEY, {"state": "succeeded"})
    store.mark(rk, KEY, 3, "d1", [])
    store.stage("ota_outcomes", "PPOOL/dev-1/2.0.0/x", {"ok": True})
    store.put("campaigns", "c-1", {"state": "running"})  # the runner, mid-step
    cluster, name = database
    other = PostgresStore(cluster.conninfo(name))
    try:
        assert other.get("campaigns", "c-1") == {"state": "running"}, "a record is written at once"
        assert other.marked_answers(rk, "d1") is None, "the step is not marked done"
        assert other.device_sessions(KEY, ("ota",)) == []
        assert other.items("ota_outcomes") == []
        assert store.items("ota_outcomes") == [("PPOOL/dev-1/2.0.0/x", {"ok": True})]
        store.mark(rk, KEY, 3, "d1", [("$ota.update.PPOOL.dev-1", "{}", 0)])
        store.commit()  # the batch, all of it
        assert other.marked_answers(rk, "d1") == [("$ota.update.PPOOL.dev-1", "{}", 0)]
        assert other.items("ota_outcomes") == [("PPOOL/dev-1/2.0.0/x", {"ok": True})]
        # a worker that lost its partitions: the new owner steps it again and records it
        store.save("ota", KEY, {"state": "idle"})
        store.stage("ota_outcomes", "PPOOL/dev-1/3.0.0/y", {"ok": True})
        assert store.discard_pending() == 2
        store.commit()
        assert [k for k, _ in other.items("ota_outcomes")] == ["PPOOL/dev-1/2.0.0/x"]
    finally:
        other.close()


def test_setdefault_keeps_the_first_value(store: PostgresStore) -> None:
    assert store.setdefault("pool", "settings", {"n": 1}) == {"n": 1}
    assert store.setdefault("pool", "settings", {"n": 2}) == {"n": 1}


def test_an_outcome_is_marked_relayed_only_after_the_campaign_runner_heard_it(
    database: tuple[PostgreSQL, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader killed between the two leaves the outcome to the next leader, not lost."""
    from iotfsm.pool import OUTCOMES, PoolPlatform

    cluster, name = database
    pool = PoolPlatform("amqp://127.0.0.1:1/%2F", cluster.conninfo(name), data_dir=tmp_path)
    try:
        doc = {"product": "PPOOL", "device": "dev-1", "version": "2.0.0", "ok": True, "code": 0,
               "message": "", "worker": 1, "relayed": False}  # fmt: skip
        pool.store.put(OUTCOMES, "r1", doc)
        heard: list[tuple[DeviceKey, ota.OtaFinished]] = []

        def leader_dies(key: DeviceKey, effect: ota.OtaFinished) -> None:
            heard.append((key, effect))
            raise SystemExit("SIGKILL")

        monkeypatch.setattr(pool.platform.campaigns, "ota_finished", leader_dies)
        with pytest.raises(SystemExit):
            pool._relay_outcomes()
        assert pool.store.get(OUTCOMES, "r1") == doc, "not marked: the next leader relays it"
        monkeypatch.setattr(pool.platform.campaigns, "ota_finished", lambda *a: heard.append(a))
        pool._relay_outcomes()
        pool._relay_outcomes()
        assert pool.store.get(OUTCOMES, "r1") == {**doc, "relayed": True}
        assert [key for key, _ in heard] == [KEY, KEY], "heard again after the crash, then once"
    finally:
        pool.store.close()


# ---- files any worker serves ----------------------------------------------------------------


def test_a_url_signed_by_one_worker_is_served_by_another_from_the_shared_store(
    store: PostgresStore, tmp_path: object
) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    data = bytes(range(256)) * 1000
    one = FileService(root / "one", secret=SECRET, blobs=PostgresBlobs(store)).start()
    other = FileService(root / "other", secret=SECRET, blobs=PostgresBlobs(store)).start()
    try:
        ref = one.publish_file(data, name="fw-a")
        assert ref.md5 == hashlib.md5(data).hexdigest() and ref.size == len(data)
        assert other.published("fw-a") == ref
        url = one.signed_get_url("fw-a", 60).replace(one.base_url, other.base_url)
        with urllib.request.urlopen(url) as answer:
            assert answer.read() == data
        request = urllib.request.Request(url, headers={"Range": "bytes=1000-"})
        with urllib.request.urlopen(request) as answer:
            assert answer.status == 206 and answer.read() == data[1000:]
        missing = one.signed_get_url("fw-missing", 60).replace(one.base_url, other.base_url)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(missing)
        assert refused.value.code == 404
        forged = url.replace("signature=", "signature=0")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(forged)
        assert refused.value.code == 403
    finally:
        one.stop()
        other.stop()


# ---- joining from the command line ----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ([], "give its --store postgresql://"),
        (["--store", "postgresql://u:secret@127.0.0.1/db"], "visible to every user"),
        (["--store", "postgresql://u@127.0.0.1:1/db", "--desired", "d.toml"], "not supported"),
        (["--store", "postgresql://u@127.0.0.1:1/db", "--firmware-key", "k"], "not supported"),
    ],
)
def test_joining_a_pool_refuses_what_it_cannot_use_and_never_echoes_a_password(
    tmp_path: object, capsys: pytest.CaptureFixture[str], extra: list[str], problem: str
) -> None:
    from iotfsm.cli import main

    argv = ["platform", "--broker", "amqp://127.0.0.1:1/%2F", "--data-dir", str(tmp_path)]
    assert main([*argv, "--http", "127.0.0.1:0", *extra]) != 0
    err = capsys.readouterr().err
    assert problem in err and "secret" not in err


def test_a_broker_url_with_a_login_is_refused(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from iotfsm.cli import main

    argv = ["platform", "--broker", "amqp://iotfsm:secret@127.0.0.1:1/%2F", "--http", "127.0.0.1:0"]
    argv += ["--data-dir", str(tmp_path), "--store", "postgresql://u@127.0.0.1:1/db"]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "no login in the URL" in err and "secret" not in err
