"""Resources (seeds 000-002): devices upload files to the platform, the platform delivers files.

Upload and download are two features on one topic pair (`$resource/up|down/service/...`), told
apart by message type, so each has a small machine per role and both can run at once. Numbers
are ints on this wire (`"percent":89`), unlike OTA. Names come from the other side: a name that
could leave its folder is refused with a fail report, never written to disk.

A real device (Tencent's C SDK) aborts a transfer on a non-zero `*_progress_rsp`, and uploads the
whole file again when its final report goes unanswered: the platform answers every report with
0 and treats uploads as idempotent by (device, name, md5).
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
    NOT_FOUND,
    TIMEOUT,
    CancelTransfer,
    StartDownload,
    StartUpload,
    TransferDone,
    TransferFailed,
    TransferProgress,
    TransferStarted,
    percent,
    progress_due,
)

MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")
RSP_TIMEOUT = 10.0
MAX_ASKS = 3
FINAL_TIMEOUT = 5.0
"""The C SDK waits 5 s for the answer to its final report."""
RETRY_BASE = 5.0
MAX_RETRIES = 3
"""Download attempts cut by the network (-1) that the device resumes by itself."""
SILENCE_TIMEOUT = 300.0
OFFER_TIMEOUT = 15.0
"""Seconds the platform waits for the first report on a pushed task before pushing it again: a
push or the device's own ask may have been lost (say, while the platform restarted)."""
MAX_PUSHES = 5
UPLOAD_REFUSED = -6
"""`create_upload_task_rsp.result_code` when the platform will not take an upload (invalid,
over its maximum size, no room on its disk). Not a Tencent code: Tencent documents only the
granting answer (docs/PROTOCOL-notes.md, "Refused upload grants")."""

UP_TOPIC = "$resource/up/service/{product}/{device}"
DOWN_TOPIC = "$resource/down/service/{product}/{device}"


# ---- messages -------------------------------------------------------------------------------


@attrs.frozen
class ResourceProgress:
    state: str
    percent: int | None = attrs.field(default=None, metadata=wire(omit_if_none=True))
    result_code: int = 0
    result_msg: str = ""


@attrs.frozen
class CreateUploadTask(Message):
    TYPE = "create_upload_task"
    size: int
    name: str
    md5sum: str


@attrs.frozen
class CreateUploadTaskRsp(Message):
    """The grant: a PUT URL. A refusal echoes the task with `url` empty and a non-zero
    `result_code` (fields a granting answer leaves out, as Tencent's does)."""

    TYPE = "create_upload_task_rsp"
    size: int
    name: str
    md5sum: str
    url: str = attrs.field(repr=url_repr)
    result_code: int | None = attrs.field(default=None, metadata=wire(omit_if_none=True))
    result_msg: str | None = attrs.field(default=None, metadata=wire(omit_if_none=True))


@attrs.frozen
class ReportUploadProgress(Message):
    TYPE = "report_upload_progress"
    name: str
    progress: ResourceProgress


@attrs.frozen
class ReportUploadProgressRsp(Message):
    TYPE = "report_upload_progress_rsp"
    result_code: int = 0
    result_msg: str = "ok"


@attrs.frozen
class GetDownloadTask(Message):
    TYPE = "get_download_task"


@attrs.frozen
class GetDownloadTaskRsp(Message):
    TYPE = "get_download_task_rsp"
    size: int
    name: str
    md5sum: str
    url: str = attrs.field(repr=url_repr)


@attrs.frozen
class DownloadTask(Message):
    """The platform pushes a new task with the same fields as `get_download_task_rsp`."""

    TYPE = "download"
    size: int
    name: str
    md5sum: str
    url: str = attrs.field(repr=url_repr)


@attrs.frozen
class ReportDownloadProgress(Message):
    TYPE = "report_download_progress"
    name: str
    progress: ResourceProgress


@attrs.frozen
class ReportDownloadProgressRsp(Message):
    TYPE = "report_download_progress_rsp"
    result_code: int = 0
    result_msg: str = "ok"


def _progress(state: str, pct: int | None = None, code: int = 0, msg: str = "") -> ResourceProgress:
    return ResourceProgress(state, pct, code, msg)


def problem_with(name: str, size: int, md5: str, url: str | None = None) -> str:
    """Why a task cannot be accepted ("" when it can)."""
    problem = name_problem(name)
    if problem is not None:
        return f"name {name[:80]!r} refused: {problem}"
    if size <= 0:
        return f"size {size} must be positive"
    if not MD5_HEX.fullmatch(md5):
        return f"md5sum {md5[:40]!r} is not 32 hex digits"
    if url is not None and not url:
        return "url is empty"
    return ""


# ---- device upload --------------------------------------------------------------------------


@attrs.frozen
class Upload(Event):
    """Application command: upload the file at `path` (size and md5 measured by the caller)."""

    name: str
    path: str
    size: int
    md5: str


@attrs.frozen
class UploadFinished(Effect):
    """For the application: the upload of `name` ended, `ok` or with Tencent's `code`."""

    name: str
    ok: bool
    code: int
    message: str


@attrs.define
class UploadJob:
    name: str
    path: str
    size: int
    md5: str


@attrs.define
class UploadDeviceContext:
    queue: list[UploadJob] = attrs.Factory(list)
    current: UploadJob | None = None
    transfer: int = 0
    tries: int = 0
    """Create asks, or final reports, sent for the current job."""
    final: ResourceProgress | None = None
    """The final report of the current job, kept to send again when unanswered."""
    last_progress_at: float = float("-inf")


def _valid_upload(ctx: UploadDeviceContext, event: Upload) -> bool:
    return not problem_with(event.name, event.size, event.md5)


def _refuse_upload(ctx: UploadDeviceContext, event: Upload, now: float) -> Iterable[Effect]:
    why = problem_with(event.name, event.size, event.md5)
    return (UploadFinished(event.name, False, TIMEOUT, why), Log.warning(f"upload refused: {why}"))


def _enqueue_upload(ctx: UploadDeviceContext, event: Upload, now: float) -> Iterable[Effect]:
    ctx.queue.append(UploadJob(event.name, event.path, event.size, event.md5))
    return ()


def _create(ctx: UploadDeviceContext) -> list[Effect]:
    job = ctx.current
    assert job is not None
    ctx.tries += 1
    return [Publish(CreateUploadTask(job.size, job.name, job.md5), 1), SetTimer("rsp", RSP_TIMEOUT)]


def _create_next(ctx: UploadDeviceContext, event: Event, now: float) -> Iterable[Effect]:
    ctx.current, ctx.tries, ctx.final = ctx.queue.pop(0), 0, None
    return _create(ctx)


def _enqueue_and_create(ctx: UploadDeviceContext, event: Upload, now: float) -> Iterable[Effect]:
    _enqueue_upload(ctx, event, now)
    return _create_next(ctx, event, now)


def _has_queue(ctx: UploadDeviceContext, event: Event) -> bool:
    return bool(ctx.queue)


def _ask_again(ctx: UploadDeviceContext, event: Event, now: float) -> Iterable[Effect]:
    return _create(ctx)


def _may_ask_again(ctx: UploadDeviceContext, event: Event) -> bool:
    return ctx.tries < MAX_ASKS


def _requeue(ctx: UploadDeviceContext, event: Event, now: float) -> Iterable[Effect]:
    """Offline before the platform answered: ask again for this job after reconnecting."""
    if ctx.current is not None:
        ctx.queue.insert(0, ctx.current)
        ctx.current = None
    return ()


def _rsp_matches(ctx: UploadDeviceContext, event: CreateUploadTaskRsp) -> bool:
    job = ctx.current
    return (
        job is not None
        and (event.name, event.size, event.md5sum.lower()) == (job.name, job.size, job.md5.lower())
        and bool(event.url)
    )


def _rsp_refuses(ctx: UploadDeviceContext, event: CreateUploadTaskRsp) -> bool:
    """The answer is about the current job and refuses it: a non-zero code or no URL."""
    job = ctx.current
    return (
        job is not None
        and (event.name, event.size, event.md5sum.lower()) == (job.name, job.size, job.md5.lower())
        and (bool(event.result_code) or not event.url)
    )


def _refused_with_queue(ctx: UploadDeviceContext, event: CreateUploadTaskRsp) -> bool:
    return _rsp_refuses(ctx, event) and bool(ctx.queue)


def _refused(ctx: UploadDeviceContext, event: CreateUploadTaskRsp, now: float) -> Iterable[Effect]:
    assert ctx.current is not None
    name, ctx.current = ctx.current.name, None
    code = event.result_code or UPLOAD_REFUSED
    why = f"the platform refused the upload ({code}): {event.result_msg or 'no URL given'}"
    return (UploadFinished(name, False, code, why), Log.warning(f"upload of {name!r}: {why}"))


def _refused_then_next(
    ctx: UploadDeviceContext, event: CreateUploadTaskRsp, now: float
) -> Iterable[Effect]:
    return [*_refused(ctx, event, now), *_create_next(ctx, event, now)]


def _start_upload(
    ctx: UploadDeviceContext, event: CreateUploadTaskRsp, now: float
) -> Iterable[Effect]:
    job = ctx.current
    assert job is not None
    ctx.transfer += 1
    ctx.last_progress_at = now
    return (
        StartUpload(ctx.transfer, event.url, job.path, job.size, job.md5),
        Publish(ReportUploadProgress(job.name, _progress("uploading", 0)), 0),
    )


def _current_upload(
    ctx: UploadDeviceContext, event: TransferProgress | TransferDone | TransferFailed
) -> bool:
    return event.transfer == ctx.transfer and ctx.current is not None


def _upload_progress(
    ctx: UploadDeviceContext, event: TransferProgress, now: float
) -> Iterable[Effect]:
    pct = percent(event.done, event.size)
    if not progress_due(pct, ctx.last_progress_at, now):
        return ()
    ctx.last_progress_at = now
    assert ctx.current is not None
    return (Publish(ReportUploadProgress(ctx.current.name, _progress("uploading", pct)), 0),)


def _send_final(ctx: UploadDeviceContext) -> list[Effect]:
    assert ctx.current is not None and ctx.final is not None
    ctx.tries += 1
    return [
        Publish(ReportUploadProgress(ctx.current.name, ctx.final), 1),
        SetTimer("final", FINAL_TIMEOUT),
    ]


def _uploaded(ctx: UploadDeviceContext, event: TransferDone, now: float) -> Iterable[Effect]:
    assert ctx.current is not None
    ctx.final, ctx.tries = _progress("done"), 0
    return [*_send_final(ctx), UploadFinished(ctx.current.name, True, 0, "done")]


def _upload_failed(ctx: UploadDeviceContext, event: TransferFailed, now: float) -> Iterable[Effect]:
    assert ctx.current is not None
    ctx.final, ctx.tries = _progress("fail", None, event.code, event.reason), 0
    return [*_send_final(ctx), UploadFinished(ctx.current.name, False, event.code, event.reason)]


def _rejected(ctx: UploadDeviceContext, event: ReportUploadProgressRsp) -> bool:
    return event.result_code != 0


def _aborted(
    ctx: UploadDeviceContext, event: ReportUploadProgressRsp, now: float
) -> Iterable[Effect]:
    assert ctx.current is not None
    why = f"the platform answered {event.result_code}: {event.result_msg}"
    ctx.final, ctx.tries = _progress("fail", None, TIMEOUT, why), 0
    return [
        CancelTransfer(ctx.transfer),
        *_send_final(ctx),
        UploadFinished(ctx.current.name, False, TIMEOUT, why),
    ]


def _resend_final(ctx: UploadDeviceContext, event: Event, now: float) -> Iterable[Effect]:
    return _send_final(ctx)


def _may_resend(ctx: UploadDeviceContext, event: Event) -> bool:
    return ctx.tries < MAX_ASKS


def _no_answer(ctx: UploadDeviceContext, event: Event, now: float) -> Iterable[Effect]:
    assert ctx.current is not None
    name, ctx.current = ctx.current.name, None
    return (UploadFinished(name, False, TIMEOUT, "the platform did not answer"),)


def _done_then_next(ctx: UploadDeviceContext, event: Event, now: float) -> Iterable[Effect]:
    return _create_next(ctx, event, now)


def _no_answer_then_next(ctx: UploadDeviceContext, event: Event, now: float) -> Iterable[Effect]:
    return [*_no_answer(ctx, event, now), *_create_next(ctx, event, now)]


def _finish(ctx: UploadDeviceContext, event: Event, now: float) -> Iterable[Effect]:
    ctx.current, ctx.final = None, None
    return ()


def _stale_rsp(
    ctx: UploadDeviceContext, event: CreateUploadTaskRsp, now: float
) -> Iterable[Effect]:
    return (
        Log.info(f"ignored create_upload_task_rsp for {event.name[:80]!r}: not the current upload"),
    )


BUSY = ("creating", "uploading", "finishing")

UPLOAD_DEVICE = MachineSpec(
    name="resource_upload.device",
    doc="Queue uploads; for each: create the task, PUT the file, report, wait for each answer.",
    states=[
        State("offline", initial=True, doc="not connected: uploads wait in the queue"),
        State("idle", doc="nothing to upload"),
        State("creating", doc="create_upload_task sent, waiting for the URL"),
        State("uploading", doc="the HTTP PUT streams the file"),
        State("finishing", doc="the final report is out, waiting for its answer"),
    ],
    transitions=[
        On(Upload, ("offline", *BUSY), None, guard=_valid_upload, action=_enqueue_upload),
        On(Upload, "idle", "creating", guard=_valid_upload, action=_enqueue_and_create),
        On(Upload, ANY_STATE, None, action=_refuse_upload),
        On(Connected, "offline", "creating", guard=_has_queue, action=_create_next),
        On(Connected, "offline", "idle"),
        On(Connected, "creating", "creating", action=_ask_again),
        On(Connected, "finishing", None, action=_resend_final),
        On(Connected, ("idle", "uploading"), None),
        On(Disconnected, "idle", "offline"),
        On(Disconnected, "creating", "offline", action=_requeue),
        On(Disconnected, ("offline", "uploading", "finishing"), None),
        On(
            CreateUploadTaskRsp,
            "creating",
            "creating",
            guard=_refused_with_queue,
            action=_refused_then_next,
        ),
        On(CreateUploadTaskRsp, "creating", "idle", guard=_rsp_refuses, action=_refused),
        On(CreateUploadTaskRsp, "creating", "uploading", guard=_rsp_matches, action=_start_upload),
        On(CreateUploadTaskRsp, ANY_STATE, None, action=_stale_rsp),
        On(timer("rsp"), "creating", "creating", guard=_may_ask_again, action=_ask_again),
        On(timer("rsp"), "creating", "idle", action=_no_answer),
        On(TransferProgress, "uploading", None, guard=_current_upload, action=_upload_progress),
        On(TransferDone, "uploading", "finishing", guard=_current_upload, action=_uploaded),
        On(TransferFailed, "uploading", "finishing", guard=_current_upload, action=_upload_failed),
        On(ReportUploadProgressRsp, "uploading", "finishing", guard=_rejected, action=_aborted),
        On(
            ReportUploadProgressRsp,
            "finishing",
            "creating",
            guard=_has_queue,
            action=_done_then_next,
        ),
        On(ReportUploadProgressRsp, "finishing", "idle", action=_finish),
        On(ReportUploadProgressRsp, ("offline", "idle", "creating", "uploading"), None),
        On(timer("final"), "finishing", "finishing", guard=_may_resend, action=_resend_final),
        On(timer("final"), "finishing", "creating", guard=_has_queue, action=_no_answer_then_next),
        On(timer("final"), "finishing", "idle", action=_no_answer),
    ],
    context=lambda key: UploadDeviceContext(),
    context_type=UploadDeviceContext,
    inbound=[CreateUploadTaskRsp, ReportUploadProgressRsp],
)


# ---- platform upload ------------------------------------------------------------------------


@attrs.frozen
class GrantUpload(Effect):
    """Answer `create_upload_task` with a signed PUT URL for (device, name, md5); the runtime
    signs it (the machine holds no secret)."""

    name: str
    size: int
    md5: str


@attrs.frozen
class UploadRefused(Event):
    """The runtime will not grant `GrantUpload` (over the maximum size, no room on disk): the
    machine answers the device with a refusal and stops waiting for the upload."""

    name: str
    size: int
    md5: str
    reason: str


@attrs.frozen
class UploadReported(Effect):
    """The device reported on an upload; the platform records it with the stored file."""

    name: str
    state: str
    percent: int | None
    code: int
    message: str


@attrs.frozen
class UploadSilent(Effect):
    """The device said nothing about the upload `name` for SILENCE_TIMEOUT: the platform ends
    its record on what it knows (the file stored whole, or not)."""

    name: str
    message: str


@attrs.define
class UploadPlatformContext:
    name: str = ""
    md5: str = ""
    size: int = 0
    percent: int = 0
    result_code: int = 0
    result_msg: str = ""


def _valid_create(ctx: UploadPlatformContext, event: CreateUploadTask) -> bool:
    return not problem_with(event.name, event.size, event.md5sum)


def _grant(ctx: UploadPlatformContext, event: CreateUploadTask, now: float) -> Iterable[Effect]:
    ctx.name, ctx.size, ctx.md5 = event.name, event.size, event.md5sum.lower()
    ctx.percent, ctx.result_code, ctx.result_msg = 0, 0, ""
    return (GrantUpload(event.name, event.size, ctx.md5), SetTimer("silence", SILENCE_TIMEOUT))


def _refusal(size: int, name: str, md5: str, why: str) -> Publish:
    return Publish(CreateUploadTaskRsp(size, name, md5, "", UPLOAD_REFUSED, why), 1)


def _refuse_create(
    ctx: UploadPlatformContext, event: CreateUploadTask, now: float
) -> Iterable[Effect]:
    """Answered, not dropped: a device waiting for its URL learns at once that none will come."""
    why = problem_with(event.name, event.size, event.md5sum)
    return (
        _refusal(event.size, event.name, event.md5sum, why),
        Log.warning(f"refused create_upload_task: {why}"),
    )


def _refusing_current(ctx: UploadPlatformContext, event: UploadRefused) -> bool:
    return (event.name, event.md5) == (ctx.name, ctx.md5)


def _answer_refusal(
    ctx: UploadPlatformContext, event: UploadRefused, now: float
) -> Iterable[Effect]:
    return (
        _refusal(event.size, event.name, event.md5, event.reason),
        Log.warning(f"refused upload of {event.name[:80]!r}: {event.reason}"),
    )


def _answer_upload(
    ctx: UploadPlatformContext, event: ReportUploadProgress, now: float
) -> Iterable[Effect]:
    p = event.progress
    if event.name == ctx.name:
        ctx.percent = (
            p.percent if p.percent is not None else (100 if p.state == "done" else ctx.percent)
        )
        ctx.result_code, ctx.result_msg = p.result_code, p.result_msg
    return (
        Publish(ReportUploadProgressRsp(0, "ok"), 0),
        UploadReported(event.name, p.state, p.percent, p.result_code, p.result_msg),
    )


def _upload_ended(ctx: UploadPlatformContext, event: ReportUploadProgress) -> bool:
    return event.progress.state in ("done", "fail") and event.name == ctx.name


def _about_current(ctx: UploadPlatformContext, event: ReportUploadProgress) -> bool:
    return event.name == ctx.name


def _answer_and_wait(
    ctx: UploadPlatformContext, event: ReportUploadProgress, now: float
) -> Iterable[Effect]:
    """Progress on the current upload: the device is alive, silence is counted afresh."""
    return (*_answer_upload(ctx, event, now), SetTimer("silence", SILENCE_TIMEOUT))


def _silent(ctx: UploadPlatformContext, event: Event, now: float) -> Iterable[Effect]:
    why = f"no final report from the device within {SILENCE_TIMEOUT:g} s"
    return (UploadSilent(ctx.name, why), Log.warning(f"upload of {ctx.name[:80]!r}: {why}"))


UPLOAD_PLATFORM = MachineSpec(
    name="resource_upload.platform",
    doc="Grant each upload a signed PUT URL; answer every report; record the outcome.",
    states=[
        State("idle", initial=True, doc="no upload under way"),
        State("receiving", doc="a PUT URL was granted; reports arrive"),
    ],
    transitions=[
        On(CreateUploadTask, ANY_STATE, "receiving", guard=_valid_create, action=_grant),
        On(CreateUploadTask, ANY_STATE, None, action=_refuse_create),
        On(UploadRefused, "receiving", "idle", guard=_refusing_current, action=_answer_refusal),
        On(UploadRefused, ANY_STATE, None, action=_answer_refusal),
        On(ReportUploadProgress, "receiving", "idle", guard=_upload_ended, action=_answer_upload),
        On(ReportUploadProgress, "receiving", None, guard=_about_current, action=_answer_and_wait),
        On(ReportUploadProgress, ANY_STATE, None, action=_answer_upload),
        On(timer("silence"), "receiving", "idle", action=_silent),
    ],
    context=lambda key: UploadPlatformContext(),
    context_type=UploadPlatformContext,
    inbound=[CreateUploadTask, ReportUploadProgress],
)


# ---- device download ------------------------------------------------------------------------


@attrs.frozen
class DeliverResource(Effect):
    """For the application: the verified file at `path` is the resource `name`."""

    name: str
    path: str
    md5: str


@attrs.define
class DownloadJob:
    name: str
    size: int
    md5: str
    url: str = attrs.field(repr=url_repr)


@attrs.define
class DownloadDeviceContext:
    queue: list[DownloadJob] = attrs.Factory(list)
    current: DownloadJob | None = None
    transfer: int = 0
    retries: int = 0
    last_progress_at: float = float("-inf")
    delivered: list[tuple[str, str]] = attrs.Factory(list)
    """(name, md5) of the last few delivered tasks: offered again (the platform never got the
    `done` report), they are answered `done` again instead of downloaded twice."""


RECENTLY_DELIVERED = 8


def _offered(event: GetDownloadTaskRsp | DownloadTask) -> DownloadJob:
    return DownloadJob(event.name, event.size, event.md5sum.lower(), event.url)


def _is_known(ctx: DownloadDeviceContext, job: DownloadJob) -> bool:
    same = (job.name, job.md5)
    return any(
        (j.name, j.md5) == same for j in [*ctx.queue, *([ctx.current] if ctx.current else [])]
    )


def _new_task(ctx: DownloadDeviceContext, event: GetDownloadTaskRsp | DownloadTask) -> bool:
    if problem_with(event.name, event.size, event.md5sum, event.url):
        return False
    return not _is_known(ctx, _offered(event))


def _delivered_before(ctx: DownloadDeviceContext, event: GetDownloadTaskRsp | DownloadTask) -> bool:
    if problem_with(event.name, event.size, event.md5sum, event.url):
        return False
    job = _offered(event)
    return (job.name, job.md5) in ctx.delivered and not _is_known(ctx, job)


def _done_again(
    ctx: DownloadDeviceContext, event: GetDownloadTaskRsp | DownloadTask, now: float
) -> Iterable[Effect]:
    return (
        Publish(ReportDownloadProgress(event.name, _progress("done")), 1),
        Log.info(f"{event.name[:80]!r} was offered again after its delivery: reported done again"),
    )


def _bad_task(ctx: DownloadDeviceContext, event: GetDownloadTaskRsp | DownloadTask) -> bool:
    return bool(problem_with(event.name, event.size, event.md5sum, event.url))


def _refuse_task(
    ctx: DownloadDeviceContext, event: GetDownloadTaskRsp | DownloadTask, now: float
) -> Iterable[Effect]:
    why = problem_with(event.name, event.size, event.md5sum, event.url)
    report = ReportDownloadProgress(event.name, _progress("fail", None, NOT_FOUND, why))
    return (Publish(report, 1), Log.warning(f"refused a download task: {why}"))


def _queue_task(
    ctx: DownloadDeviceContext, event: GetDownloadTaskRsp | DownloadTask, now: float
) -> Iterable[Effect]:
    ctx.queue.append(_offered(event))
    return ()


def _start_job(ctx: DownloadDeviceContext) -> list[Effect]:
    job = ctx.current
    assert job is not None
    ctx.transfer += 1
    ctx.last_progress_at = float("-inf")
    return [StartDownload(ctx.transfer, job.url, job.size, job.md5, job.name, job.name)]


def _download_next(ctx: DownloadDeviceContext, event: Event, now: float) -> Iterable[Effect]:
    ctx.current, ctx.retries = ctx.queue.pop(0), 0
    return _start_job(ctx)


def _queue_and_start(
    ctx: DownloadDeviceContext, event: GetDownloadTaskRsp | DownloadTask, now: float
) -> Iterable[Effect]:
    _queue_task(ctx, event, now)
    return _download_next(ctx, event, now)


def _ask(ctx: DownloadDeviceContext, event: Event, now: float) -> Iterable[Effect]:
    return (Publish(GetDownloadTask(), 1), SetTimer("rsp", RSP_TIMEOUT))


def _ask_busy(ctx: DownloadDeviceContext, event: Event, now: float) -> Iterable[Effect]:
    return (Publish(GetDownloadTask(), 1),)


def _this_and_more(ctx: DownloadDeviceContext, event: TransferDone | TransferFailed) -> bool:
    """The current transfer ended and another task waits."""
    return event.transfer == ctx.transfer and ctx.current is not None and bool(ctx.queue)


def _this_transfer(
    ctx: DownloadDeviceContext,
    event: TransferStarted | TransferProgress | TransferDone | TransferFailed,
) -> bool:
    return event.transfer == ctx.transfer and ctx.current is not None


def _report_download(ctx: DownloadDeviceContext, pct: int, now: float) -> list[Effect]:
    assert ctx.current is not None
    ctx.last_progress_at = now
    return [Publish(ReportDownloadProgress(ctx.current.name, _progress("downloading", pct)), 0)]


def _download_started(
    ctx: DownloadDeviceContext, event: TransferStarted, now: float
) -> Iterable[Effect]:
    return _report_download(ctx, percent(event.offset, event.size), now)


def _download_progress(
    ctx: DownloadDeviceContext, event: TransferProgress, now: float
) -> Iterable[Effect]:
    pct = percent(event.done, event.size)
    if not progress_due(pct, ctx.last_progress_at, now):
        return ()
    return _report_download(ctx, pct, now)


def _delivered(ctx: DownloadDeviceContext, event: TransferDone) -> list[Effect]:
    job, ctx.current = ctx.current, None
    assert job is not None
    ctx.delivered = [*ctx.delivered, (job.name, job.md5)][-RECENTLY_DELIVERED:]
    return [
        DeliverResource(job.name, event.path, job.md5),
        Publish(ReportDownloadProgress(job.name, _progress("done")), 1),
    ]


def _delivered_then_next(
    ctx: DownloadDeviceContext, event: TransferDone, now: float
) -> Iterable[Effect]:
    return [*_delivered(ctx, event), *_download_next(ctx, event, now)]


def _delivered_last(
    ctx: DownloadDeviceContext, event: TransferDone, now: float
) -> Iterable[Effect]:
    return _delivered(ctx, event)


def _resumable(ctx: DownloadDeviceContext, event: TransferFailed) -> bool:
    return _this_transfer(ctx, event) and event.code == TIMEOUT and ctx.retries < MAX_RETRIES


def _retry_later(ctx: DownloadDeviceContext, event: TransferFailed, now: float) -> Iterable[Effect]:
    ctx.retries += 1
    return (SetTimer("retry", RETRY_BASE * 2 ** (ctx.retries - 1)),)


def _resume(ctx: DownloadDeviceContext, event: Event, now: float) -> Iterable[Effect]:
    return _start_job(ctx)


def _failed(ctx: DownloadDeviceContext, code: int, reason: str) -> list[Effect]:
    job, ctx.current = ctx.current, None
    assert job is not None
    report = ReportDownloadProgress(job.name, _progress("fail", None, code, reason))
    return [Publish(report, 1), Log.warning(f"download of {job.name} failed ({code}): {reason}")]


def _failed_then_next(
    ctx: DownloadDeviceContext, event: TransferFailed, now: float
) -> Iterable[Effect]:
    return [*_failed(ctx, event.code, event.reason), *_download_next(ctx, event, now)]


def _failed_last(ctx: DownloadDeviceContext, event: TransferFailed, now: float) -> Iterable[Effect]:
    return _failed(ctx, event.code, event.reason)


def _abort_download(
    ctx: DownloadDeviceContext, event: ReportDownloadProgressRsp, now: float
) -> Iterable[Effect]:
    why = f"the platform answered {event.result_code}: {event.result_msg}"
    return [CancelTransfer(ctx.transfer), *_failed(ctx, TIMEOUT, why)]


def _rsp_rejects(ctx: DownloadDeviceContext, event: ReportDownloadProgressRsp) -> bool:
    return event.result_code != 0 and ctx.current is not None


TASKS = (GetDownloadTaskRsp, DownloadTask)
WORKING = ("downloading", "retrying")


def _task_rules() -> list[On]:
    rules: list[On] = []
    for message in TASKS:
        rules += [
            On(message, "asking", "idle", guard=_delivered_before, action=_done_again),
            On(
                message,
                ("offline", "idle", *WORKING),
                None,
                guard=_delivered_before,
                action=_done_again,
            ),
            On(
                message, ("asking", "idle"), "downloading", guard=_new_task, action=_queue_and_start
            ),
            On(message, ("offline", *WORKING), None, guard=_new_task, action=_queue_task),
            On(message, ANY_STATE, None, guard=_bad_task, action=_refuse_task),
            On(message, "asking", "idle"),
            On(message, ("offline", "idle", *WORKING), None),
        ]
    return rules


DOWNLOAD_DEVICE = MachineSpec(
    name="resource_download.device",
    doc="Ask for tasks after every (re)connect, take pushed ones, download them one at a time "
    "with breakpoint resume, hand each to the application, report done or fail.",
    states=[
        State("offline", initial=True, doc="not connected"),
        State("asking", doc="get_download_task sent"),
        State("idle", doc="no task"),
        State("downloading", doc="one task streams to the state directory"),
        State("retrying", doc="the link dropped; the same task resumes after a pause"),
    ],
    transitions=[
        On(Connected, ("offline", "asking", "idle"), "asking", action=_ask),
        On(Connected, WORKING, None, action=_ask_busy),
        On(Disconnected, ("asking", "idle"), "offline"),
        On(Disconnected, ("offline", *WORKING), None),
        *_task_rules(),
        On(timer("rsp"), "asking", "idle"),
        On(TransferStarted, "downloading", None, guard=_this_transfer, action=_download_started),
        On(TransferProgress, "downloading", None, guard=_this_transfer, action=_download_progress),
        On(
            TransferDone,
            "downloading",
            "downloading",
            guard=_this_and_more,
            action=_delivered_then_next,
        ),
        On(TransferDone, "downloading", "idle", guard=_this_transfer, action=_delivered_last),
        On(TransferFailed, "downloading", "retrying", guard=_resumable, action=_retry_later),
        On(
            TransferFailed,
            "downloading",
            "downloading",
            guard=_this_and_more,
            action=_failed_then_next,
        ),
        On(TransferFailed, "downloading", "idle", guard=_this_transfer, action=_failed_last),
        On(timer("retry"), "retrying", "downloading", action=_resume),
        On(
            ReportDownloadProgressRsp,
            "downloading",
            "idle",
            guard=_rsp_rejects,
            action=_abort_download,
        ),
        On(ReportDownloadProgressRsp, ANY_STATE, None),
    ],
    context=lambda key: DownloadDeviceContext(),
    context_type=DownloadDeviceContext,
    inbound=[GetDownloadTaskRsp, DownloadTask, ReportDownloadProgressRsp],
)


# ---- platform download ----------------------------------------------------------------------


@attrs.frozen
class OfferResource(Event):
    """Platform command: deliver the served file `file_id` to this device as `name`."""

    name: str
    file_id: str
    size: int
    md5: str


@attrs.frozen
class SendDownloadTask(Effect):
    """Send the task with a freshly signed URL: pushed as `download`, or as the answer to
    `get_download_task` (`answer=True`)."""

    name: str
    file_id: str
    size: int
    md5: str
    answer: bool


@attrs.frozen
class ResourceDelivered(Effect):
    """For server code: the device reported the end of a delivery."""

    name: str
    ok: bool
    code: int
    message: str


@attrs.define
class DownloadPlatformContext:
    queue: list[OfferResource] = attrs.Factory(list)
    percent: int = 0
    pushes: int = 0
    """Times the head task was sent without a report in return."""


def _head(ctx: DownloadPlatformContext, answer: bool) -> list[Effect]:
    task = ctx.queue[0]
    ctx.percent = 0
    ctx.pushes += 1
    return [
        SendDownloadTask(task.name, task.file_id, task.size, task.md5, answer),
        SetTimer("silence", OFFER_TIMEOUT * 2 ** (ctx.pushes - 1)),
    ]


def _may_push_again(ctx: DownloadPlatformContext, event: Event) -> bool:
    """Also after progress: a device silent since then may have lost its `done` report (it is
    QoS 1, but nothing answers it), and a device that delivered the task answers a new push
    with `done` again."""
    return bool(ctx.queue) and ctx.pushes < MAX_PUSHES


def _push_again(ctx: DownloadPlatformContext, event: Event, now: float) -> Iterable[Effect]:
    return _head(ctx, answer=False)


def _give_up_pushing(ctx: DownloadPlatformContext, event: Event, now: float) -> Iterable[Effect]:
    """The device is silent: keep the task queued; it gets it when it next asks (every
    reconnect)."""
    ctx.pushes = 0
    return ()


def _offer_new(ctx: DownloadPlatformContext, event: OfferResource, now: float) -> Iterable[Effect]:
    ctx.queue.append(event)
    return _head(ctx, answer=False)


def _offer_queued(
    ctx: DownloadPlatformContext, event: OfferResource, now: float
) -> Iterable[Effect]:
    ctx.queue.append(event)
    return ()


def _has_tasks(ctx: DownloadPlatformContext, event: Event) -> bool:
    return bool(ctx.queue)


def _answer_ask(
    ctx: DownloadPlatformContext, event: GetDownloadTask, now: float
) -> Iterable[Effect]:
    return _head(ctx, answer=True)


def _about_head(ctx: DownloadPlatformContext, event: ReportDownloadProgress) -> bool:
    return bool(ctx.queue) and event.name == ctx.queue[0].name


def _head_ended(ctx: DownloadPlatformContext, event: ReportDownloadProgress) -> bool:
    return _about_head(ctx, event) and event.progress.state in ("done", "fail")


def _rsp_ok() -> Publish:
    return Publish(ReportDownloadProgressRsp(0, "ok"), 0)


def _ended(ctx: DownloadPlatformContext, event: ReportDownloadProgress) -> list[Effect]:
    ctx.queue.pop(0)
    ctx.pushes = 0
    p = event.progress
    ok = p.state == "done"
    ctx.percent = 100 if ok else ctx.percent
    return [_rsp_ok(), ResourceDelivered(event.name, ok, p.result_code, p.result_msg or p.state)]


def _ended_then_next(
    ctx: DownloadPlatformContext, event: ReportDownloadProgress, now: float
) -> Iterable[Effect]:
    effects = _ended(ctx, event)
    return effects + _head(ctx, answer=False) if ctx.queue else effects


def _ended_last(
    ctx: DownloadPlatformContext, event: ReportDownloadProgress, now: float
) -> Iterable[Effect]:
    return _ended(ctx, event)


def _more_after_head(ctx: DownloadPlatformContext, event: ReportDownloadProgress) -> bool:
    return _head_ended(ctx, event) and len(ctx.queue) > 1


def _track_download(
    ctx: DownloadPlatformContext, event: ReportDownloadProgress, now: float
) -> Iterable[Effect]:
    ctx.pushes = 0  # the device has the task: pushes count again only once it falls silent
    if _about_head(ctx, event) and event.progress.percent is not None:
        ctx.percent = max(0, min(100, event.progress.percent))
    return (_rsp_ok(), SetTimer("silence", SILENCE_TIMEOUT))


def _answer_only(
    ctx: DownloadPlatformContext, event: ReportDownloadProgress, now: float
) -> Iterable[Effect]:
    return (_rsp_ok(),)


DOWNLOAD_PLATFORM = MachineSpec(
    name="resource_download.platform",
    doc="Queue deliveries per device; push the next one, answer asks, answer every report.",
    states=[
        State("idle", initial=True, doc="nothing queued for this device"),
        State("offered", doc="the head of the queue was sent; the device reports on it"),
    ],
    transitions=[
        On(OfferResource, "idle", "offered", action=_offer_new),
        On(OfferResource, "offered", None, action=_offer_queued),
        On(GetDownloadTask, ANY_STATE, "offered", guard=_has_tasks, action=_answer_ask),
        On(GetDownloadTask, ANY_STATE, None),
        On(
            ReportDownloadProgress,
            "offered",
            "offered",
            guard=_more_after_head,
            action=_ended_then_next,
        ),
        On(ReportDownloadProgress, "offered", "idle", guard=_head_ended, action=_ended_last),
        On(ReportDownloadProgress, "offered", None, guard=_about_head, action=_track_download),
        On(ReportDownloadProgress, ANY_STATE, None, action=_answer_only),
        On(timer("silence"), "offered", "offered", guard=_may_push_again, action=_push_again),
        On(timer("silence"), "offered", "idle", action=_give_up_pushing),
    ],
    context=lambda key: DownloadPlatformContext(),
    context_type=DownloadPlatformContext,
    inbound=[GetDownloadTask, ReportDownloadProgress],
)


UPLOAD_FEATURE = Feature(
    name="resource_upload",
    up_topic=UP_TOPIC,
    down_topic=DOWN_TOPIC,
    up=[CreateUploadTask, ReportUploadProgress],
    down=[CreateUploadTaskRsp, ReportUploadProgressRsp],
    device=UPLOAD_DEVICE,
    platform=UPLOAD_PLATFORM,
    doc="Devices upload files to the platform: one signed HTTP PUT each, with Content-MD5.",
)

DOWNLOAD_FEATURE = Feature(
    name="resource_download",
    up_topic=UP_TOPIC,
    down_topic=DOWN_TOPIC,
    up=[GetDownloadTask, ReportDownloadProgress],
    down=[GetDownloadTaskRsp, DownloadTask, ReportDownloadProgressRsp],
    device=DOWNLOAD_DEVICE,
    platform=DOWNLOAD_PLATFORM,
    doc="The platform delivers files to devices, resumable over HTTP like OTA.",
)
