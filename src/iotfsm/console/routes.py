"""The console's own routes: its static pages and the machines' diagrams.

Nothing here reads the platform: the diagrams are the declarations (public, the same pictures
as the docs), and the pages are static until their scripts call `/api/v1`, which checks the
caller. So these routes need no authentication, and a page served to a stranger shows a login
form and nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .diagrams import DiagramBook

if TYPE_CHECKING:
    from ..api.context import ApiContext

CACHE = "max-age=300"
"""Diagrams change only with the installed package; five minutes spares reloads a `dot` lookup."""


def _not_found(name: str) -> JSONResponse:
    message = f"no machine named {name!r}; GET /console/diagrams/index.json lists them"
    return JSONResponse({"error": {"code": "not_found", "message": message}}, status_code=404)


def routes(ctx: ApiContext | None = None) -> list[BaseRoute]:
    """What the API mounts at `/console`. `ctx` is accepted for the mount's signature; the
    console reaches the platform through the API's HTTP endpoints only."""
    book = DiagramBook()
    book.render_ahead()

    async def index(request: Request) -> Response:
        return JSONResponse({"machines": list(book.names)}, headers={"cache-control": CACHE})

    async def svg(request: Request) -> Response:
        name = request.path_params["name"]
        drawn = await run_in_threadpool(book.get, name)  # the first ask runs `dot`
        if drawn is None:
            return _not_found(name)
        return Response(drawn.svg, media_type="image/svg+xml", headers={"cache-control": CACHE})

    async def layout(request: Request) -> Response:
        name = request.path_params["name"]
        drawn = await run_in_threadpool(book.get, name)
        if drawn is None:
            return _not_found(name)
        return JSONResponse(drawn.layout, headers={"cache-control": CACHE})

    return [
        Route("/diagrams/index.json", index),
        Route("/diagrams/{name}.svg", svg),
        Route("/diagrams/{name}.json", layout),
        Mount("/", StaticFiles(packages=[("iotfsm.console", "static")], html=True)),
    ]
