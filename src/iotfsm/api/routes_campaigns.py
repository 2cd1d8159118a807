"""`/campaigns`: rollouts in waves (create, list, status with per-wave counts, and the operator
commands pause, resume, cancel, next-wave, retry-failed), through the platform's campaign calls."""

from __future__ import annotations

import re
from collections.abc import Callable

from ..campaigns import CampaignSettings, CampaignStatus
from ..machines.campaign import AbortRule, CampaignError, Rate
from ..machines.windows import DailyWindow, Interval
from .endpoint import PAGE, ApiError, Call, Endpoint, Param
from .lookup import page, product_of
from .models import (
    CAMPAIGN_PATTERN,
    CampaignIn,
    CampaignOut,
    CampaignPage,
    HistoryEntry,
    SettingsIn,
)
from .routes_firmware import stored_image


def campaign_out(status: CampaignStatus, history: bool = True) -> CampaignOut:
    waves = list(status.waves)
    notes = [HistoryEntry(at, text) for at, text in status.history] if history else []
    return CampaignOut(
        status.id,
        status.state,
        status.product,
        status.version,
        status.wave,
        waves,
        status.reason,
        notes,
    )


def _settings(given: SettingsIn | None) -> CampaignSettings:
    if given is None:
        return CampaignSettings()
    rate = None
    if given.rate is not None:
        r = given.rate
        rate = Rate(r.per_minute, r.growth, r.every, r.max_per_minute)
    abort = tuple(
        AbortRule(a.percent, a.min_finished, tuple(a.codes), a.timeouts) for a in given.abort
    )
    return CampaignSettings(
        advance=given.advance,
        success_percent=given.success_percent,
        rate=rate,
        abort=abort,
        device_timeout=given.device_timeout,
        cancel_on_abort=given.cancel_on_abort,
        start_at=given.start_at,
        daily_windows=tuple(DailyWindow(w.start, w.end, w.tz) for w in given.daily_windows),
        intervals=tuple(Interval(i.start, i.end) for i in given.intervals),
    )


def create(call: Call) -> CampaignOut:
    body: CampaignIn = call.body
    product = product_of(body.product)
    image = stored_image(call, product, body.version)
    platform = call.ctx.platform
    if body.id is not None and not re.fullmatch(CAMPAIGN_PATTERN, body.id):
        raise ApiError(400, "bad_request", f"campaign id must match {CAMPAIGN_PATTERN}")
    if body.id is not None and body.id in platform.campaigns.ids():
        raise ApiError(409, "conflict", f"campaign {body.id!r} exists; choose another id")
    registry = platform.registry
    unknown = sorted(
        {
            d
            for wave in body.waves
            for d in wave
            if not registry.open and registry.get(product, d) is None
        }
    )
    if unknown:
        raise ApiError(404, "not_found", f"not registered in {product}: {unknown[:5]}")
    cid = platform.start_campaign(
        product,
        body.version,
        platform.image_path(image.file_id),
        body.waves,
        settings=_settings(body.settings),
        campaign_id=body.id,
    )
    return campaign_out(platform.campaign_status(cid))


def _statuses(call: Call) -> list[CampaignStatus]:
    platform = call.ctx.platform
    found = []
    for cid in platform.campaigns.ids():
        try:
            found.append(platform.campaign_status(cid))
        except CampaignError:  # a session created but not launched yet
            continue
    return found


def list_campaigns(call: Call) -> CampaignPage:
    q = call.query
    chosen = [
        campaign_out(s, history=False)
        for s in _statuses(call)
        if q["state"] in (None, s.state) and q["product"] in (None, s.product)
    ]
    return CampaignPage(**page(chosen, call))


def _known(call: Call) -> str:
    cid = call.path["id"]
    if cid not in call.ctx.platform.campaigns.ids():
        raise ApiError(404, "not_found", f"no campaign {cid[:70]!r}")
    return cid


def get_campaign(call: Call) -> CampaignOut:
    return campaign_out(call.ctx.platform.campaign_status(_known(call)))


def _platform_call(name: str) -> Callable[[Call], CampaignOut]:
    def run(call: Call) -> CampaignOut:
        cid = _known(call)
        getattr(call.ctx.platform, name)(cid)
        return campaign_out(call.ctx.platform.campaign_status(cid))

    return run


TAG = "campaigns"
ONE = "/campaigns/{id}"
COMMANDS = {
    "pause": "pause_campaign",
    "resume": "resume_campaign",
    "cancel": "cancel_campaign",
    "next-wave": "next_campaign_wave",
    "retry-failed": "retry_failed",
}

ENDPOINTS = (
    Endpoint(
        "POST", "/campaigns", create, "write", "Start a campaign", TAG, CampaignOut, 201, CampaignIn
    ),
    Endpoint(
        "GET",
        "/campaigns",
        list_campaigns,
        "read",
        "List campaigns",
        TAG,
        CampaignPage,
        query=(
            Param("state", str, description="only campaigns in this state"),
            Param("product", str, description="only this product"),
            *PAGE,
        ),
    ),
    Endpoint("GET", ONE, get_campaign, "read", "Show a campaign", TAG, CampaignOut),
    *(
        Endpoint(
            "POST",
            f"{ONE}/{action}",
            _platform_call(name),
            "write",
            f"Campaign: {action}",
            TAG,
            CampaignOut,
        )
        for action, name in COMMANDS.items()
    ),
)
