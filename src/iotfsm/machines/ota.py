"""OTA firmware update with breakpoint resume (seed 004 §1.4, PROTOCOL.md "OTA").

Device: reports its version after every (re)connect; on an offer it downloads (resuming a partial
download of the very same firmware), reports progress, hands the verified image to the
application's burn step, and reports done and its new version, or fail with Tencent's code.
Platform: one session per device; a task names the target firmware; every report_version is
answered, a device reporting the target has succeeded, any other version gets a fresh offer.
A task stays active until cancelled: a device that reports another version after its success
(`drift`) is offered the target again. Deploying the very task a session runs again while an
attempt is under way changes nothing (a pool's new leader may re-send a start still in flight):
a second offer would restart the device's download.
Failed attempts are retried with backoff, and an attempt counts as failed only when it made no
progress, because real devices on weak links fail often but resume each time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

from ..fsm import (
    ANY_STATE,
    Connected,
    Disconnected,
    Effect,
    Event,
    Log,
    MachineSpec,
    On,
    Publish,
    SetTimer,
    State,
    timer,
)
from .feature import Feature
from .messages import Message, url_repr, wire
from .names import name_problem
from .transfer import (
    BURN_FAILED,
    MD5_MISMATCH,
    TIMEOUT,
    CancelTransfer,
    StartDownload,
    TransferDone,
    TransferFailed,
    TransferProgress,
    TransferStarted,
    percent,
    progress_due,
)
from .windows import Windows, upcoming

MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")
MAX_VERSION_LENGTH = 32
VERSION_REFUSED = BURN_FAILED
"""The fail code for an offer whose version the device refuses (-5, "update failed"): no image
was fetched, so none of the transfer codes fits (docs/PROTOCOL-extensions.md)."""
IMAGE_REFUSED = MD5_MISMATCH
"""The fail code for an image that failed its signature check (-4, "image verification
failed"): like an md5 mismatch, the bytes are not the ones the offer vouches for, the image
is deleted, and the same download would fail again, unlike a failed burn (-5)."""
MAX_BURN_WINDOWS = 16
"""Most windows an offer may name (the platform sends 8: about a week of a daily window)."""
HOLD_REPORT = 120.0
"""While a ready image waits for its burn window the device repeats `downloading 100` this
often, well inside the platform's SILENCE_TIMEOUT, so the wait is not taken for silence."""
RSP_TIMEOUT = 10.0
"""Seconds a device waits for report_version_rsp before reporting again."""
MAX_REPORTS = 3
STALL_TIMEOUT = 60.0
"""Seconds without download progress before the device gives up this attempt (fail -1)."""
DEVICE_RETRY = 10.0
"""After a failed attempt the device reports its version again this much later, so the platform
re-offers and the download resumes from the checkpoint."""
SILENCE_TIMEOUT = 300.0
"""Seconds the platform waits for any word from a device with an active task."""
RETRY_BASE = 30.0
RETRY_MAX = 600.0
MAX_ATTEMPTS = 3
"""Failed attempts without progress before the platform marks the task failed."""


# ---- messages -------------------------------------------------------------------------------


@attrs.frozen
class VersionReport:
    version: str


@attrs.frozen
class ReportVersion(Message):
    """up, QoS 1: `{"type":"report_version","report":{"version":"0.1"}}`."""

    TYPE = "report_version"
    report: VersionReport

    @classmethod
    def of(cls, version: str) -> ReportVersion:
        return cls(VersionReport(version))


@attrs.frozen
class ReportVersionRsp(Message):
    """down: always result 0 (a non-zero answer makes the C SDK ignore every later offer)."""

    TYPE = "report_version_rsp"
    result_code: int = 0
    result_msg: str = "success"
    version: str = ""


@attrs.frozen
class UpdateFirmware(Message):
    """down: the offer. `url` is presigned and long; Explorer's extra fields land in `extra`."""

    TYPE = "update_firmware"
    file_size: int
    md5sum: str
    url: str = attrs.field(repr=url_repr)
    version: str
    sha256: str | None = attrs.field(
        default=None, metadata=wire(name="firmware_sha256", omit_if_none=True)
    )
    """iotfsm's extension (docs/PROTOCOL-extensions.md): the image's sha256, signed below."""
    signature: str | None = attrs.field(
        default=None, repr=False, metadata=wire(name="firmware_signature", omit_if_none=True)
    )
    """iotfsm's extension: base64 Ed25519 signature of the image's manifest. Both fields are
    left out of unsigned offers, which stay exactly Tencent's form; Tencent's SDKs ignore them."""
    burn_windows: tuple[tuple[int, int], ...] | None = attrs.field(
        default=None, metadata=wire(omit_if_none=True)
    )
    """iotfsm's extension: `[[start, end], ...]` in epoch seconds, the only times the device may
    burn this image (a campaign's `burn = "wait"`); absent, it burns when the image is ready."""


@attrs.frozen
class Progress:
    state: str
    percent: int | None = attrs.field(default=None, metadata=wire(text=True, omit_if_none=True))
    result_code: int = attrs.field(default=0, metadata=wire(text=True))
    result_msg: str = ""


@attrs.frozen
class ProgressReport:
    progress: Progress
    version: str


@attrs.frozen
class ReportProgress(Message):
    """up: numbers as strings (`"percent":"10"`); `downloading` with percent at QoS 0, the other
    states without percent at QoS 1."""

    TYPE = "report_progress"
    report: ProgressReport

    @property
    def state(self) -> str:
        return self.report.progress.state

    @property
    def version(self) -> str:
        return self.report.version

    @classmethod
    def downloading(cls, version: str, pct: int) -> ReportProgress:
        return cls(ProgressReport(Progress("downloading", pct), version))

    @classmethod
    def burning(cls, version: str) -> ReportProgress:
        return cls(ProgressReport(Progress("burning"), version))

    @classmethod
    def done(cls, version: str) -> ReportProgress:
        return cls(ProgressReport(Progress("done"), version))

    @classmethod
    def fail(cls, version: str, code: int, message: str = "time_out") -> ReportProgress:
        return cls(ProgressReport(Progress("fail", None, code, message), version))


# ---- device effects and events ----------------------------------------------------------------


@attrs.frozen
class BurnFirmware(Effect):
    """The application installs the verified image at `path`; it answers with `BurnDone`."""

    path: str
    version: str


@attrs.frozen
class BurnDone(Event):
    ok: bool
    reason: str = ""


@attrs.frozen
class VerifyFirmware(Effect):
    """Check the downloaded image's signature before anything installs it (the device has the
    platform's public key); answered with `FirmwareVerified` or `FirmwareRejected`."""

    path: str
    version: str
    sha256: str
    signature: str = attrs.field(repr=False)


@attrs.frozen
class FirmwareVerified(Event):
    path: str


@attrs.frozen
class FirmwareRejected(Event):
    """The image is not one the platform signed for this device; it was deleted."""

    reason: str


@attrs.frozen
class FirmwareAdopted(Effect):
    """The device now runs `version`: the application should remember it across restarts."""

    version: str


# ---- device ---------------------------------------------------------------------------------


@attrs.define
class DeviceContext:
    version: str = "0.0.0"
    """The running firmware version, reported after every (re)connect."""
    target: str = ""
    size: int = 0
    md5: str = ""
    transfer: int = 0
    """Number of the current transfer; outcomes of older ones are ignored."""
    reports: int = 0
    last_progress_at: float = float("-inf")
    fetched: int = 0
    """Percent of the current download on disk so far."""
    told: int = 0
    """Percent last reported to the platform."""
    signed_only: bool = False
    """The device has the platform's public key: every image is verified before burning."""
    sha256: str = ""
    signature: str = ""
    """The current offer's signature fields ("" when it had none)."""
    burn_windows: tuple[tuple[int, int], ...] = ()
    """The current offer's burn windows (none: burn when ready)."""
    image: str = ""
    """The ready image's path while it waits for a burn window."""


def _report(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    ctx.reports = 1
    return (Publish(ReportVersion.of(ctx.version), 1), SetTimer("rsp", RSP_TIMEOUT))


def _report_again(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    ctx.reports += 1
    return (Publish(ReportVersion.of(ctx.version), 1), SetTimer("rsp", RSP_TIMEOUT * ctx.reports))


def _may_report_again(ctx: DeviceContext, event: Event) -> bool:
    return ctx.reports < MAX_REPORTS


def _report_busy(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    return (Publish(ReportVersion.of(ctx.version), 1),)


def _rsp_seen(ctx: DeviceContext, event: ReportVersionRsp, now: float) -> Iterable[Effect]:
    if event.result_code != 0:
        return (Log.warning(f"report_version_rsp result {event.result_code}: {event.result_msg}"),)
    return ()


def version_problem(version: str) -> str | None:
    """Why an offered version cannot be taken, or None: 1-32 characters and the rule for names,
    because it becomes a file name on the device and a line of the signed manifest."""
    if not 1 <= len(version) <= MAX_VERSION_LENGTH:
        return f"it has {len(version)} characters, not 1-{MAX_VERSION_LENGTH}"
    return name_problem(version)


def _offer_problem(event: UpdateFirmware) -> str:
    problem = version_problem(event.version)
    if problem is not None:
        return f"version {event.version[:40]!r} is refused: {problem}"
    if event.file_size <= 0:
        return f"file_size {event.file_size} must be positive"
    if not MD5_HEX.fullmatch(event.md5sum):
        return f"md5sum {event.md5sum[:40]!r} is not 32 hex digits"
    if not event.url:
        return "url is empty"
    windows = event.burn_windows
    if windows is not None and not (
        0 < len(windows) <= MAX_BURN_WINDOWS and all(end > start for start, end in windows)
    ):
        return f"burn_windows must be 1-{MAX_BURN_WINDOWS} [start, end] pairs with end > start"
    return ""


def _valid_offer(ctx: DeviceContext, event: UpdateFirmware) -> bool:
    return not _offer_problem(event)


def _refuse_offer(ctx: DeviceContext, event: UpdateFirmware, now: float) -> Iterable[Effect]:
    """A refused version is also reported as a fail, so the platform's task records why it
    cannot progress (the version is echoed cut to 32 characters; nothing else of it is used)."""
    effects: list[Effect] = [Log.warning(f"refused update_firmware: {_offer_problem(event)}")]
    if version_problem(event.version) is not None:
        report = ReportProgress.fail(
            event.version[:MAX_VERSION_LENGTH], VERSION_REFUSED, "version refused"
        )
        effects.append(Publish(report, 1))
    return effects


def _offers_running(ctx: DeviceContext, event: UpdateFirmware) -> bool:
    return event.version == ctx.version and not _offer_problem(event)


def _same_download(ctx: DeviceContext, event: UpdateFirmware) -> bool:
    """The same offer again (with the same signature fields: a different signature restarts
    the transfer, which resumes from the checkpoint, so the latest offer's signature counts)."""
    offered = (event.version, event.file_size, event.md5sum.lower())
    signed = (event.sha256 or "", event.signature or "")
    same = offered == (ctx.target, ctx.size, ctx.md5) and signed == (ctx.sha256, ctx.signature)
    return same and (event.burn_windows or ()) == ctx.burn_windows


def _start(ctx: DeviceContext, event: UpdateFirmware, now: float) -> Iterable[Effect]:
    effects: list[Effect] = []
    if ctx.target:
        effects.append(CancelTransfer(ctx.transfer))
    ctx.target, ctx.size, ctx.md5 = event.version, event.file_size, event.md5sum.lower()
    ctx.sha256, ctx.signature = event.sha256 or "", event.signature or ""
    ctx.burn_windows = event.burn_windows or ()
    ctx.image = ""
    ctx.transfer += 1
    ctx.last_progress_at = float("-inf")
    ctx.fetched = ctx.told = 0
    effects.append(
        StartDownload(ctx.transfer, event.url, ctx.size, ctx.md5, ctx.target, "firmware")
    )
    effects.append(SetTimer("stall", STALL_TIMEOUT))
    return effects


def _current(ctx: DeviceContext, event: TransferStarted) -> bool:
    return event.transfer == ctx.transfer


def _started(ctx: DeviceContext, event: TransferStarted, now: float) -> Iterable[Effect]:
    ctx.last_progress_at = now
    pct = ctx.fetched = ctx.told = percent(event.offset, ctx.size)
    return (
        Publish(ReportProgress.downloading(ctx.target, pct), 0),
        SetTimer("stall", STALL_TIMEOUT),
    )


def _current_progress(ctx: DeviceContext, event: TransferProgress) -> bool:
    return event.transfer == ctx.transfer


def _progress(ctx: DeviceContext, event: TransferProgress, now: float) -> Iterable[Effect]:
    """Reports at most once a second (and 100 % always); the stall timer is re-armed with each
    report, not with each chunk: a 60 s timer moved a second late changes nothing, and re-arming
    it per chunk cost half of every progress step (bench/RESULTS.md, P2)."""
    pct = ctx.fetched = percent(event.done, ctx.size)
    if not progress_due(pct, ctx.last_progress_at, now):
        return ()
    ctx.last_progress_at = now
    ctx.told = pct
    return (
        Publish(ReportProgress.downloading(ctx.target, pct), 0),
        SetTimer("stall", STALL_TIMEOUT),
    )


def _current_done(ctx: DeviceContext, event: TransferDone) -> bool:
    return event.transfer == ctx.transfer


def _current_done_signed_only(ctx: DeviceContext, event: TransferDone) -> bool:
    return event.transfer == ctx.transfer and ctx.signed_only


def _verify(ctx: DeviceContext, event: TransferDone, now: float) -> Iterable[Effect]:
    return (VerifyFirmware(event.path, ctx.target, ctx.sha256, ctx.signature),)


def _burn(
    ctx: DeviceContext, event: TransferDone | FirmwareVerified, now: float
) -> Iterable[Effect]:
    return (Publish(ReportProgress.burning(ctx.target), 1), BurnFirmware(event.path, ctx.target))


def _burn_now(ctx: DeviceContext, event: TransferDone | FirmwareVerified) -> bool:
    return not ctx.burn_windows


def _done_burn_now(ctx: DeviceContext, event: TransferDone) -> bool:
    return _current_done(ctx, event) and _burn_now(ctx, event)


def _look_at_windows(ctx: DeviceContext, now: float) -> list[Effect]:
    """Inside a window: burn at once (zero-delay `burn`); a window ahead: look again at its
    opening, or sooner to repeat the 100 % report; none left: give the attempt up
    (zero-delay `window_gone`). Timers decide because guards do not see the clock."""
    if any(start <= now < end for start, end in ctx.burn_windows):
        return [SetTimer("burn", 0.0)]
    later = [start for start, _ in ctx.burn_windows if start > now]
    if not later:
        return [SetTimer("window_gone", 0.0)]
    return [SetTimer("window", min(min(later) - now, HOLD_REPORT))]


def _hold(
    ctx: DeviceContext, event: TransferDone | FirmwareVerified, now: float
) -> Iterable[Effect]:
    ctx.image = event.path
    return _look_at_windows(ctx, now)


def _look_again(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    return [Publish(ReportProgress.downloading(ctx.target, 100), 0), *_look_at_windows(ctx, now)]


def _burn_held(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    path, ctx.image = ctx.image, ""
    return (Publish(ReportProgress.burning(ctx.target), 1), BurnFirmware(path, ctx.target))


def _window_gone(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    """The last window closed before the image was ready (or while the device was off): fail
    the attempt with -1 and report again later, so the platform re-offers with fresh windows."""
    target, ctx.target, ctx.image = ctx.target, "", ""
    return (
        Publish(ReportProgress.fail(target, TIMEOUT, "no burn window left"), 1),
        Log.warning(f"firmware {target} is ready but its last burn window has passed"),
        SetTimer("retry", DEVICE_RETRY),
    )


def _rejected(ctx: DeviceContext, event: FirmwareRejected, now: float) -> Iterable[Effect]:
    """No retry timer: fetching the same image again cannot change its signature. The platform
    re-offers on its own schedule (a fixed offer would then be fetched and installed)."""
    target, ctx.target = ctx.target, ""
    return (
        Publish(ReportProgress.fail(target, IMAGE_REFUSED, "signature verification failed"), 1),
        Log.warning(f"refused firmware {target} before burning, image deleted: {event.reason}"),
    )


def _current_failure(ctx: DeviceContext, event: TransferFailed) -> bool:
    return event.transfer == ctx.transfer


def _how_far(ctx: DeviceContext) -> list[Effect]:
    """Before a fail: the progress made since the last report, which the once-a-second cadence
    held back. The platform counts an attempt as failed only when it made no progress, and a
    link cut within a second of the last report would otherwise look like one that did not."""
    if ctx.fetched <= ctx.told:
        return []
    ctx.told = ctx.fetched
    return [Publish(ReportProgress.downloading(ctx.target, ctx.fetched), 0)]


def _download_failed(ctx: DeviceContext, event: TransferFailed, now: float) -> Iterable[Effect]:
    progress = _how_far(ctx)
    target, ctx.target = ctx.target, ""
    report = ReportProgress.fail(target, event.code, "time_out")
    return (
        *progress,
        Publish(report, 1),
        Log.warning(f"download of {target} failed ({event.code}): {event.reason}"),
        SetTimer("retry", DEVICE_RETRY),
    )


def _stalled(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    progress = _how_far(ctx)
    target, ctx.target = ctx.target, ""
    return (
        CancelTransfer(ctx.transfer),
        *progress,
        Publish(ReportProgress.fail(target, TIMEOUT), 1),
        SetTimer("retry", DEVICE_RETRY),
    )


def _burned(ctx: DeviceContext, event: BurnDone) -> bool:
    return event.ok


def _adopt(ctx: DeviceContext, event: BurnDone, now: float) -> Iterable[Effect]:
    ctx.version, ctx.target = ctx.target, ""
    return (
        Publish(ReportProgress.done(ctx.version), 1),
        FirmwareAdopted(ctx.version),
        Publish(ReportVersion.of(ctx.version), 1),
    )


def _burn_failed(ctx: DeviceContext, event: BurnDone, now: float) -> Iterable[Effect]:
    target, ctx.target = ctx.target, ""
    return (
        Publish(ReportProgress.fail(target, BURN_FAILED, event.reason or "burn failed"), 1),
        Log.warning(f"burning {target} failed: {event.reason}"),
    )


def _busy_burning(ctx: DeviceContext, event: UpdateFirmware, now: float) -> Iterable[Effect]:
    return (Log.info(f"offer of {event.version[:40]!r} ignored while installing {ctx.target}"),)


IDLE = ("offline", "reporting", "idle")
BUSY = ("downloading", "verifying", "holding", "burning")

DEVICE = MachineSpec(
    name="ota.device",
    doc="Report the version, download offers with breakpoint resume, burn, report the outcome.",
    states=[
        State("offline", initial=True, doc="not connected"),
        State("reporting", doc="report_version sent, waiting for its rsp"),
        State("idle", doc="waiting for an offer"),
        State("downloading", doc="the firmware streams to the state directory"),
        State("verifying", doc="the image's signature is checked with the platform's key"),
        State("holding", doc="the image is ready; burning waits for a window the offer named"),
        State("burning", doc="the application installs the verified image"),
    ],
    transitions=[
        On(Connected, IDLE, "reporting", action=_report),
        On(Connected, BUSY, None, action=_report_busy),
        On(Disconnected, ("reporting", "idle"), "offline"),
        On(Disconnected, ("offline", *BUSY), None),
        On(ReportVersionRsp, "reporting", "idle", action=_rsp_seen),
        On(ReportVersionRsp, ("offline", "idle", *BUSY), None, action=_rsp_seen),
        On(timer("rsp"), "reporting", "reporting", guard=_may_report_again, action=_report_again),
        On(timer("rsp"), "reporting", "idle"),
        On(UpdateFirmware, IDLE, "idle", guard=_offers_running, action=_report_busy),
        On(UpdateFirmware, IDLE, "downloading", guard=_valid_offer, action=_start),
        On(UpdateFirmware, ("downloading", "holding"), None, guard=_same_download),
        On(
            UpdateFirmware,
            ("downloading", "holding"),
            "downloading",
            guard=_valid_offer,
            action=_start,
        ),
        On(
            UpdateFirmware,
            ("offline", "reporting", "idle", "downloading", "holding"),
            None,
            action=_refuse_offer,
        ),
        On(UpdateFirmware, ("verifying", "burning"), None, action=_busy_burning),
        On(TransferStarted, "downloading", None, guard=_current, action=_started),
        On(TransferProgress, "downloading", None, guard=_current_progress, action=_progress),
        On(
            TransferDone,
            "downloading",
            "verifying",
            guard=_current_done_signed_only,
            action=_verify,
        ),
        On(TransferDone, "downloading", "burning", guard=_done_burn_now, action=_burn),
        On(TransferDone, "downloading", "holding", guard=_current_done, action=_hold),
        On(FirmwareVerified, "verifying", "burning", guard=_burn_now, action=_burn),
        On(FirmwareVerified, "verifying", "holding", action=_hold),
        On(timer("window"), "holding", None, action=_look_again),
        On(timer("burn"), "holding", "burning", action=_burn_held),
        On(timer("window_gone"), "holding", "idle", action=_window_gone),
        On(FirmwareRejected, "verifying", "idle", action=_rejected),
        On(TransferFailed, "downloading", "idle", guard=_current_failure, action=_download_failed),
        On(timer("stall"), "downloading", "idle", action=_stalled),
        On(timer("retry"), "idle", "reporting", action=_report),
        On(BurnDone, "burning", "idle", guard=_burned, action=_adopt),
        On(BurnDone, "burning", "idle", action=_burn_failed),
    ],
    context=lambda key: DeviceContext(),
    context_type=DeviceContext,
    inbound=[ReportVersionRsp, UpdateFirmware],
)


# ---- platform commands and effects ----------------------------------------------------------


@attrs.frozen
class DeployFirmware(Event):
    """Platform command: this device should run `version`, served as `file_id`; `burn` names
    the windows it may burn in (none: whenever the image is ready)."""

    version: str
    file_id: str
    size: int
    md5: str
    burn: Windows = attrs.field(factory=Windows)


@attrs.frozen
class CancelFirmware(Event):
    """Platform command: drop this device's task."""


@attrs.frozen
class OfferFirmware(Effect):
    """Send `update_firmware` with a freshly signed URL for `file_id` (signing needs a secret
    and the clock, so the runtime does it, not the machine). `burn`: the task's burn windows,
    turned into the offer's `burn_windows` from the clock at sending (`burn_windows_at`)."""

    version: str
    file_id: str
    size: int
    md5: str
    burn: Windows = attrs.field(factory=Windows)


@attrs.frozen
class OtaFinished(Effect):
    """The task ended: `ok` after the device reported the target version, else it gave up."""

    ok: bool
    version: str
    code: int
    message: str


@attrs.frozen
class OtaAttemptFailed(Effect):
    """One attempt failed and another is due: whoever rolls out a fleet (a campaign) may judge
    by the code at once, since a bad image (-5 burn failed) fails the same way every time."""

    version: str
    code: int
    message: str


def burn_windows_at(burn: Windows, now: float) -> tuple[tuple[int, int], ...] | None:
    """The offer's `burn_windows` for a task's windows at `now`: the open and coming ones (None
    when the task has none). Computed per offer, so a re-offer days later names fresh ones."""
    if not burn:
        return None
    return upcoming(burn, now) or None


# ---- platform -------------------------------------------------------------------------------


@attrs.define
class PlatformContext:
    reported: str = ""
    """The version the device last reported."""
    target: str = ""
    file_id: str = ""
    size: int = 0
    md5: str = ""
    percent: int = 0
    result_code: int = 0
    result_msg: str = ""
    attempts: int = 0
    """Failed attempts that made no progress; MAX_ATTEMPTS of them end the task."""
    progressed: bool = False
    """The device reported progress since the last offer."""
    offers: int = 0
    drift: str = ""
    """The version a device reported after it had reached the target (rolled back, reflashed
    by hand): it is offered the target again; cleared when it reports the target once more."""
    burn: Windows = attrs.field(factory=Windows)
    """The task's burn windows (a campaign's `burn = "wait"`); none: burn when ready."""


def _valid_version(ctx: PlatformContext, event: ReportVersion) -> bool:
    return 1 <= len(event.report.version) <= 32


def _reports_target(ctx: PlatformContext, event: ReportVersion) -> bool:
    return event.report.version == ctx.target


def _rsp(ctx: PlatformContext, event: ReportVersion) -> Publish:
    ctx.reported = event.report.version
    return Publish(ReportVersionRsp(0, "success", event.report.version), 0)


def _answer(ctx: PlatformContext, event: ReportVersion, now: float) -> Iterable[Effect]:
    return (_rsp(ctx, event),)


def _offer(ctx: PlatformContext) -> list[Effect]:
    ctx.offers += 1
    ctx.progressed = False
    return [
        OfferFirmware(ctx.target, ctx.file_id, ctx.size, ctx.md5, ctx.burn),
        SetTimer("silence", SILENCE_TIMEOUT),
    ]


def _answer_and_offer(ctx: PlatformContext, event: ReportVersion, now: float) -> Iterable[Effect]:
    return [_rsp(ctx, event), *_offer(ctx)]


def _succeeded(ctx: PlatformContext, event: ReportVersion, now: float) -> Iterable[Effect]:
    ctx.percent, ctx.result_code, ctx.result_msg = 100, 0, "success"
    ctx.drift = ""
    return (_rsp(ctx, event), OtaFinished(True, ctx.target, 0, "success"))


def _left_target(ctx: PlatformContext, event: ReportVersion) -> bool:
    return bool(ctx.target) and _valid_version(ctx, event) and not _reports_target(ctx, event)


def _drifted(ctx: PlatformContext, event: ReportVersion, now: float) -> Iterable[Effect]:
    """A task stays active after success until it is cancelled: a device that later runs another
    version (a rollback, a manual flash) is what server code wants to hear about and repair,
    not a success to keep showing."""
    ctx.drift = event.report.version
    ctx.percent, ctx.result_code, ctx.result_msg, ctx.attempts = 0, 0, "", 0
    text = (
        f"reports {ctx.drift} after it reached its target {ctx.target} (flashed back, or a late"
        f" report): offering {ctx.target} again"
    )
    return [_rsp(ctx, event), Log.warning(text), *_offer(ctx)]


def _drift_undone(ctx: PlatformContext, event: ReportVersion) -> bool:
    """The device answers the re-offer with the target version at once, with no download: it
    never left the target (the drift was a report delayed past the success) or went back by
    itself. The success it had stands; telling server code again would count one update twice."""
    return bool(ctx.drift) and _reports_target(ctx, event) and not ctx.progressed


def _back_on_target(ctx: PlatformContext, event: ReportVersion, now: float) -> Iterable[Effect]:
    ctx.drift = ""
    ctx.percent, ctx.result_code, ctx.result_msg = 100, 0, "success"
    return (_rsp(ctx, event), Log.info(f"reports its target {ctx.target} again: no drift"))


def _refuse_version(ctx: PlatformContext, event: ReportVersion, now: float) -> Iterable[Effect]:
    return (
        Log.warning(f"ignored report_version {event.report.version[:40]!r}: not 1-32 characters"),
    )


def _runs_deployed(ctx: PlatformContext, event: DeployFirmware) -> bool:
    return event.version == ctx.reported


def _set_task(ctx: PlatformContext, event: DeployFirmware) -> None:
    ctx.target, ctx.file_id, ctx.size, ctx.md5 = event.version, event.file_id, event.size, event.md5
    ctx.burn = event.burn
    ctx.percent, ctx.result_code, ctx.result_msg, ctx.attempts = 0, 0, "", 0


def _deploy_done(ctx: PlatformContext, event: DeployFirmware, now: float) -> Iterable[Effect]:
    _set_task(ctx, event)
    ctx.percent, ctx.result_msg = 100, "already running"
    return (OtaFinished(True, ctx.target, 0, "already running"),)


def _same_task(ctx: PlatformContext, event: DeployFirmware) -> bool:
    """The task the session already runs, again: a new pool leader re-sending a campaign start
    that was still in flight, or an operator deploying twice. Every field counts, burn windows
    included: a different image or window set under the same version is a new task."""
    task = (ctx.target, ctx.file_id, ctx.size, ctx.md5, ctx.burn)
    return bool(ctx.target) and task == (
        event.version,
        event.file_id,
        event.size,
        event.md5,
        event.burn,
    )


def _deploy_again(ctx: PlatformContext, event: DeployFirmware, now: float) -> Iterable[Effect]:
    """While an attempt is under way the repeat changes nothing: a second offer would restart a
    download in progress (the device takes an offer as a new transfer) and reset its percent,
    and one device would count two offers. Retrying, failed and succeeded sessions still take
    it as today (a re-offer now, a fresh count, a drift repaired)."""
    text = f"deploy of {ctx.target} ({ctx.file_id}) again while under way: not offered again"
    return (Log.info(text),)


def _deploy(ctx: PlatformContext, event: DeployFirmware, now: float) -> Iterable[Effect]:
    _set_task(ctx, event)
    return _offer(ctx)


def _cancel(ctx: PlatformContext, event: CancelFirmware, now: float) -> Iterable[Effect]:
    ctx.target = ""
    return ()


def _reports(ctx: PlatformContext, event: ReportProgress, state: str) -> bool:
    return bool(ctx.target) and event.state == state and event.version == ctx.target


def _is_downloading(ctx: PlatformContext, event: ReportProgress) -> bool:
    return _reports(ctx, event, "downloading")


def _is_burning(ctx: PlatformContext, event: ReportProgress) -> bool:
    return _reports(ctx, event, "burning")


def _is_done(ctx: PlatformContext, event: ReportProgress) -> bool:
    return _reports(ctx, event, "done")


def _is_fail(ctx: PlatformContext, event: ReportProgress) -> bool:
    return _reports(ctx, event, "fail")


def _may_retry(ctx: PlatformContext, event: ReportProgress) -> bool:
    return _is_fail(ctx, event) and _attempts_after_failure(ctx) < MAX_ATTEMPTS


def _attempts_after_failure(ctx: PlatformContext) -> int:
    return ctx.attempts if ctx.progressed else ctx.attempts + 1


def _track(ctx: PlatformContext, event: ReportProgress, now: float) -> Iterable[Effect]:
    """Progress counts only when the percent rises (or the device moves on to burning or done):
    a resumed attempt reports its old percent at once, before it has fetched a byte."""
    reported = event.report.progress.percent
    if reported is None:
        ctx.progressed = True
    elif max(0, min(100, reported)) > ctx.percent:
        ctx.progressed = True
        ctx.percent = max(0, min(100, reported))
    return (SetTimer("silence", SILENCE_TIMEOUT),)


def _record_failure(ctx: PlatformContext, code: int, message: str) -> None:
    ctx.attempts = _attempts_after_failure(ctx)
    ctx.progressed = False
    ctx.result_code, ctx.result_msg = code, message


def _retry_later(ctx: PlatformContext, event: ReportProgress, now: float) -> Iterable[Effect]:
    _record_failure(ctx, event.report.progress.result_code, event.report.progress.result_msg)
    return (
        SetTimer("retry", min(RETRY_MAX, RETRY_BASE * 2 ** max(0, ctx.attempts - 1))),
        OtaAttemptFailed(ctx.target, ctx.result_code, ctx.result_msg),
    )


def _give_up(ctx: PlatformContext, event: ReportProgress, now: float) -> Iterable[Effect]:
    _record_failure(ctx, event.report.progress.result_code, event.report.progress.result_msg)
    return (OtaFinished(False, ctx.target, ctx.result_code, ctx.result_msg),)


def _note(ctx: PlatformContext, event: ReportProgress, now: float) -> Iterable[Effect]:
    """Late, repeated or stale reports (a second fail, an old task's progress) change nothing."""
    if event.state == "fail" and event.version == ctx.target:
        ctx.result_code, ctx.result_msg = (
            event.report.progress.result_code,
            event.report.progress.result_msg,
        )
    return ()


def _reoffer(ctx: PlatformContext, event: Event, now: float) -> Iterable[Effect]:
    return _offer(ctx)


def _silence_may_retry(ctx: PlatformContext, event: Event) -> bool:
    return _attempts_after_failure(ctx) < MAX_ATTEMPTS


def _silence_retry(ctx: PlatformContext, event: Event, now: float) -> Iterable[Effect]:
    _record_failure(ctx, TIMEOUT, "device silent")
    return (SetTimer("retry", min(RETRY_MAX, RETRY_BASE * 2 ** max(0, ctx.attempts - 1))),)


def _silence_give_up(ctx: PlatformContext, event: Event, now: float) -> Iterable[Effect]:
    _record_failure(ctx, TIMEOUT, "device silent")
    return (OtaFinished(False, ctx.target, TIMEOUT, "device silent"),)


ACTIVE = ("offered", "downloading", "burning", "confirming", "retrying")
WAITING = ("offered", "downloading", "burning", "confirming")

PLATFORM = MachineSpec(
    name="ota.platform",
    doc="One per device: answer every report, offer the task's firmware, follow it to the end.",
    states=[
        State("idle", initial=True, doc="no task"),
        State("offered", doc="update_firmware sent; waiting for progress"),
        State("downloading", doc="the device reports download progress"),
        State("burning", doc="the device installs the image"),
        State("confirming", doc="the device said done; success needs its new version"),
        State("retrying", doc="an attempt failed; a re-offer is due (or comes on its next report)"),
        State("succeeded", doc="the device reported the target version (a later other: re-offer)"),
        State("failed", doc="too many attempts without progress, or the device went silent"),
    ],
    transitions=[
        On(ReportVersion, "offered", "succeeded", guard=_drift_undone, action=_back_on_target),
        On(ReportVersion, ACTIVE, "succeeded", guard=_reports_target, action=_succeeded),
        On(ReportVersion, ACTIVE, "offered", guard=_valid_version, action=_answer_and_offer),
        On(ReportVersion, "succeeded", "offered", guard=_left_target, action=_drifted),
        On(
            ReportVersion,
            ("idle", "succeeded", "failed"),
            None,
            guard=_valid_version,
            action=_answer,
        ),
        On(ReportVersion, ANY_STATE, None, action=_refuse_version),
        On(DeployFirmware, ANY_STATE, "succeeded", guard=_runs_deployed, action=_deploy_done),
        On(DeployFirmware, WAITING, None, guard=_same_task, action=_deploy_again),
        On(DeployFirmware, ANY_STATE, "offered", action=_deploy),
        On(CancelFirmware, ANY_STATE, "idle", action=_cancel),
        On(
            ReportProgress,
            ("offered", "downloading", "retrying"),
            "downloading",
            guard=_is_downloading,
            action=_track,
        ),
        On(
            ReportProgress,
            ("offered", "downloading", "retrying"),
            "burning",
            guard=_is_burning,
            action=_track,
        ),
        On(ReportProgress, (*WAITING, "retrying"), "confirming", guard=_is_done, action=_track),
        On(ReportProgress, WAITING, "retrying", guard=_may_retry, action=_retry_later),
        On(ReportProgress, WAITING, "failed", guard=_is_fail, action=_give_up),
        On(ReportProgress, ANY_STATE, None, action=_note),
        On(timer("retry"), "retrying", "offered", action=_reoffer),
        On(timer("silence"), WAITING, "retrying", guard=_silence_may_retry, action=_silence_retry),
        On(timer("silence"), WAITING, "failed", action=_silence_give_up),
    ],
    context=lambda key: PlatformContext(),
    context_type=PlatformContext,
    inbound=[ReportVersion, ReportProgress],
)


FEATURE = Feature(
    name="ota",
    up_topic="$ota/report/{product}/{device}",
    down_topic="$ota/update/{product}/{device}",
    up=[ReportVersion, ReportProgress],
    down=[ReportVersionRsp, UpdateFirmware],
    device=DEVICE,
    platform=PLATFORM,
    doc=__doc__ or "",
)
