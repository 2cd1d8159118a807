"""One table row per API operation, and the wrapper every operation runs through.

An `Endpoint` says what the OpenAPI document says about it (method, path, scope, query
parameters, body and response classes) and `route` turns it into a Starlette route that does
the same in order: authenticate, check the scope, parse the query, read and check the body
(bounded), run the handler on a worker thread (the platform's calls may take locks or step
sessions; the event loop must not wait for them), answer JSON, and audit a change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .context import CONSOLE_HEADER, MAX_JSON, ApiContext, Caller
from .models import PATTERNS
from .schema import BodyError, read_body

log = logging.getLogger(__name__)

BINARY = "binary"
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")


class ApiError(Exception):
    """An answer other than success: status, a short code and a message that says what to fix."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


@attrs.frozen
class Param:
    """A query parameter: its type, default and bounds (`many`: may repeat, gives a list)."""

    name: str
    kind: type[Any]
    default: Any = None
    description: str = ""
    minimum: int | None = None
    maximum: int | None = None
    many: bool = False
    choices: tuple[str, ...] = ()


PAGE = (
    Param("offset", int, 0, "items to skip", minimum=0, maximum=10_000_000),
    Param("limit", int, 50, "items per page", minimum=1, maximum=500),
)


@attrs.frozen
class Upload:
    """A binary body streamed to a private temp file: its path, size and md5."""

    path: Path
    size: int
    md5: str


@attrs.frozen
class Call:
    ctx: ApiContext
    caller: Caller
    path: dict[str, str]
    query: dict[str, Any]
    body: Any


Handler = Callable[[Call], Any]


@attrs.frozen
class Answer:
    """A handler's result with a status other than its endpoint's usual one (listed in `also`)."""

    value: Any
    status: int


@attrs.frozen
class Endpoint:
    method: str
    path: str
    handler: Handler
    scope: Literal["read", "write"]
    summary: str
    tag: str
    response: type[Any] | None = None
    status: int = 200
    body: type[Any] | str | None = None
    query: tuple[Param, ...] = ()
    stream: Callable[[Request, Call], Awaitable[Response]] | None = None
    """An operation that answers with its own response (the event stream), on the loop."""
    public: bool = False
    also: tuple[int, ...] = ()
    """Other success statuses the handler may answer with (through `Answer`)."""


def _parse_param(request: Request, p: Param) -> Any:
    raw = request.query_params.getlist(p.name)
    if not raw:
        return [] if p.many else p.default
    if not p.many and len(raw) > 1:
        raise ApiError(400, "bad_request", f"query parameter {p.name!r} given more than once")
    values = [_convert(p, v) for v in raw]
    return values if p.many else values[0]


def _convert(p: Param, raw: str) -> Any:
    if p.kind is int:
        if not raw.lstrip("-").isdigit() or len(raw) > 12:
            raise ApiError(400, "bad_request", f"query parameter {p.name!r} must be an integer")
        value: Any = int(raw)
        if (p.minimum is not None and value < p.minimum) or (
            p.maximum is not None and value > p.maximum
        ):
            raise ApiError(
                400, "bad_request", f"{p.name} must be between {p.minimum} and {p.maximum}"
            )
        return value
    if p.kind is bool:
        if raw not in ("true", "false"):
            raise ApiError(400, "bad_request", f"query parameter {p.name!r} is true or false")
        return raw == "true"
    if len(raw) > 200:
        raise ApiError(400, "bad_request", f"query parameter {p.name!r} is too long")
    pattern = PATTERNS.get(p.name)
    if pattern is not None and not re.fullmatch(pattern, raw):
        raise ApiError(400, "bad_request", f"{p.name} {raw[:70]!r} must match {pattern}")
    if p.choices and raw not in p.choices:
        raise ApiError(400, "bad_request", f"{p.name} must be one of {', '.join(p.choices)}")
    return raw


def _declared_length(request: Request, limit: int) -> None:
    length = request.headers.get("content-length")
    if length is None:
        return
    if not length.isdigit():
        raise ApiError(400, "bad_request", "Content-Length must be a number")
    if int(length) > limit:
        raise ApiError(413, "too_large", f"the body may be at most {limit} bytes")


async def _json_body(request: Request, ctx: ApiContext, kind: type[Any]) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    _declared_length(request, MAX_JSON)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_JSON:
            raise ApiError(413, "too_large", f"the body may be at most {MAX_JSON} bytes")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "bad_request", f"the body is not JSON: {exc}") from None
    try:
        return read_body(ctx.converter, doc, kind)
    except BodyError as exc:
        raise ApiError(
            400, "bad_request", f"the body does not fit {kind.__name__}: {exc}"
        ) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _binary_body(request: Request, ctx: ApiContext) -> Upload:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/octet-stream":
        raise ApiError(415, "unsupported_media_type", "send the file as application/octet-stream")
    limit = ctx.max_image
    _declared_length(request, limit)
    incoming = ctx.platform.data_dir / "api-incoming"
    incoming.mkdir(mode=0o700, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=incoming, prefix="upload-")
    path = Path(name)
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "too_large", f"the file may be at most {limit} bytes")
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise ApiError(400, "bad_request", "the file is empty")
    return Upload(path, size, digest.hexdigest())


def encode(converter: cattrs.Converter, value: Any) -> Any:
    return converter.unstructure(value)


def route(ctx: ApiContext, endpoint: Endpoint, prefix: str) -> Route:
    async def serve(request: Request) -> Response:
        caller = Caller("-", (), False)
        try:
            if not endpoint.public:
                caller = _authenticate(ctx, request)
                _authorize(caller, endpoint, request)
            unknown = set(request.query_params) - {p.name for p in endpoint.query}
            if unknown:
                raise ApiError(
                    400, "bad_request", f"unknown query parameters: {sorted(unknown)[:5]}"
                )
            query = {p.name: _parse_param(request, p) for p in endpoint.query}
            body: Any = None
            if endpoint.body == BINARY:
                body = await _binary_body(request, ctx)
            elif isinstance(endpoint.body, type):
                body = await _json_body(request, ctx, endpoint.body)
            call = Call(ctx, caller, dict(request.path_params), query, body)
            if endpoint.stream is not None:
                return await endpoint.stream(request, call)
            try:
                result = await run_in_threadpool(_run, endpoint.handler, call)
            finally:
                if isinstance(body, Upload):
                    body.path.unlink(missing_ok=True)
        except ApiError as exc:
            await _audit(ctx, request, caller, exc.status, f"{exc.code}: {exc.message}")
            return error_response(exc.status, exc.code, exc.message)
        status = endpoint.status
        if isinstance(result, Answer):
            result, status = result.value, result.status
        await _audit(ctx, request, caller, status, "ok")
        if isinstance(result, Response):
            return result
        if result is None or status == 204:
            return Response(status_code=204)
        return JSONResponse(encode(ctx.converter, result), status_code=status)

    return Route(prefix + endpoint.path, serve, methods=[endpoint.method], name=endpoint.summary)


def _authenticate(ctx: ApiContext, request: Request) -> Caller:
    """The caller, if its token is valid (401 otherwise)."""
    caller = ctx.authenticate(request)
    if caller is None:
        ctx.refusals.note(request.method, request.url.path)
        raise ApiError(401, "unauthorized", "send a valid token: Authorization: Bearer <token>")
    return caller


def _authorize(caller: Caller, endpoint: Endpoint, request: Request) -> None:
    """403 unless the caller's token has the scope (and a cookie change has the header)."""
    if not caller.allows(endpoint.scope):
        raise ApiError(403, "forbidden", f"token {caller.name!r} lacks the {endpoint.scope} scope")
    if (
        caller.via_cookie
        and request.method in UNSAFE
        and request.headers.get(CONSOLE_HEADER) != "1"
    ):
        raise ApiError(
            403, "forbidden", f"a cookie-authenticated change needs the header {CONSOLE_HEADER}: 1"
        )


def _run(handler: Handler, call: Call) -> Any:
    try:
        return handler(call)
    except ApiError:
        raise
    except (ValueError, TypeError) as exc:  # the platform's own checks: RegistryError, ...
        raise ApiError(422, "refused", str(exc)) from None


async def _audit(
    ctx: ApiContext, request: Request, caller: Caller, status: int, result: str
) -> None:
    if request.method not in UNSAFE or caller.name == "-":
        return
    try:
        await run_in_threadpool(
            ctx.audit.record, caller.name, request.method, request.url.path, status, result
        )
    except Exception:  # the answer stands; a store that cannot write says so in the log
        log.exception("api: cannot write the audit record of %s %s", request.method, request.url)
