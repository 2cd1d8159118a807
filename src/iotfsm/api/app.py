"""The ASGI application: every endpoint table under `/api/v1`, the OpenAPI document, JSON
errors for what no route answers, and the web console when `iotfsm.console` is installed."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from . import (
    routes_campaigns,
    routes_devices,
    routes_firmware,
    routes_messaging,
    routes_meta,
    routes_products,
    sse,
)
from .context import ApiContext
from .endpoint import Endpoint, error_response, route
from .openapi import document

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
ENDPOINTS: tuple[Endpoint, ...] = (
    *routes_meta.ENDPOINTS,
    *routes_devices.ENDPOINTS,
    *sse.ENDPOINTS,
    *routes_firmware.ENDPOINTS,
    *routes_campaigns.ENDPOINTS,
    *routes_products.ENDPOINTS,
    *routes_messaging.ENDPOINTS,
)
CODES = {404: "not_found", 405: "method_not_allowed"}


def _console_routes(ctx: ApiContext) -> list[BaseRoute]:
    if importlib.util.find_spec("iotfsm.console") is None:
        return []
    console: Any = importlib.import_module("iotfsm.console")
    mounted: list[BaseRoute] = console.routes(ctx)

    async def home(request: Request) -> Response:
        return RedirectResponse("/console/", status_code=307)

    return [Route("/", home, methods=["GET"]), Mount("/console", routes=mounted)]


def build_app(ctx: ApiContext) -> Starlette:
    spec = document(ENDPOINTS, PREFIX)

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code = CODES.get(status, "error")
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return error_response(status, code, str(detail))

    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("api: %s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal", "the platform could not answer; see its log")

    routes: list[Any] = [Route(PREFIX + "/openapi.json", openapi, methods=["GET"])]
    routes += [route(ctx, e, PREFIX) for e in ENDPOINTS]
    routes += _console_routes(ctx)
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: crash})
    app.state.ctx = ctx
    return app
