"""The OTA machines stepped by hand: every effect exact, resume rules, retries, stale outcomes."""

from __future__ import annotations

from iotfsm.fsm import CancelTimer, Connected, Disconnected, Log, Publish, SetTimer, Stepper
from iotfsm.machines.feature import DeviceKey
from iotfsm.machines.ota import (
    DEVICE,
    PLATFORM,
    BurnDone,
    BurnFirmware,
    DeployFirmware,
    FirmwareAdopted,
    OfferFirmware,
    OtaAttemptFailed,
    OtaFinished,
    ReportProgress,
    ReportVersion,
    ReportVersionRsp,
    UpdateFirmware,
)
from iotfsm.machines.transfer import (
    CancelTransfer,
    StartDownload,
    TransferDone,
    TransferFailed,
    TransferProgress,
    TransferStarted,
)

KEY = DeviceKey("P1", "dev-1")
MD5_A = "0123456789abcdef0123456789abcdef"
MD5_B = "fedcba9876543210fedcba9876543210"
OFFER = UpdateFirmware(1000, MD5_A.upper(), "http://files/fw?sig=x", "0.2")


def device(version: str = "0.1") -> Stepper:
    s = Stepper(DEVICE, key=KEY)
    s.ctx.version = version
    return s


def test_device_reports_downloads_burns_and_reports_done() -> None:
    s = device()
    assert s.step(Connected()) == [Publish(ReportVersion.of("0.1"), 1), SetTimer("rsp", 10.0, 1)]
    assert s.step(ReportVersionRsp(0, "success", "0.1")) == [CancelTimer("rsp")]
    assert s.state == "idle"
    assert s.step(OFFER) == [
        StartDownload(1, "http://files/fw?sig=x", 1000, MD5_A, "0.2", "firmware"),
        SetTimer("stall", 60.0, 2),
    ]
    assert s.step(TransferStarted(1, 0, 1000)) == [
        Publish(ReportProgress.downloading("0.2", 0), 0),
        SetTimer("stall", 60.0, 3),
    ]
    s.clock.advance(0.5)
    # < 1 s: quiet, and the stall timer is left alone (re-armed only with a report)
    assert s.step(TransferProgress(1, 300, 1000)) == []
    s.clock.advance(0.6)
    assert s.step(TransferProgress(1, 459, 1000)) == [
        Publish(ReportProgress.downloading("0.2", 45), 0),
        SetTimer("stall", 60.0, 4),
    ]
    assert s.step(TransferProgress(1, 1000, 1000)) == [  # 100 % always goes out
        Publish(ReportProgress.downloading("0.2", 100), 0),
        SetTimer("stall", 60.0, 5),
    ]
    assert s.step(TransferDone(1, "/state/ota/firmware.bin")) == [
        CancelTimer("stall"),
        Publish(ReportProgress.burning("0.2"), 1),
        BurnFirmware("/state/ota/firmware.bin", "0.2"),
    ]
    assert s.step(BurnDone(True)) == [
        Publish(ReportProgress.done("0.2"), 1),
        FirmwareAdopted("0.2"),
        Publish(ReportVersion.of("0.2"), 1),
    ]
    assert (s.state, s.ctx.version) == ("idle", "0.2")


def test_a_resumed_download_reports_its_percent_at_once() -> None:
    s = device()
    s.step(Connected())
    s.step(OFFER)
    assert s.step(TransferStarted(1, 730, 1000))[0] == Publish(
        ReportProgress.downloading("0.2", 73), 0
    )


def test_repeated_offer_is_ignored_and_a_different_one_replaces_the_download() -> None:
    s = device()
    s.step(Connected())
    s.step(OFFER)
    assert s.step(UpdateFirmware(1000, MD5_A, "http://files/fw?sig=fresh", "0.2")) == []
    other = UpdateFirmware(2000, MD5_B, "http://files/fw3", "0.3")
    assert s.step(other) == [
        CancelTransfer(1),
        StartDownload(2, "http://files/fw3", 2000, MD5_B, "0.3", "firmware"),
        SetTimer("stall", 60.0, 3),
    ]
    # the cancelled transfer's outcome arrives late and is ignored
    assert s.machine.step(s.session, TransferFailed(1, -1, "cancelled")) is None
    assert s.machine.step(s.session, TransferDone(1, "/x")) is None
    assert (s.state, s.ctx.target, s.ctx.transfer) == ("downloading", "0.3", 2)


def test_download_failure_reports_the_code_and_asks_again_later() -> None:
    s = device()
    s.step(Connected())
    s.step(OFFER)
    assert s.step(TransferFailed(1, -3, "HTTP 403")) == [
        CancelTimer("stall"),
        Publish(ReportProgress.fail("0.2", -3), 1),
        Log.warning("download of 0.2 failed (-3): HTTP 403"),
        SetTimer("retry", 10.0, 3),
    ]
    assert s.state == "idle"
    assert s.advance(10.0) == [Publish(ReportVersion.of("0.1"), 1), SetTimer("rsp", 10.0, 4)]
    assert s.state == "reporting"


def test_stall_gives_up_the_attempt_with_fail_minus_one() -> None:
    s = device()
    s.step(Connected())
    s.step(OFFER)
    assert s.advance(60.0) == [
        CancelTransfer(1),
        Publish(ReportProgress.fail("0.2", -1), 1),
        SetTimer("retry", 10.0, 3),
    ]


def test_the_stall_timer_follows_the_reports_not_the_chunks() -> None:
    """Chunks every 0.25 s for two minutes never stall (a report re-arms the timer every
    second); when the chunks stop, the stall fires 60 s after the last report, not the last chunk."""
    s = device()
    s.step(Connected())
    s.step(OFFER)
    s.step(TransferStarted(1, 0, 1000))
    for i in range(1, 481):
        assert s.advance(0.25) == []
        s.step(TransferProgress(1, i, 1000))
    assert s.state == "downloading"
    last_report = s.step(TransferProgress(1, 481, 1000))
    assert last_report == []  # within a second of the report at chunk 480
    assert s.advance(59.9) == []
    assert s.advance(0.2)[0] == CancelTransfer(1)
    assert s.state == "idle"


def test_burn_failure_reports_minus_five_and_keeps_the_version() -> None:
    s = device()
    s.step(Connected())
    s.step(OFFER)
    s.step(TransferDone(1, "/fw"))
    assert s.step(BurnDone(False, "flash write error")) == [
        Publish(ReportProgress.fail("0.2", -5, "flash write error"), 1),
        Log.warning("burning 0.2 failed: flash write error"),
    ]
    assert (s.state, s.ctx.version) == ("idle", "0.1")


def test_offers_of_the_running_version_and_malformed_offers() -> None:
    s = device("0.2")
    s.step(Connected())
    assert s.step(OFFER) == [CancelTimer("rsp"), Publish(ReportVersion.of("0.2"), 1)]
    bad = UpdateFirmware(-5, "zz", "http://x", "0.3")
    assert s.step(bad) == [Log.warning("refused update_firmware: file_size -5 must be positive")]
    assert s.state == "idle"


def test_reconnect_mid_download_reports_the_version_and_keeps_downloading() -> None:
    s = device()
    s.step(Connected())
    s.step(OFFER)
    assert s.step(Disconnected()) == []
    assert s.step(Connected()) == [Publish(ReportVersion.of("0.1"), 1)]
    assert s.state == "downloading"


# ---- platform -------------------------------------------------------------------------------

TASK = DeployFirmware("0.2", "fw-0.2", 1000, MD5_A)


def test_platform_offers_follows_progress_and_confirms_on_the_version() -> None:
    s = Stepper(PLATFORM, key=KEY)
    assert s.step(ReportVersion.of("0.1")) == [Publish(ReportVersionRsp(0, "success", "0.1"), 0)]
    assert s.step(TASK) == [
        OfferFirmware("0.2", "fw-0.2", 1000, MD5_A),
        SetTimer("silence", 300.0, 1),
    ]
    # each change of state cancels the old silence timer and arms a new one
    assert s.step(ReportProgress.downloading("0.2", 10)) == [
        CancelTimer("silence"),
        SetTimer("silence", 300.0, 2),
    ]
    assert (s.state, s.ctx.percent) == ("downloading", 10)
    assert s.step(ReportProgress.downloading("0.2", 20)) == [SetTimer("silence", 300.0, 3)]
    s.step(ReportProgress.burning("0.2"))
    assert s.step(ReportProgress.done("0.2")) == [
        CancelTimer("silence"),
        SetTimer("silence", 300.0, 5),
    ]
    assert s.state == "confirming"  # "done" alone is not success
    assert s.step(ReportVersion.of("0.2")) == [
        CancelTimer("silence"),
        Publish(ReportVersionRsp(0, "success", "0.2"), 0),
        OtaFinished(True, "0.2", 0, "success"),
    ]
    assert s.state == "succeeded"


def test_platform_reoffers_whenever_the_device_reports_another_version() -> None:
    s = Stepper(PLATFORM, key=KEY)
    s.step(TASK)
    s.step(ReportProgress.downloading("0.2", 50))
    assert s.step(ReportVersion.of("0.1")) == [
        CancelTimer("silence"),
        Publish(ReportVersionRsp(0, "success", "0.1"), 0),
        OfferFirmware("0.2", "fw-0.2", 1000, MD5_A),
        SetTimer("silence", 300.0, 3),
    ]
    assert s.state == "offered"


def test_fail_pairs_count_once_and_progress_resets_nothing_but_the_count() -> None:
    s = Stepper(PLATFORM, key=KEY)
    s.step(TASK)
    s.step(ReportProgress.downloading("0.2", 30))
    # the C SDK reports -1 then -5 for one cut: one attempt, and it made progress: not counted
    assert s.step(ReportProgress.fail("0.2", -1)) == [
        CancelTimer("silence"),
        SetTimer("retry", 30.0, 3),
        OtaAttemptFailed("0.2", -1, "time_out"),
    ]
    assert s.step(ReportProgress.fail("0.2", -5)) == []
    assert (s.state, s.ctx.attempts, s.ctx.result_code) == ("retrying", 0, -5)
    assert s.advance(30.0) == [
        OfferFirmware("0.2", "fw-0.2", 1000, MD5_A),
        SetTimer("silence", 300.0, 4),
    ]


def test_attempts_without_progress_end_the_task() -> None:
    s = Stepper(PLATFORM, key=KEY)
    s.step(TASK)
    s.step(ReportProgress.fail("0.2", -2, "not found"))
    assert (s.state, s.ctx.attempts) == ("retrying", 1)
    s.advance(30.0)
    s.step(ReportProgress.fail("0.2", -2, "not found"))
    assert (s.state, s.ctx.attempts) == ("retrying", 2)
    s.advance(60.0)
    assert s.step(ReportProgress.fail("0.2", -2, "not found")) == [
        CancelTimer("silence"),
        OtaFinished(False, "0.2", -2, "not found"),
    ]
    assert s.state == "failed"


def test_a_silent_device_times_out() -> None:
    s = Stepper(PLATFORM, key=KEY)
    s.step(TASK)
    s.advance(300.0)
    assert (s.state, s.ctx.result_msg) == ("retrying", "device silent")
    s.advance(30.0)
    s.advance(300.0)
    s.advance(60.0)
    fired = s.advance(300.0)
    assert fired == [OtaFinished(False, "0.2", -1, "device silent")]
    assert s.state == "failed"


def test_deploying_what_the_device_runs_is_done_at_once() -> None:
    s = Stepper(PLATFORM, key=KEY)
    s.step(ReportVersion.of("0.2"))
    assert s.step(TASK) == [OtaFinished(True, "0.2", 0, "already running")]
    assert s.state == "succeeded"


def test_stale_and_malformed_reports_change_nothing() -> None:
    s = Stepper(PLATFORM, key=KEY)
    s.step(TASK)
    assert s.step(ReportProgress.downloading("0.1", 50)) == []  # an older task's progress
    assert s.step(ReportVersion.of("x" * 33)) == [
        Log.warning(
            "ignored report_version 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx': not 1-32 characters"
        )
    ]
    assert (s.state, s.ctx.percent) == ("offered", 0)


def test_the_same_deploy_again_while_under_way_changes_nothing() -> None:
    """A new pool leader re-sends a start still in flight, or an operator deploys twice: no
    second offer, no reset, no timer touched, in every state of an attempt under way."""
    s = Stepper(PLATFORM, key=KEY)
    s.step(ReportVersion.of("0.1"))
    s.step(TASK)
    again = [Log.info("deploy of 0.2 (fw-0.2) again while under way: not offered again")]
    assert s.step(TASK) == again
    assert (s.state, s.ctx.offers) == ("offered", 1)
    s.step(ReportProgress.downloading("0.2", 40))
    assert s.step(TASK) == again
    assert (s.state, s.ctx.percent, s.ctx.offers) == ("downloading", 40, 1)
    s.step(ReportProgress.burning("0.2"))
    assert s.step(TASK) == again
    assert s.state == "burning"
    s.step(ReportProgress.done("0.2"))
    assert s.advance(200.0) == []
    assert s.step(TASK) == again
    assert s.state == "confirming"
    # the silence timer `done` armed still fires 300 s after it, not 300 s after the repeat
    assert s.advance(100.0) == [SetTimer("retry", 30.0, 5)]
    assert (s.state, s.ctx.offers) == ("retrying", 1)


def test_a_different_task_while_under_way_is_offered_again() -> None:
    """Any field that differs (file, size, md5, windows) is a new task: offered, progress reset."""
    s = Stepper(PLATFORM, key=KEY)
    s.step(ReportVersion.of("0.1"))
    s.step(TASK)
    s.step(ReportProgress.downloading("0.2", 40))
    rebuilt = DeployFirmware("0.2", "fw-0.2b", 1200, MD5_B)
    assert s.step(rebuilt) == [
        CancelTimer("silence"),
        OfferFirmware("0.2", "fw-0.2b", 1200, MD5_B),
        SetTimer("silence", 300.0, 3),
    ]
    assert (s.state, s.ctx.percent, s.ctx.offers) == ("offered", 0, 2)
    s.step(ReportProgress.burning("0.2"))
    assert s.step(TASK) == [
        CancelTimer("silence"),
        OfferFirmware("0.2", "fw-0.2", 1000, MD5_A),
        SetTimer("silence", 300.0, 5),
    ]
    assert (s.state, s.ctx.file_id) == ("offered", "fw-0.2")


def test_the_same_deploy_when_no_attempt_is_under_way_acts_as_before() -> None:
    """Retrying: offered now rather than at the retry timer, with a fresh count of attempts; a
    device already on the target: done at once, as `_runs_deployed` decides before anything."""
    s = Stepper(PLATFORM, key=KEY)
    s.step(ReportVersion.of("0.1"))
    s.step(TASK)
    s.step(ReportProgress.fail("0.2", -2, "not found"))
    assert (s.state, s.ctx.attempts) == ("retrying", 1)
    assert s.step(TASK) == [
        CancelTimer("retry"),
        OfferFirmware("0.2", "fw-0.2", 1000, MD5_A),
        SetTimer("silence", 300.0, 3),
    ]
    assert (s.state, s.ctx.attempts) == ("offered", 0)
    s.step(ReportVersion.of("0.2"))
    assert s.state == "succeeded"
    assert s.step(TASK) == [OtaFinished(True, "0.2", 0, "already running")]
    assert s.state == "succeeded"
