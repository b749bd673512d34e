"""The REST API under ``/api/v1``: each route reads its request (path, query, a JSON body of at
most :data:`MAX_BODY` bytes), runs one :class:`~winstar_core.console.ops.Ops` operation for the
caller in one transaction, and answers its JSON; a refusal is ``{"error": "one line"}`` with the
status of :func:`status_of`, and nothing changed. The routes are listed once (:data:`ENDPOINTS`),
and the OpenAPI description at ``/api/v1/openapi.json`` is made from that list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from winstar_core.console.app import Console, CsrfRefused, Unauthorized
from winstar_core.console.ops import Ops
from winstar_core.entity_types import MAX_DATA_BYTES
from winstar_core.errors import Conflict, InvalidData, NotFound, PermissionDenied, WinstarError
from winstar_core.services.auth import TooManyFailures
from winstar_core.services.views import load_json
from winstar_core.store.models import EVENT_STATUSES

log = logging.getLogger("winstar.console")

PREFIX = "/api/v1"
#: the largest request body read: an entity's data may hold MAX_DATA_BYTES as compact JSON, and
#: a client may indent it
MAX_BODY = 2 * MAX_DATA_BYTES


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    #: ``work(ops, path_params, query, body) -> JSON value``
    work: Callable[[Ops, dict[str, str], Any, Any], Any]
    #: the body's fields (None: the request has no body)
    body: dict[str, str] | None = None
    #: the query's parameters
    query: tuple[str, ...] = ()
    status: int = 200
    #: only for a signed-in browser, not for an API token
    browser_only: bool = False

    @property
    def write(self) -> bool:
        return self.method != "GET"


def _p(name: str) -> Callable[[dict[str, str]], str]:
    return lambda params: params[name]


ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/me", "the caller: user, roles, permissions, the resources they may change",
             lambda o, p, q, b: o.me()),
    # edges
    Endpoint("GET", "/edges", "the edges the caller sees (`edge list` + failed, last_sync)",
             lambda o, p, q, b: o.edges()),
    Endpoint("POST", "/edges", "create an edge; its secret is in the answer, this once",
             lambda o, p, q, b: o.create_edge(_obj(b).get("name"), _obj(b).get("customer")),
             body={"name": "string", "customer": "string (name or id; optional)"}, status=201),
    Endpoint("GET", "/edges/{edge}", "one edge (`edge show`)", lambda o, p, q, b: o.show_edge(p["edge"])),
    Endpoint("DELETE", "/edges/{edge}", "delete an edge, its assignments and downlinks",
             lambda o, p, q, b: o.delete_edge(p["edge"])),
    Endpoint("POST", "/edges/{edge}/secret", "give the edge a new secret (shown this once)",
             lambda o, p, q, b: o.rotate_secret(p["edge"])),
    Endpoint("GET", "/edges/{edge}/downlinks", "the edge's downlinks, newest first (`edge downlinks`)",
             lambda o, p, q, b: o.downlinks(p["edge"], q.get("status"), q.get("limit"), q.get("before")),
             query=("status", "limit", "before")),
    Endpoint("GET", "/edges/{edge}/downlinks/{seq}", "one downlink with its payload decoded",
             lambda o, p, q, b: o.downlink(p["edge"], p["seq"])),
    Endpoint("POST", "/edges/{edge}/downlinks/retry", "queue FAILED downlinks again (all, or seqs)",
             lambda o, p, q, b: o.retry(p["edge"], _obj(b, True).get("seqs")),
             body={"seqs": "array of integers (optional: all failed)"}),
    Endpoint("POST", "/edges/{edge}/downlinks/dismiss", "mark FAILED downlinks dismissed (all, or seqs)",
             lambda o, p, q, b: o.dismiss(p["edge"], _obj(b, True).get("seqs")),
             body={"seqs": "array of integers (optional: all failed)"}),
    Endpoint("POST", "/edges/{edge}/sync", "Sync Edge (`edge sync`)", lambda o, p, q, b: o.sync(p["edge"])),
    Endpoint("GET", "/edges/{edge}/entities", "the entities effectively assigned (`edge entities`)",
             lambda o, p, q, b: o.edge_entities(p["edge"])),
    Endpoint("POST", "/edges/{edge}/assignments", "assign an entity to the edge (`edge assign`)",
             lambda o, p, q, b: o.assign(p["edge"], _obj(b).get("type"), _obj(b).get("ref")),
             body={"type": "string", "ref": "string (name or id)"}),
    Endpoint("DELETE", "/edges/{edge}/assignments/{type}/{ref}", "unassign an entity (`edge unassign`)",
             lambda o, p, q, b: o.unassign(p["edge"], p["type"], p["ref"])),
    # entities
    Endpoint("GET", "/types", "the installed entity types and the fields of their schemas",
             lambda o, p, q, b: o.types()),
    Endpoint("GET", "/entities/{type}", "the entities of a type the caller sees (`entity list`), by name",
             lambda o, p, q, b: o.entities(p["type"], q.get("limit"), q.get("offset")),
             query=("limit", "offset")),
    Endpoint("POST", "/entities/{type}", "create an entity (`entity create`)",
             lambda o, p, q, b: o.create_entity(p["type"], b),
             body={"name": "string", "data": "object", "customer": "string (optional)"}, status=201),
    Endpoint("GET", "/entities/{type}/{ref}", "one entity (`entity show`)",
             lambda o, p, q, b: o.show_entity(p["type"], p["ref"])),
    Endpoint("PATCH", "/entities/{type}/{ref}", "change an entity's name and/or data (`entity update`)",
             lambda o, p, q, b: o.update_entity(p["type"], p["ref"], b),
             body={"name": "string", "data": "object", "replace": "boolean"}),
    Endpoint("DELETE", "/entities/{type}/{ref}", "delete an entity (`entity delete`)",
             lambda o, p, q, b: o.delete_entity(p["type"], p["ref"])),
    Endpoint("GET", "/entities/{type}/{ref}/members", "a container's members (`group members`)",
             lambda o, p, q, b: o.members(p["type"], p["ref"])),
    Endpoint("POST", "/entities/{type}/{ref}/members", "add a member (`group add`)",
             lambda o, p, q, b: o.add_member(p["type"], p["ref"], _obj(b).get("type"), _obj(b).get("ref")),
             body={"type": "string", "ref": "string (name or id)"}),
    Endpoint("DELETE", "/entities/{type}/{ref}/members/{member_type}/{member_ref}",
             "remove a member (`group remove`)",
             lambda o, p, q, b: o.remove_member(p["type"], p["ref"], p["member_type"], p["member_ref"])),
    # users, customers, tokens
    Endpoint("GET", "/users", "the tenant's users (tenant administrators)", lambda o, p, q, b: o.users()),
    Endpoint("POST", "/users", "create a user (tenant administrators)", lambda o, p, q, b: o.create_user(b),
             body={"email": "string", "authority": "TENANT_ADMIN | CUSTOMER_USER", "customer": "string",
                   "roles": "array of strings (PE)", "password": "string (optional)"}, status=201),
    Endpoint("GET", "/customers", "the customers the caller sees", lambda o, p, q, b: o.customers()),
    Endpoint("GET", "/tokens", "the caller's API tokens (never the tokens themselves)",
             lambda o, p, q, b: o.tokens()),
    Endpoint("POST", "/tokens", "a new API token for the caller, shown this once",
             lambda o, p, q, b: o.create_token(_obj(b, True).get("name")),
             body={"name": "string (optional)"}, status=201, browser_only=True),
    Endpoint("DELETE", "/tokens/{token}", "revoke one of the caller's tokens",
             lambda o, p, q, b: o.revoke_token(p["token"])),
]  # fmt: skip


def _obj(body: Any, optional: bool = False) -> dict[str, Any]:
    if body is None and optional:
        return {}
    if not isinstance(body, dict):
        raise WinstarError("the request body must be a JSON object")
    return body


def status_of(exc: WinstarError) -> int:
    """The HTTP status of a refusal."""
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, PermissionDenied | CsrfRefused):
        return 403
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, InvalidData):
        return 422
    if isinstance(exc, TooManyFailures):
        return 429
    return 400


def error_response(exc: WinstarError) -> JSONResponse:
    status = status_of(exc)
    content: dict[str, Any] = {"error": " ".join(str(exc).split()) or type(exc).__name__}
    if isinstance(exc, InvalidData) and isinstance(exc.fields, dict):
        content["fields"] = exc.fields
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(exc, TooManyFailures):
        headers = {"Retry-After": str(exc.wait)}
    return JSONResponse(content, status_code=status, headers=headers)


async def read_json(request: Request) -> Any:
    """The request's JSON body (None when empty); a WinstarError for anything else."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise WinstarError(f"the request body may be at most {MAX_BODY:,} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise WinstarError(f"the request body may be at most {MAX_BODY:,} bytes")
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WinstarError("the request body is not UTF-8 text") from None
    return load_json(text, "the request body", finite=True)


def _handler(console: Console, endpoint: Endpoint) -> Callable[[Request], Any]:
    async def handle(request: Request) -> Response:
        try:
            body = await read_json(request) if endpoint.write else None
            if isinstance(body, dict) and endpoint.body is not None:
                unknown_fields = set(body) - set(endpoint.body)
                if unknown_fields:
                    raise WinstarError(
                        f"unknown field {sorted(unknown_fields)[0]!r}: send {', '.join(endpoint.body)}"
                    )
            elif body not in (None, {}) and endpoint.body is None:
                raise WinstarError(f"{endpoint.method} {PREFIX}{endpoint.path} takes no body")
            params = dict(request.path_params)
            query = request.query_params
            unknown = set(query) - set(endpoint.query)
            if unknown:
                raise WinstarError(f"unknown query parameter {sorted(unknown)[0]!r}")
            value = await run_in_threadpool(
                console.run,
                request,
                lambda ops: endpoint.work(ops, params, query, body),
                write=endpoint.write,
                browser_only=endpoint.browser_only,
            )
        except WinstarError as exc:
            return error_response(exc)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return JSONResponse(
                {"error": "internal error: the console's log has the details"}, status_code=500
            )
        return JSONResponse(value, status_code=endpoint.status)

    return handle


async def not_found(request: Request) -> Response:
    return JSONResponse({"error": f"no such API route: {request.method} {request.url.path}"}, status_code=404)


def routes(console: Console) -> list[Route]:
    """The API's routes, one per (path, method), and its OpenAPI description."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for e in ENDPOINTS:
        by_path.setdefault(e.path, {})[e.method] = e
    out = [Route(PREFIX + "/openapi.json", lambda request: JSONResponse(openapi()), methods=["GET"])]
    for path, methods in by_path.items():
        out.append(Route(PREFIX + path, _dispatch(console, methods), methods=list(methods)))
    out.append(Route(PREFIX + "/{rest:path}", not_found, methods=["GET", "POST", "PATCH", "DELETE", "PUT"]))
    return out


def _dispatch(console: Console, methods: dict[str, Endpoint]) -> Callable[[Request], Any]:
    handlers = {m: _handler(console, e) for m, e in methods.items()}

    async def dispatch(request: Request) -> Response:
        return await handlers[request.method if request.method in handlers else "GET"](request)  # HEAD: GET's

    return dispatch


# -- OpenAPI ----------------------------------------------------------------------------------------
def openapi() -> dict[str, Any]:
    """An OpenAPI 3.1 description of :data:`ENDPOINTS`."""
    error = {"$ref": "#/components/schemas/Error"}
    paths: dict[str, Any] = {}
    for e in ENDPOINTS:
        params = [
            {"name": name[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _placeholders(e.path)
        ]
        for q in e.query:
            schema: dict[str, Any] = {"type": "string"}
            if q == "status":
                schema = {"type": "string", "enum": [s.lower() for s in EVENT_STATUSES]}
            elif q in ("limit", "before"):
                schema = {"type": "integer", "minimum": 1}
            elif q == "offset":
                schema = {"type": "integer", "minimum": 0}
            params.append({"name": q, "in": "query", "required": False, "schema": schema})
        op: dict[str, Any] = {
            "summary": e.summary,
            "operationId": f"{e.method.lower()}_{e.path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "parameters": params,
            "responses": {
                str(e.status): {"description": "OK", "content": {"application/json": {"schema": {}}}},
                **{
                    str(code): {"description": why, "content": {"application/json": {"schema": error}}}
                    for code, why in (
                        (400, "bad input"),
                        (401, "no token, or a bad one"),
                        (403, "not allowed for this user"),
                        (404, "not found (or another tenant's)"),
                        (409, "conflict (a name taken)"),
                        (422, "data the type's schema refuses"),
                    )
                },
            },
        }
        if e.body is not None:
            op["requestBody"] = {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {k: {"description": v} for k, v in e.body.items()},
                        }
                    }
                },
            }
        paths.setdefault(PREFIX + e.path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Winstar Edge console API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "fields": {"type": "object"}},
                    "required": ["error"],
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _placeholders(path: str) -> list[str]:
    return [part for part in path.split("/") if part.startswith("{")]
