"""The OpenAPI 3.1 document, made from the endpoint table and the attrs classes it names, so it
describes exactly what the routes check and answer."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .. import __version__
from .endpoint import BINARY, Endpoint, Param
from .models import LENGTHS, PATTERNS, ErrorBody
from .schema import Schema, Schemas

ERRORS = {
    400: "Malformed or refused input (bad JSON, wrong types, unknown fields, bad names)",
    401: "No token, or an unknown or revoked one",
    403: "The token lacks the scope this call needs",
    404: "No such device, image, campaign or route",
    409: "Conflicts with what exists",
    413: "The body is too large",
    415: "The body has the wrong content type",
    422: "Well-formed, but the platform refuses it",
    504: "The device did not answer an RRPC call within its timeout",
}


def _param(p: Param, where: str = "query") -> Schema:
    kind: Schema = {str: {"type": "string"}, int: {"type": "integer"}, bool: {"type": "boolean"}}[
        p.kind
    ].copy()
    if p.minimum is not None:
        kind["minimum"] = p.minimum
    if p.maximum is not None:
        kind["maximum"] = p.maximum
    if p.choices:
        kind["enum"] = list(p.choices)
    if p.default is not None:
        kind["default"] = p.default
    if p.kind is str:
        kind["maxLength"] = 200
        if p.name in PATTERNS:
            kind.update(pattern=PATTERNS[p.name], maxLength=LENGTHS[p.name])
    schema = {"type": "array", "items": kind} if p.many else kind
    doc: Schema = {"name": p.name, "in": where, "required": False, "schema": schema}
    if p.many:
        doc.update(style="form", explode=True)
    if p.description:
        doc["description"] = p.description
    return doc


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _operation(e: Endpoint, schemas: Schemas) -> Schema:
    error = schemas.ref(ErrorBody)
    names = re.findall(r"{(\w+)}", e.path)
    params = [
        {
            "name": n,
            "in": "path",
            "required": True,
            "schema": {
                "type": "string",
                "pattern": PATTERNS.get(n, "^.+$"),
                "maxLength": LENGTHS.get(n, 64),
            },
        }
        for n in names
    ]
    params += [_param(p) for p in e.query]
    responses: dict[str, Any] = {}
    for status in (e.status, *e.also):
        if e.stream is not None:
            responses[str(status)] = {
                "description": "text/event-stream of step records",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
        elif status == 204 or e.response is None:
            responses[str(status)] = {"description": "Done"}
        else:
            responses[str(status)] = {
                "description": "OK",
                "content": _json(schemas.ref(e.response)),
            }
    for status, text in ERRORS.items():
        if status == 401 and e.public and e.body is None:
            continue
        responses[str(status)] = {"description": text, "content": _json(error)}
    op: Schema = {
        "operationId": re.sub(r"\W+", "_", f"{e.method.lower()}{e.path}").strip("_"),
        "summary": e.summary,
        "tags": [e.tag],
        "parameters": params,
        "responses": responses,
    }
    if not e.public:
        op["description"] = f"Needs a token with the `{e.scope}` scope."
    else:
        op["security"] = []
    if e.body == BINARY:
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    elif isinstance(e.body, type):
        op["requestBody"] = {"required": True, "content": _json(schemas.ref(e.body))}
    return op


def document(endpoints: Iterable[Endpoint], prefix: str) -> Schema:
    schemas = Schemas()
    paths: dict[str, dict[str, Schema]] = {}
    for e in endpoints:
        paths.setdefault(prefix + e.path, {})[e.method.lower()] = _operation(e, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "iotfsm platform management API",
            "version": __version__,
            "description": "Devices, firmware, deployments, campaigns, resources, config, log "
            "levels and the live step trace of an iotfsm platform. Authenticate with "
            "`Authorization: Bearer <token>` (make one with `iotfsm api-token create`).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
