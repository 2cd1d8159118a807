"""Example events for every declared machine, so tests can be generated from the declarations.

For each trigger, a pure function of the session's context returns a few events: one a guard
accepts (the current transfer's outcome, an offer of new firmware), a stale or foreign one, a
malformed one. `iotfsm.testing.paths` plans executable paths through a machine with them; the
coverage test in tests/test_generated_paths.py fails when a declaration grows an edge that these
examples cannot reach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..fsm.effects import Effect
from ..fsm.events import Connected, Disconnected, Event
from ..fsm.examples import ExampleFn, Examples, always
from ..fsm.spec import MachineSpec
from . import broadcast, campaign, config, log_level, ota, resources, rrpc, shadow
from .feature import DeviceKey
from .messages import Message
from .transfer import (
    NOT_FOUND,
    TIMEOUT,
    TransferDone,
    TransferFailed,
    TransferProgress,
    TransferStarted,
)

KEY = DeviceKey("TEST000001", "dev-1")
MD5 = "0123456789abcdef0123456789abcdef"
OTHER_MD5 = "fedcba9876543210fedcba9876543210"
URL = "http://127.0.0.1:1/files/x?expires=1&sig=0"
CONNECTION: dict[Any, ExampleFn] = {
    Connected: always(Connected()),
    Disconnected: always(Disconnected()),
}


def _outcomes(number: int, size: int) -> dict[type[Event], Any]:
    """Transfer outcomes for transfer `number` (the current one) of a file of `size` bytes."""
    return {
        TransferStarted: [
            TransferStarted(number, 0, size),
            TransferStarted(number, size // 2, size),
        ],
        TransferProgress: [TransferProgress(number, size // 2, size)],
        TransferDone: [TransferDone(number, "/tmp/iotfsm-example.bin")],
        TransferFailed: [
            TransferFailed(number, TIMEOUT, "link cut"),
            TransferFailed(number, NOT_FOUND, "404"),
        ],
    }


# ---- ota ------------------------------------------------------------------------------------


def _firmware_offers(ctx: ota.DeviceContext) -> list[Event]:
    offers: list[Event] = [
        ota.UpdateFirmware(1024, MD5, URL, "2.0.0"),
        ota.UpdateFirmware(2048, OTHER_MD5, URL, "2.1.0"),
        ota.UpdateFirmware(1024, MD5, URL, ctx.version),
        ota.UpdateFirmware(1024, "not-an-md5", URL, "2.0.0"),
        # burn windows (epoch seconds; paths start at 0): open now, ahead, all passed, malformed
        ota.UpdateFirmware(1024, MD5, URL, "3.0.0", burn_windows=((0, 10**10),)),
        ota.UpdateFirmware(1024, MD5, URL, "3.1.0", burn_windows=((10**9, 10**10),)),
        ota.UpdateFirmware(1024, MD5, URL, "3.2.0", burn_windows=((-2, -1),)),
        ota.UpdateFirmware(1024, MD5, URL, "3.3.0", burn_windows=((5, 5),)),
    ]
    if ctx.target:
        windows = ctx.burn_windows or None
        offers.append(ota.UpdateFirmware(ctx.size, ctx.md5, URL, ctx.target, burn_windows=windows))
    return offers


def _outcome(kind: type[Event], size: int | None = None) -> Any:
    """Examples of `kind` for the session's current transfer (of `ctx.size` unless `size`)."""
    return lambda ctx: _outcomes(ctx.transfer, ctx.size if size is None else size)[kind]


OTA_DEVICE = Examples(
    ota.DEVICE,
    KEY,
    {
        **CONNECTION,
        ota.ReportVersionRsp: lambda ctx: [
            ota.ReportVersionRsp(0, "success", ctx.version),
            ota.ReportVersionRsp(1, "refused", ctx.version),
        ],
        ota.UpdateFirmware: _firmware_offers,
        **{kind: _outcome(kind) for kind in _outcomes(0, 0)},
        ota.BurnDone: always(ota.BurnDone(True), ota.BurnDone(False, "flash error")),
        ota.FirmwareVerified: always(ota.FirmwareVerified("/tmp/iotfsm-example.bin")),
        ota.FirmwareRejected: always(ota.FirmwareRejected("signature does not check")),
    },
    # a device given the platform's public key verifies every image before burning it
    starts=(lambda key: ota.DeviceContext(signed_only=True),),
)


def _version_reports(ctx: ota.PlatformContext) -> list[Event]:
    reports: list[Event] = [ota.ReportVersion.of("1.0.0"), ota.ReportVersion.of("")]
    if ctx.target:
        reports.append(ota.ReportVersion.of(ctx.target))
    return reports


def _progress_reports(ctx: ota.PlatformContext) -> list[Event]:
    target = ctx.target or "2.0.0"
    return [
        ota.ReportProgress.downloading(target, min(100, ctx.percent + 10)),
        ota.ReportProgress.downloading(target, ctx.percent),
        ota.ReportProgress.burning(target),
        ota.ReportProgress.done(target),
        ota.ReportProgress.fail(target, TIMEOUT),
        ota.ReportProgress.downloading("9.9.9", 50),
    ]


def _deployments(ctx: ota.PlatformContext) -> list[Event]:
    """The task, the same version rebuilt (another task: offered again even while the first is
    under way, where the task itself again changes nothing), and what the device runs."""
    deployments: list[Event] = [
        ota.DeployFirmware("2.0.0", "fw-2", 1024, MD5),
        ota.DeployFirmware("2.0.0", "fw-2b", 2048, OTHER_MD5),
    ]
    if ctx.reported:
        deployments.append(ota.DeployFirmware(ctx.reported, "fw-r", 1024, MD5))
    return deployments


OTA_PLATFORM = Examples(
    ota.PLATFORM,
    KEY,
    {
        ota.ReportVersion: _version_reports,
        ota.ReportProgress: _progress_reports,
        ota.DeployFirmware: _deployments,
        ota.CancelFirmware: always(ota.CancelFirmware()),
    },
)


# ---- log level ------------------------------------------------------------------------------


def _level_replies(ctx: log_level.DeviceContext) -> list[Event]:
    replies: list[Event] = [
        log_level.LogLevelReply(f"{ctx.product}-push-1", 2),
        log_level.LogLevelReply(f"{ctx.product}-push-2", 9),
        log_level.LogLevelReply(f"{ctx.product}-push-3", 1, result=1),
    ]
    if ctx.asked:
        replies.append(log_level.LogLevelReply(f"{ctx.product}-{ctx.asked}", 3))
    if ctx.answered:
        replies.append(log_level.LogLevelReply(f"{ctx.product}-{ctx.answered}", 4))
    return replies


LOG_LEVEL_DEVICE = Examples(
    log_level.DEVICE, KEY, {**CONNECTION, log_level.LogLevelReply: _level_replies}
)

LOG_LEVEL_PLATFORM = Examples(
    log_level.PLATFORM,
    KEY,
    {
        log_level.GetLogLevel: always(log_level.GetLogLevel(f"{KEY.product}-1")),
        log_level.SetLogLevel: always(log_level.SetLogLevel(3), log_level.SetLogLevel(7)),
    },
)


# ---- config ---------------------------------------------------------------------------------

CONFIG_DEVICE = Examples(
    config.DEVICE,
    KEY,
    {
        **CONNECTION,
        config.RequestConfig: always(config.RequestConfig()),
        config.ConfigReply: always(
            config.ConfigReply(config.OK, {"interval": 5}),
            config.ConfigReply(config.NO_CONFIG),
        ),
        config.ConfigPush: always(
            config.ConfigPush(config.OK, {"interval": 7}), config.ConfigPush(config.OK)
        ),
        config.ConfigSaved: always(config.ConfigSaved({"interval": 7})),
        config.ConfigNotSaved: always(config.ConfigNotSaved({"interval": 7}, "no space left")),
    },
)


def _product_configs(ctx: config.PlatformContext) -> list[config.ProductConfig]:
    revision = (ctx.config.revision if ctx.config is not None else 0) + 1
    configs = [
        config.ProductConfig(True, 1, {"interval": 5}, revision),
        config.ProductConfig(True, 2, {"interval": 7}, revision),
        config.ProductConfig(False, 1, {"interval": 5}, revision),
        config.ProductConfig(True, 0, None, revision),
    ]
    if ctx.config is not None:
        configs.append(ctx.config)
    return configs


CONFIG_PLATFORM = Examples(
    config.PLATFORM,
    KEY,
    {
        config.ConfigGet: always(config.ConfigGet()),
        config.ConfigLoaded: lambda ctx: [config.ConfigLoaded(c) for c in _product_configs(ctx)],
        config.ConfigChanged: lambda ctx: [config.ConfigChanged(c) for c in _product_configs(ctx)],
        config.PushConfig: always(config.PushConfig()),
    },
)


# ---- resources ------------------------------------------------------------------------------


def _upload_rsps(ctx: resources.UploadDeviceContext) -> list[Event]:
    rsps: list[Event] = [resources.CreateUploadTaskRsp(10, "other.log", MD5, URL)]
    if ctx.current is not None:
        job = ctx.current
        rsps.append(resources.CreateUploadTaskRsp(job.size, job.name, job.md5, URL))
        rsps.append(resources.CreateUploadTaskRsp(job.size, job.name, job.md5, "", -6, "too large"))
    return rsps


UPLOAD_DEVICE = Examples(
    resources.UPLOAD_DEVICE,
    KEY,
    {
        **CONNECTION,
        resources.Upload: always(
            resources.Upload("device.log", "/tmp/device.log", 100, MD5),
            resources.Upload("../escape", "/tmp/x", 100, MD5),
        ),
        resources.CreateUploadTaskRsp: _upload_rsps,
        **{kind: _outcome(kind, 100) for kind in (TransferProgress, TransferDone)},
        TransferFailed: lambda ctx: _outcomes(ctx.transfer, 100)[TransferFailed][:1],
        resources.ReportUploadProgressRsp: always(
            resources.ReportUploadProgressRsp(0, "ok"),
            resources.ReportUploadProgressRsp(1, "rejected"),
        ),
    },
)


def _upload_reports(ctx: resources.UploadPlatformContext) -> list[Event]:
    name = ctx.name or "device.log"
    report = resources.ReportUploadProgress
    progress = resources.ResourceProgress
    return [
        report(name, progress("uploading", 50)),
        report(name, progress("done")),
        report("other.log", progress("uploading", 10)),
    ]


UPLOAD_PLATFORM = Examples(
    resources.UPLOAD_PLATFORM,
    KEY,
    {
        resources.CreateUploadTask: always(
            resources.CreateUploadTask(100, "device.log", MD5),
            resources.CreateUploadTask(0, "device.log", MD5),
        ),
        resources.ReportUploadProgress: _upload_reports,
        resources.UploadRefused: lambda ctx: [
            resources.UploadRefused(ctx.name or "device.log", 100, ctx.md5 or MD5, "too large"),
            resources.UploadRefused("other.log", 100, OTHER_MD5, "no room on disk"),
        ],
    },
)


def _tasks(kind: Callable[[int, str, str, str], Event]) -> ExampleFn:
    def tasks(ctx: resources.DownloadDeviceContext) -> list[Event]:
        known = [*ctx.queue, *([ctx.current] if ctx.current is not None else [])]
        offers = [(100, "res-a", MD5), (200, "res-b", OTHER_MD5), (0, "res-c", MD5)]
        offers += [(j.size, j.name, j.md5) for j in known]
        offers += [(100, name, md5) for name, md5 in ctx.delivered[-1:]]
        return [kind(size, name, md5, URL) for size, name, md5 in offers]

    return tasks


DOWNLOAD_DEVICE = Examples(
    resources.DOWNLOAD_DEVICE,
    KEY,
    {
        **CONNECTION,
        resources.GetDownloadTaskRsp: _tasks(resources.GetDownloadTaskRsp),
        resources.DownloadTask: _tasks(resources.DownloadTask),
        **{kind: _outcome(kind, 100) for kind in _outcomes(0, 0)},
        resources.ReportDownloadProgressRsp: always(
            resources.ReportDownloadProgressRsp(0, "ok"),
            resources.ReportDownloadProgressRsp(1, "rejected"),
        ),
    },
)


def _download_reports(ctx: resources.DownloadPlatformContext) -> list[Event]:
    name = ctx.queue[0].name if ctx.queue else "res-a"
    report = resources.ReportDownloadProgress
    progress = resources.ResourceProgress
    return [
        report(name, progress("downloading", 50)),
        report(name, progress("done")),
        report(name, progress("fail", None, NOT_FOUND, "404")),
        report("other", progress("downloading", 10)),
    ]


DOWNLOAD_PLATFORM = Examples(
    resources.DOWNLOAD_PLATFORM,
    KEY,
    {
        resources.OfferResource: always(
            resources.OfferResource("res-a", "file-a", 100, MD5),
            resources.OfferResource("res-b", "file-b", 200, OTHER_MD5),
        ),
        resources.GetDownloadTask: always(resources.GetDownloadTask()),
        resources.ReportDownloadProgress: _download_reports,
    },
)


# ---- broadcast ------------------------------------------------------------------------------

BROADCAST_DEVICE = Examples(
    broadcast.DEVICE,
    KEY,
    {**CONNECTION, broadcast.Broadcast: always(broadcast.Broadcast(payload=b"off"))},
)

BROADCAST_PLATFORM = Examples(
    broadcast.PLATFORM, KEY, {broadcast.SendBroadcast: always(broadcast.SendBroadcast(b"off"))}
)


# ---- shadow ---------------------------------------------------------------------------------


def _shadow_results(kind: type[Any]) -> ExampleFn:
    def results(ctx: shadow.DeviceContext) -> list[Event]:
        doc = {"state": {"reported": {"t": 1}, "delta": {"t": 2}}, "version": ctx.version + 1}
        out: list[Event] = [kind(shadow.OK, 0, "other-token", doc)]
        for token in (ctx.get_token, ctx.send_token):
            if token:
                out += [
                    kind(shadow.OK, 0, token, doc),
                    kind(shadow.VERSION_CONFLICT, 0, token, doc),
                ]
                out.append(kind(shadow.INVALID_UPDATE, 0, token))
        return out

    return results


SHADOW_DEVICE = Examples(
    shadow.DEVICE,
    KEY,
    {
        **CONNECTION,
        shadow.GetResult: _shadow_results(shadow.GetResult),
        shadow.UpdateResult: _shadow_results(shadow.UpdateResult),
        shadow.DeleteResult: _shadow_results(shadow.DeleteResult),
        shadow.ShadowDelta: lambda ctx: [
            shadow.ShadowDelta({"state": {"t": 2}, "version": ctx.version + 1}),
            shadow.ShadowDelta({"state": {"t": 3}, "version": ctx.version}),
        ],
        shadow.ReportShadow: always(shadow.ReportShadow({"t": 2})),
    },
)

SHADOW_PLATFORM = Examples(
    shadow.PLATFORM,
    KEY,
    {
        shadow.ShadowGet: always(shadow.ShadowGet(f"{KEY.product}-1")),
        shadow.ShadowUpdate: lambda ctx: [
            shadow.ShadowUpdate({"reported": {"t": 1}}, 0, "P-2"),
            shadow.ShadowUpdate({"desired": {"t": 5}}, ctx.version, "P-3"),
            shadow.ShadowUpdate({"reported": {"t": 1}}, ctx.version + 7, "P-4"),
            shadow.ShadowUpdate({"other": 1}, 0, "P-5"),
        ],
        shadow.ShadowDelete: always(shadow.ShadowDelete("P-6")),
        shadow.SetDesired: always(shadow.SetDesired({"t": 2})),
    },
)


# ---- rrpc -----------------------------------------------------------------------------------


def _rrpc_requests(ctx: rrpc.DeviceContext) -> list[Event]:
    request = rrpc.RrpcRequest
    fresh = str(max((int(p) for p in [*ctx.open, *ctx.recent]), default=0) + 1)
    out: list[Event] = [request(payload=b"uptime", process_id=fresh)]
    out += [request(payload=b"again", process_id=p) for p in [*ctx.open, *ctx.recent][:1]]
    out.append(request(payload=b"x", process_id="not-a-number"))
    return out


def _rrpc_open(n: int) -> Callable[[Any], rrpc.DeviceContext]:
    return lambda key: rrpc.DeviceContext(open={str(i): 60.0 for i in range(1, n + 1)})


def _rrpc_answers(ctx: rrpc.DeviceContext) -> list[Event]:
    answers: list[Event] = [rrpc.AnswerRrpc(p, b"ok") for p in ctx.open]
    return [*answers, rrpc.AnswerRrpc("999", b"late")]


def _rrpc_replies(ctx: rrpc.PlatformContext) -> list[Event]:
    reply = rrpc.RrpcReply
    out: list[Event] = [reply(payload=b"ok", process_id=p) for p in ctx.pending]
    out += [
        reply(payload=b"late", process_id=str(max(ctx.last_id, 1))),
        reply(payload=b"unknown", process_id=str(ctx.last_id + 1)),
        reply(payload=b"bad", process_id="x1"),
    ]
    return out


RRPC_DEVICE = Examples(
    rrpc.DEVICE,
    KEY,
    {
        rrpc.RrpcRequest: _rrpc_requests,
        rrpc.AnswerRrpc: _rrpc_answers,
        Disconnected: always(Disconnected()),
    },
    # a device with MAX_OPEN - 1 requests open (the planner's paths are too short to open
    # them one by one): one more fills it, the next is refused
    starts=(_rrpc_open(rrpc.MAX_OPEN - 1),),
)

RRPC_PLATFORM = Examples(
    rrpc.PLATFORM,
    KEY,
    {
        rrpc.CallDevice: always(rrpc.CallDevice("c-1", b"uptime", 5.0)),
        rrpc.RrpcReply: _rrpc_replies,
    },
)


# ---- campaign -------------------------------------------------------------------------------

_WAVES = (("dev-a", "dev-b"), ("dev-c",))
_FIRMWARE = campaign.Firmware("2.0.0", "fw-example", 1024, MD5)
CAMPAIGN_PLANS = (
    # threshold: half of the first wave must succeed; one failure in two finished aborts; a
    # started device has 30 s (so an abort can leave one running, and timeouts happen)
    campaign.Plan(
        KEY.product,
        _FIRMWARE,
        _WAVES,
        success_percent=50.0,
        abort=(campaign.AbortRule(50.0),),
        device_timeout=30.0,
    ),
    # operator: NextWave starts the next wave; one start a minute keeps a wave's queue full
    campaign.Plan(
        KEY.product,
        _FIRMWARE,
        _WAVES,
        advance="operator",
        rate=campaign.Rate(1.0),
        device_timeout=30.0,
    ),
)
"""Plans a campaign of the examples is launched with: between them every edge is reachable."""


def _running(ctx: campaign.CampaignContext) -> list[str]:
    return [d for d, run in ctx.devices.items() if run.state == campaign.RUNNING]


CAMPAIGN = Examples(
    campaign.SPEC,
    "campaign-1",
    {
        campaign.Launch: always(*(campaign.Launch(p) for p in CAMPAIGN_PLANS)),
        campaign.Pause: always(campaign.Pause()),
        campaign.Resume: always(campaign.Resume()),
        campaign.NextWave: always(campaign.NextWave()),
        campaign.RetryFailed: always(campaign.RetryFailed()),
        campaign.Cancel: always(campaign.Cancel()),
        # outcomes of the devices in flight, and of one that is not in the campaign
        campaign.DeviceSucceeded: lambda ctx: [
            *(campaign.DeviceSucceeded(d) for d in _running(ctx)),
            campaign.DeviceSucceeded("stranger"),
        ],
        campaign.DeviceFailed: lambda ctx: [
            *(campaign.DeviceFailed(d, -1, "gave up") for d in _running(ctx)),
            campaign.DeviceFailed("stranger", -1),
        ],
        # a bad image (-4: the device's part ends) and a timeout (-1: the OTA task retries)
        campaign.DeviceAttemptFailed: lambda ctx: [
            *(
                campaign.DeviceAttemptFailed(d, code)
                for d in _running(ctx)[:1]
                for code in (-4, -1)
            ),
            campaign.DeviceAttemptFailed("stranger", -1),
        ],
    },
)


ALL = (
    OTA_DEVICE,
    OTA_PLATFORM,
    LOG_LEVEL_DEVICE,
    LOG_LEVEL_PLATFORM,
    CONFIG_DEVICE,
    CONFIG_PLATFORM,
    UPLOAD_DEVICE,
    UPLOAD_PLATFORM,
    DOWNLOAD_DEVICE,
    DOWNLOAD_PLATFORM,
    BROADCAST_DEVICE,
    BROADCAST_PLATFORM,
    SHADOW_DEVICE,
    SHADOW_PLATFORM,
    RRPC_DEVICE,
    RRPC_PLATFORM,
    CAMPAIGN,
)


def examples_for(spec: MachineSpec[Any]) -> Examples | None:
    """The examples declared here for `spec` (matched by its name), or None."""
    return next((e for e in ALL if e.spec.name == spec.name), None)


# ---- bridges: what the role facades turn effects into, for paired paths --------------------

Bridge = Callable[[Any], list[Message]]
"""`bridge(effect) -> messages` the role that produced `effect` publishes (a facade signs a URL
and sends the offer; the example URL stands in for the signed one)."""

BRIDGES: dict[str, dict[type[Effect], Bridge]] = {
    "ota": {
        ota.OfferFirmware: lambda e: [ota.UpdateFirmware(e.size, e.md5, URL, e.version)],
    },
    "resource_upload": {
        resources.GrantUpload: lambda e: [
            resources.CreateUploadTaskRsp(e.size, e.name, e.md5, URL)
        ],
    },
    "resource_download": {
        resources.SendDownloadTask: lambda e: [
            (resources.GetDownloadTaskRsp if e.answer else resources.DownloadTask)(
                e.size, e.name, e.md5, URL
            )
        ],
    },
}
