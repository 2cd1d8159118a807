"""`/steps` and `/steps/stream`: the recent step trace, and the live one as server-sent events.

The stream is a plain `text/event-stream`: `id:` the step's sequence number, `event: step`,
`data:` its JSON; `event: dropped` says how many this reader lost by falling behind; a comment
line every `KEEPALIVE` seconds keeps proxies from closing an idle stream. A reconnecting
`EventSource` sends `Last-Event-ID` and gets what the ring still holds after it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import cattrs
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..machines import all_features
from .endpoint import ApiError, Call, Endpoint, Param
from .feed import StepFilter, step_event
from .lookup import device_of, product_of
from .models import StepList

KEEPALIVE = 15.0
POLL = 0.5
"""How often a quiet stream checks whether the server is stopping."""


def _filter(call: Call) -> StepFilter:
    q = call.query
    product = None if q.get("product") is None else product_of(q["product"])
    return StepFilter(
        q.get("machine"), product, q.get("device"), bool(q.get("handled_only")), q.get("role")
    )


def recent(call: Call) -> StepList:
    feed = call.ctx.feed
    return StepList(feed.recent(_filter(call), call.query["limit"]), feed.dropped)


def device_steps(call: Call) -> StepList:
    key = device_of(call)
    feed = call.ctx.feed
    wanted = StepFilter(None, key.product, key.device)
    return StepList(feed.recent(wanted, call.query["limit"]), feed.dropped)


def _frame(event: str, data: str, seq: int | None = None) -> bytes:
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()


async def stream(request: Request, call: Call) -> Response:
    wanted = _filter(call)
    ctx = call.ctx
    after = request.headers.get("last-event-id", "")
    if after and not after.isdigit():
        raise ApiError(400, "bad_request", "Last-Event-ID must be a step sequence number")
    converter = cattrs.Converter()
    sub = ctx.feed.subscribe(wanted, asyncio.get_running_loop())
    backlog = ctx.feed.recent(wanted, 1000, int(after)) if after else []

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b": stream of step records\n\n"
            for event in backlog:
                yield _frame("step", json.dumps(converter.unstructure(event)), event.seq)
            last = backlog[-1].seq if backlog else 0
            quiet_since = time.monotonic()
            while not ctx.stopping.is_set():
                await sub.wait(POLL)
                entries, lost = sub.take()
                if lost:
                    yield _frame("dropped", json.dumps({"dropped": lost}))
                for entry in entries:
                    if entry[0] <= last:
                        continue
                    doc = converter.unstructure(step_event(entry))
                    yield _frame("step", json.dumps(doc), entry[0])
                if entries or lost:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= KEEPALIVE:
                    quiet_since = time.monotonic()
                    yield b": keepalive\n\n"
        finally:
            sub.close()

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)


FILTERS = (
    Param(
        "machine",
        str,
        description="only this machine: a feature or campaign (the platform's), or a device "
        "machine such as ota.device (devices traced in-process)",
        choices=(
            *(f.name for f in all_features()),
            "campaign",
            *(f"{f.name}.device" for f in all_features()),
        ),
    ),
    Param("role", str, description="only this role's steps", choices=("platform", "device")),
    Param("product", str, description="only this product"),
    Param("device", str, description="only this device"),
)
LIMIT = Param("limit", int, 100, "newest steps to return", minimum=1, maximum=2000)

ENDPOINTS = (
    Endpoint(
        "GET",
        "/steps",
        recent,
        "read",
        "Recent step records",
        "steps",
        StepList,
        query=(*FILTERS, Param("handled_only", bool, False, "only steps that fired"), LIMIT),
    ),
    Endpoint(
        "GET",
        "/steps/stream",
        recent,
        "read",
        "Live step records (server-sent events)",
        "steps",
        None,
        query=(*FILTERS, Param("handled_only", bool, False, "only steps that fired")),
        stream=stream,
    ),
    Endpoint(
        "GET",
        "/devices/{product}/{device}/steps",
        device_steps,
        "read",
        "Recent step records of one device",
        "devices",
        StepList,
        query=(LIMIT,),
    ),
)
