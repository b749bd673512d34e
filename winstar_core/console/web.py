"""The web console's pages: server-rendered HTML (Jinja2, autoescaped) on the same operations as
the REST API (:class:`~winstar_core.console.ops.Ops`), with a little JavaScript
(``static/console.js``) for what must change without a reload: the edges' status, an edge's
details and its Downlinks tab.

Every page needs the browser's session (else: the sign-in page, then back). Every change is a
POST form carrying the session's CSRF token (hidden field ``csrf``), answered by a redirect (303)
to the page to look at next; a one-time thing to show there (an edge's new secret, a new token,
a notice) travels in a short-lived signed cookie (:data:`FLASH`). A refused change draws the
page again with the one-line error at the top, the schema's messages beside the fields they
concern, and what the user typed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from winstar_core.console import forms
from winstar_core.console.api import status_of
from winstar_core.console.app import Caller, Console, CsrfRefused, Unauthorized
from winstar_core.console.ops import DEFAULT_PAGE, Ops
from winstar_core.errors import InvalidData, NotFound, WinstarError
from winstar_core.services import auth
from winstar_core.services.rights import EDGE_RESOURCE, TENANT_ADMIN
from winstar_core.store.models import EVENT_STATUSES, Entity

HERE = Path(__file__).parent
#: the cookie that carries a one-time message to the page a form redirects to
FLASH = "winstar_flash"
FLASH_SECONDS = 120
#: the cookie that pairs the sign-in form with its browser (against login CSRF)
SIGN_IN_COOKIE = "winstar_sign_in"
#: the largest form read (an entity's data is at most 1 MiB as JSON, percent-encoded in a form);
#: the sign-in and sign-out forms hold a few short fields
MAX_FORM = 4 * 2**20
MAX_SMALL_FORM = 64 * 2**10
#: downlinks on one page of the Downlinks tab
PAGE = DEFAULT_PAGE
#: schema fields shown as columns of an entity list
LIST_COLUMNS = 3
AUTHORITIES = (TENANT_ADMIN, "CUSTOMER_USER")

Handler = Callable[["Ctx"], Response]


@dataclass
class Problem:
    """A refused form: which form on the page, the one-line message, messages by input name, and
    what the user had typed."""

    form: str
    message: str
    fields: dict[str, str] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)

    def value(self, name: str, default: str = "") -> str:
        v = self.values.get(name)
        return default if v is None else str(v)


class Ctx:
    """One signed-in page request."""

    def __init__(self, web: Web, request: Request, caller: Caller, form: FormData | None) -> None:
        self.web = web
        self.request = request
        self.caller = caller
        self.form = form

    def run(self, work: Callable[[Ops], Any]) -> Any:
        return self.web.console.run(self.request, work, caller=self.caller)  # read by the view already

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])

    def field(self, name: str) -> str:
        value = self.form.get(name) if self.form is not None else None
        return value.strip() if isinstance(value, str) else ""

    def posted(self) -> dict[str, str]:
        """The posted form's text fields (not the CSRF token)."""
        if self.form is None:
            return {}
        return {k: v for k, v in self.form.items() if isinstance(v, str) and k != "csrf"}

    def problem(self, form: str, exc: WinstarError, fields: dict[str, str] | None = None) -> Problem:
        return Problem(form, one_line(exc), fields or {}, self.posted())

    def render(
        self,
        template: str,
        build: Callable[[Ops], dict[str, Any]] | None = None,
        *,
        status: int = 200,
        **extra: Any,
    ) -> Response:
        """``template`` with the page's frame (the user, the entity types of the nav) and what
        ``build`` reads, in one transaction."""

        def work(ops: Ops) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
            return ops.me(), ops.types(), build(ops) if build is not None else {}

        me, types, values = self.run(work)
        return self.web.page(self.request, template, {**values, **extra}, status, me, types, self.caller)

    def redirect(self, url: str, **flash: Any) -> Response:
        response = RedirectResponse(url, status_code=303)
        if flash:
            self.web.set_flash(response, flash)
        return response


class Web:
    """The pages of one console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        env = self.templates.env
        env.autoescape = True
        env.filters["when"] = when
        env.globals.update(
            statuses=[s.lower() for s in EVENT_STATUSES],
            edge_url=lambda e: "/edges/" + quote(str(e), safe=""),
            entity_url=lambda t, e: f"/entities/{quote(str(t), safe='')}/{quote(str(e), safe='')}",
            type_url=lambda t: "/entities/" + quote(str(t), safe=""),
        )
        self.flash_signer = URLSafeTimedSerializer(console.signer.secret_key, salt="winstar-console-flash")
        key = console.signer.secret_key
        key_bytes = key if isinstance(key, bytes) else str(key).encode()
        self.flash_key = hashlib.sha256(b"winstar-console-flash-sealing\0" + key_bytes).digest()

    # -- the frame of every page ------------------------------------------------------------------
    def page(
        self,
        request: Request,
        template: str,
        values: dict[str, Any],
        status: int,
        me: dict[str, Any] | None,
        types: list[dict[str, Any]],
        caller: Caller | None,
    ) -> Response:
        flash = self.read_flash(request)
        context = {
            "me": me,
            "types": types,
            "may": set(me["may_write"]) if me else set(),
            "admin": bool(me and me["authority"] == TENANT_ADMIN),
            "csrf": caller.csrf if caller else None,
            "flash": flash,
            "path": request.url.path,
            "problem": None,
            **values,
        }
        response = self.templates.TemplateResponse(request, template, context, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if flash is not None:
            response.delete_cookie(FLASH, path="/")
        return response

    def set_flash(self, response: Response, flash: dict[str, Any]) -> None:
        """The one-time message of the next page, sealed: it may carry a new token or an edge's
        secret, which must not travel readable in a Cookie header (proxies and logs keep those)."""
        response.set_cookie(
            FLASH,
            self.flash_signer.dumps(seal(self.flash_key, json.dumps(flash).encode())),
            max_age=FLASH_SECONDS,
            httponly=True,
            samesite="strict",
            secure=self.console.secure_cookies,
            path="/",
        )

    def read_flash(self, request: Request) -> dict[str, Any] | None:
        raw = request.cookies.get(FLASH)
        if not raw:
            return None
        try:
            sealed = self.flash_signer.loads(raw, max_age=FLASH_SECONDS)
            value = json.loads(unseal(self.flash_key, str(sealed)))
        except (BadSignature, ValueError, TypeError):
            return None
        return value if isinstance(value, dict) else None

    def error_page(self, request: Request, caller: Caller | None, exc: WinstarError, status: int) -> Response:
        """The page that says why a request was refused (with the frame when the user is known)."""
        me: dict[str, Any] | None = None
        types: list[dict[str, Any]] = []
        if caller is not None:
            with contextlib.suppress(WinstarError):  # the page says why, with or without its frame
                me, types = self.console.run(request, lambda ops: (ops.me(), ops.types()))
        return self.page(
            request, "error.html", {"status": status, "message": one_line(exc)}, status, me, types, caller
        )

    # -- the wrapper of every signed-in page ------------------------------------------------------
    def view(self, handler: Handler, *, fragment: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """An endpoint that runs ``handler`` for the signed-in user (in a worker thread): without a
        session, the sign-in page (a fragment: 401); a POST must carry the session's CSRF token."""

        async def endpoint(request: Request) -> Response:
            caller = await run_in_threadpool(self.console.session_of, request)
            if caller is None:
                if fragment:
                    return Response("sign in again", status_code=401, media_type="text/plain")
                if request.method != "GET":
                    return RedirectResponse("/sign-in", status_code=303)
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse("/sign-in?" + urlencode({"next": target}), status_code=303)
            form = None
            if request.method == "POST":
                try:
                    form = await read_form(request, MAX_FORM, max_fields=2000)
                except FormTooLarge as exc:
                    return await run_in_threadpool(self.error_page, request, caller, exc, 413)
                token = form.get("csrf")
                try:
                    self.console.check_csrf(request, caller, token if isinstance(token, str) else "")
                except CsrfRefused as exc:
                    return await run_in_threadpool(self.error_page, request, caller, exc, 403)
            try:
                return await run_in_threadpool(handler, Ctx(self, request, caller, form))
            except Unauthorized:
                return RedirectResponse("/sign-in", status_code=303)
            except WinstarError as exc:
                if fragment:
                    return Response(one_line(exc), status_code=status_of(exc), media_type="text/plain")
                return await run_in_threadpool(self.error_page, request, caller, exc, status_of(exc))

        return endpoint

    # -- sign-in ----------------------------------------------------------------------------------
    async def sign_in_form(self, request: Request) -> Response:
        target = safe_next(request.query_params.get("next"))
        caller = await run_in_threadpool(self.console.session_of, request)
        if caller is not None:
            return RedirectResponse(target, status_code=303)
        return self.sign_in_page(request, target)

    def sign_in_page(
        self, request: Request, target: str, *, email: str = "", error: str | None = None, status: int = 200
    ) -> Response:
        pairing = request.cookies.get(SIGN_IN_COOKIE) or uuid.uuid4().hex
        response = self.page(
            request,
            "sign_in.html",
            {"next": target, "email": email, "error": error, "pairing": pairing},
            status,
            None,
            [],
            None,
        )
        response.set_cookie(SIGN_IN_COOKIE, pairing, httponly=True, samesite="strict", path="/sign-in")
        return response

    async def sign_in(self, request: Request) -> Response:
        try:
            form = await read_form(request, MAX_SMALL_FORM, max_fields=20)
        except FormTooLarge as exc:
            return Response(one_line(exc), status_code=413, media_type="text/plain")
        email = str(form.get("email") or "").strip()
        password = str(form.get("password") or "")
        target = safe_next(str(form.get("next") or ""))
        pairing = request.cookies.get(SIGN_IN_COOKIE)
        if not pairing or form.get("pairing") != pairing:
            return self.sign_in_page(
                request, target, email=email, error="this sign-in form has expired: try again", status=403
            )
        response = RedirectResponse(target, status_code=303)

        def attempt() -> WinstarError | None:
            with self.console.node.db.begin() as session:
                try:
                    user = auth.sign_in(session, email, password)
                except WinstarError as exc:  # the failure count commits with the block
                    return exc
                self.console.start_session(response, user, request)
            return None

        refused = await run_in_threadpool(attempt)
        if refused is not None:
            status = 429 if isinstance(refused, auth.TooManyFailures) else 401
            return self.sign_in_page(request, target, email=email, error=one_line(refused), status=status)
        response.delete_cookie(SIGN_IN_COOKIE, path="/sign-in")
        return response

    async def sign_in_link(self, request: Request) -> Response:
        token = str(request.path_params["token"])
        response = RedirectResponse("/edges", status_code=303)

        def use() -> bool:
            with self.console.node.db.begin() as session:
                user = auth.use_sign_in_link(session, token)
                if user is None:
                    return False
                self.console.start_session(response, user, request)
            return True

        if not await run_in_threadpool(use):
            return self.sign_in_page(
                request, "/edges", error="this sign-in link is unknown, used or expired", status=404
            )
        return response

    async def sign_out(self, request: Request) -> Response:
        caller = await run_in_threadpool(self.console.session_of, request)
        response = RedirectResponse("/sign-in", status_code=303)
        if caller is not None:
            try:
                form = await read_form(request, MAX_SMALL_FORM, max_fields=20)
            except FormTooLarge as exc:
                return Response(one_line(exc), status_code=413, media_type="text/plain")
            token = form.get("csrf")
            try:
                self.console.check_csrf(request, caller, token if isinstance(token, str) else "")
            except CsrfRefused as exc:
                return await run_in_threadpool(self.error_page, request, caller, exc, 403)
        await run_in_threadpool(self.console.end_session, response, caller)
        return response

    async def not_found(self, request: Request) -> Response:
        caller = await run_in_threadpool(self.console.session_of, request)
        exc = NotFound(f"no page {request.url.path}")
        return await run_in_threadpool(self.error_page, request, caller, exc, 404)


# -- edges -------------------------------------------------------------------------------------------
def edges_page(ctx: Ctx, problem: Problem | None = None, status: int = 200) -> Response:
    def build(ops: Ops) -> dict[str, Any]:
        admin = ops.who.admin
        return {"edges": ops.edges(), "customers": customer_names(ops) if admin else {}}

    return ctx.render("edges.html", build, status=status, problem=problem, nav="edges")


def create_edge(ctx: Ctx) -> Response:
    name, customer = ctx.field("name"), ctx.field("customer") or None
    try:
        made = ctx.run(lambda ops: ops.create_edge(name, customer))
    except WinstarError as exc:
        return edges_page(ctx, ctx.problem("new-edge", exc), status_of(exc))
    return ctx.redirect(
        "/edges/" + made["id"],
        notice=f"Edge {made['name']} created.",
        secret={
            "what": "edge",
            "name": made["name"],
            "routing_key": made["routing_key"],
            "secret": made["secret"],
        },
    )


def edge_page(
    ctx: Ctx, tab: str = "downlinks", problem: Problem | None = None, status: int = 200
) -> Response:
    ref = ctx.param("edge")
    query = ctx.request.query_params
    state, before = query.get("status") or "", query.get("before") or ""

    def build(ops: Ops) -> dict[str, Any]:
        edge = ops.show_edge(ref)
        out: dict[str, Any] = {"edge": edge, "tab": tab, "filter": state.lower(), "before": before}
        if tab == "downlinks":
            out.update(downlink_page(ops, ref, state, before))
        else:
            out["entities"] = edge_entities(ops, ref)
        if ops.who.admin and edge["customer_id"]:
            out["customer"] = customer_names(ops).get(edge["customer_id"])
        return out

    return ctx.render("edge.html", build, status=status, problem=problem, nav="edges")


def downlink_page(ops: Ops, ref: str, state: str, before: str) -> dict[str, Any]:
    """A page of downlinks, and the seq the next (older) page starts below, if there is one."""
    rows = ops.downlinks(ref, state or None, PAGE + 1, before or None)
    older = rows[PAGE - 1]["seq"] if len(rows) > PAGE else None
    rows = rows[:PAGE]
    ids = {uuid.UUID(r["entity_id"]) for r in rows if r["entity_id"]}
    names = {}
    if ids:
        stmt = sa.select(Entity.id, Entity.name).where(
            Entity.id.in_(ids), Entity.tenant_id == ops.who.tenant_id
        )
        names = {str(i): n for i, n in ops.session.execute(stmt)}
    return {"downlinks": rows, "older": older, "names": names}


def downlink_rows(ctx: Ctx) -> Response:
    """The Downlinks tab's rows, as HTML, for its live refresh."""
    ref = ctx.param("edge")
    query = ctx.request.query_params
    state, before = query.get("status") or "", query.get("before") or ""

    def build(ops: Ops) -> dict[str, Any]:
        may = {EDGE_RESOURCE} if ops.who.may_write(EDGE_RESOURCE) else set()
        return {"edge": ops.show_edge(ref), "may": may, **downlink_page(ops, ref, state, before)}

    context = {**ctx.run(build), "csrf": ctx.caller.csrf}
    response = ctx.web.templates.TemplateResponse(ctx.request, "_downlink_rows.html", context)
    response.headers["Cache-Control"] = "no-store"
    return response


def edge_entities(ops: Ops, ref: str) -> list[dict[str, Any]]:
    """The entities effectively assigned to the edge, each marked ``direct`` when it is assigned
    itself (not only through a container): only those can be unassigned."""
    return ops.edge_entities(ref)


def edge_action(
    work: Callable[[Ops, str], dict[str, Any]],
    notice: Callable[[dict[str, Any]], str],
    *,
    form: str = "actions",
    tab: str = "downlinks",
    secret: bool = False,
) -> Handler:
    """A POST on one edge: ``work(ops, ref)``, then back to the edge's tab with ``notice``."""

    def handle(ctx: Ctx) -> Response:
        ref = ctx.param("edge")
        try:
            result = ctx.run(lambda ops: work(ops, ref))
        except WinstarError as exc:
            if isinstance(exc, Unauthorized):
                raise
            # drawn again with the error (an edge the user cannot see is not found there)
            return edge_page(ctx, tab, ctx.problem(form, exc), status_of(exc))
        back = "/edges/" + quote(ref, safe="") + ("/entities" if tab == "entities" else "")
        flash: dict[str, Any] = {"notice": notice(result)}
        if secret:
            flash["secret"] = {
                "what": "edge",
                "routing_key": result["routing_key"],
                "secret": result["secret"],
            }
        return ctx.redirect(back, **flash)

    return handle


def seqs_of(ctx: Ctx) -> list[int] | None:
    """The ``seq`` fields of a Retry/Dismiss form (none: every failed downlink)."""
    if ctx.form is None:
        return None
    raw = [v for v in ctx.form.getlist("seq") if isinstance(v, str) and v.strip()]
    if not raw:
        return None
    out = []
    for v in raw:
        if not v.strip().isdigit():
            raise WinstarError(f"seq {v!r} is not a downlink's seq")
        out.append(int(v))
    return out


def delete_edge(ctx: Ctx) -> Response:
    ref = ctx.param("edge")
    try:
        name = ctx.run(lambda ops: (ops.edge(ref).name, ops.delete_edge(ref))[0])
    except WinstarError as exc:
        if isinstance(exc, Unauthorized):
            raise
        return edge_page(ctx, "downlinks", ctx.problem("actions", exc), status_of(exc))
    return ctx.redirect("/edges", notice=f"Edge {name} deleted.")


# -- entities ----------------------------------------------------------------------------------------
def type_of(ops: Ops, type_name: str) -> dict[str, Any]:
    for t in ops.types():
        if t["type"] == type_name:
            return t
    ops.cloud.types.get(type_name)  # the core's own "unknown entity type" message
    raise NotFound(f"unknown entity type {type_name!r}")


#: entities listed on one page of a type (the next ones: "more")
ENTITY_PAGE = 100


def list_columns(etype: dict[str, Any]) -> list[dict[str, Any]]:
    """The first few fields of a type that fit in a table cell."""
    simple = [
        f for f in etype["fields"] if f.get("fields") is None and f["kind"] not in ("object", "array", "any")
    ]
    return simple[:LIST_COLUMNS]


def entities_page(ctx: Ctx, problem: Problem | None = None, status: int = 200) -> Response:
    type_name = ctx.param("type")
    raw = ctx.request.query_params.get("offset", "0")
    offset = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 10 else 0

    def build(ops: Ops) -> dict[str, Any]:
        etype = type_of(ops, type_name)
        posted = problem.values if problem is not None else None
        page = ops.entities(type_name, ENTITY_PAGE + 1, offset)
        return {
            "etype": etype,
            "columns": list_columns(etype),
            "entities": page[:ENTITY_PAGE],
            "offset": offset,
            "more": len(page) > ENTITY_PAGE,
            "page_size": ENTITY_PAGE,
            "customers": customer_names(ops) if ops.who.admin else {},
            "inputs": forms.inputs(
                etype["fields"], posted=posted, errors=problem.fields if problem is not None else None
            ),
        }

    return ctx.render("entities.html", build, status=status, problem=problem, nav="type:" + type_name)


def posted_data(ctx: Ctx, etype: dict[str, Any]) -> dict[str, Any]:
    """The data of a posted entity form; :class:`InvalidData` with the fields that do not parse."""
    try:
        return forms.parse(etype["fields"], ctx.posted())
    except forms.FormErrors as exc:
        raise UnreadableForm(exc.errors) from None


class UnreadableForm(InvalidData):
    """A posted entity form with inputs that do not parse (JSON): messages by input name."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(
            "some fields cannot be read: " + "; ".join(f"{k}: {v}" for k, v in errors.items()), errors
        )
        self.errors = errors


def refused(ctx: Ctx, form: str, exc: WinstarError, fields: list[dict[str, Any]] | None) -> Problem:
    """``exc`` as a :class:`Problem` of ``form``, with the schema's messages on their inputs."""
    by_name: dict[str, str] = {}
    if isinstance(exc, UnreadableForm):
        by_name = exc.errors
    elif isinstance(exc, InvalidData) and fields is not None and exc.fields:
        by_name, _ = forms.field_errors(fields, exc.fields)
    return ctx.problem(form, exc, by_name)


def create_entity(ctx: Ctx) -> Response:
    type_name = ctx.param("type")
    fields: list[dict[str, Any]] | None = None

    def work(ops: Ops) -> dict[str, Any]:
        nonlocal fields
        etype = type_of(ops, type_name)
        fields = etype["fields"]
        body = {
            "name": ctx.field("name"),
            "data": posted_data(ctx, etype),
            "customer": ctx.field("customer") or None,
        }
        return ops.create_entity(type_name, body)

    try:
        made = ctx.run(work)
    except WinstarError as exc:
        if isinstance(exc, Unauthorized) or fields is None:
            raise
        return entities_page(ctx, refused(ctx, "new", exc, fields), status_of(exc))
    return ctx.redirect(entity_path(type_name, made["id"]), notice=f"{type_name} {made['name']} created.")


def entity_path(type_name: str, ref: str) -> str:
    return f"/entities/{quote(type_name, safe='')}/{quote(ref, safe='')}"


def entity_page(ctx: Ctx, problem: Problem | None = None, status: int = 200) -> Response:
    type_name, ref = ctx.param("type"), ctx.param("ref")

    def build(ops: Ops) -> dict[str, Any]:
        etype = type_of(ops, type_name)
        entity = ops.show_entity(type_name, ref)
        editing = problem is not None and problem.form == "edit"
        out: dict[str, Any] = {
            "etype": etype,
            "entity": entity,
            "inputs": forms.inputs(
                etype["fields"],
                data=None if editing else (entity["data"] or {}),
                posted=problem.values if editing and problem is not None else None,
                errors=problem.fields if editing and problem is not None else None,
            ),
            "customers": customer_names(ops) if ops.who.admin else {},
        }
        if etype["container"]:
            out["members"] = ops.members(type_name, ref)
            values = {str(v) for v in (entity["data"] or {}).values() if isinstance(v, str)}
            out["member_type"] = next((t["type"] for t in ops.types() if t["type"] in values), "")
        return out

    return ctx.render("entity.html", build, status=status, problem=problem, nav="type:" + type_name)


def update_entity(ctx: Ctx) -> Response:
    type_name, ref = ctx.param("type"), ctx.param("ref")
    fields: list[dict[str, Any]] | None = None

    def work(ops: Ops) -> dict[str, Any]:
        nonlocal fields
        etype = type_of(ops, type_name)
        ops.entity(type_name, ref)  # an entity the user cannot see: not found, before the form's errors
        fields = etype["fields"]
        body = {"name": ctx.field("name") or None, "data": posted_data(ctx, etype)}
        return ops.update_entity(type_name, ref, body)

    try:
        done = ctx.run(work)
    except WinstarError as exc:
        if isinstance(exc, Unauthorized | NotFound) or fields is None:
            raise
        return entity_page(ctx, refused(ctx, "edit", exc, fields), status_of(exc))
    return ctx.redirect(entity_path(type_name, done["id"]), notice=f"{type_name} {done['name']} saved.")


def entity_action(
    work: Callable[[Ctx, Ops, str, str], dict[str, Any]],
    notice: Callable[[dict[str, Any]], str],
    form: str,
    *,
    back_to_list: bool = False,
) -> Handler:
    def handle(ctx: Ctx) -> Response:
        type_name, ref = ctx.param("type"), ctx.param("ref")
        try:
            result = ctx.run(lambda ops: work(ctx, ops, type_name, ref))
        except WinstarError as exc:
            if isinstance(exc, Unauthorized):
                raise
            return entity_page(ctx, ctx.problem(form, exc), status_of(exc))
        back = f"/entities/{quote(type_name, safe='')}" if back_to_list else entity_path(type_name, ref)
        return ctx.redirect(back, notice=notice(result))

    return handle


# -- users and tokens ----------------------------------------------------------------------------------
def users_page(ctx: Ctx, problem: Problem | None = None, status: int = 200) -> Response:
    def build(ops: Ops) -> dict[str, Any]:
        return {"users": ops.users(), "customers": customer_names(ops), "authorities": AUTHORITIES}

    return ctx.render("users.html", build, status=status, problem=problem, nav="users")


def create_user(ctx: Ctx) -> Response:
    body: dict[str, Any] = {
        "email": ctx.field("email"),
        "authority": ctx.field("authority"),
        "customer": ctx.field("customer") or None,
        "roles": [r.strip() for r in ctx.field("roles").split(",") if r.strip()],
    }
    if ctx.form is not None and ctx.form.get("password"):
        body["password"] = str(ctx.form.get("password"))
    try:
        made = ctx.run(lambda ops: ops.create_user(body))
    except WinstarError as exc:
        if isinstance(exc, Unauthorized):
            raise
        problem = ctx.problem("new-user", exc)
        problem.values = {k: v for k, v in problem.values.items() if k != "password"}
        return users_page(ctx, problem, status_of(exc))
    return ctx.redirect("/users", notice=f"User {made['email']} created.")


def tokens_page(ctx: Ctx, problem: Problem | None = None, status: int = 200) -> Response:
    return ctx.render(
        "tokens.html", lambda ops: {"tokens": ops.tokens()}, status=status, problem=problem, nav="tokens"
    )


def create_token(ctx: Ctx) -> Response:
    name = ctx.field("name") or None
    try:
        made = ctx.run(lambda ops: ops.create_token(name))
    except WinstarError as exc:
        if isinstance(exc, Unauthorized):
            raise
        return tokens_page(ctx, ctx.problem("new-token", exc), status_of(exc))
    return ctx.redirect(
        "/tokens",
        notice=f"Token {made['name'] or ''} created.",
        secret={"what": "token", "name": made["name"], "token": made["token"]},
    )


def revoke_token(ctx: Ctx) -> Response:
    ref = ctx.param("token")
    try:
        ctx.run(lambda ops: ops.revoke_token(ref))
    except WinstarError as exc:
        if isinstance(exc, Unauthorized):
            raise
        return tokens_page(ctx, ctx.problem("tokens", exc), status_of(exc))
    return ctx.redirect("/tokens", notice="Token revoked.")


# -- helpers -------------------------------------------------------------------------------------------
class FormTooLarge(WinstarError):
    """A posted form larger than its page takes: refused before it is read (413)."""


async def read_form(request: Request, max_bytes: int, *, max_fields: int) -> FormData:
    """The posted form, at most ``max_bytes`` of body (else :class:`FormTooLarge`, whether the
    Content-Length says so or the body turns out longer), without files."""
    too_large = FormTooLarge(f"the form may be at most {max_bytes:,} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise too_large
    seen = 0

    async def receive() -> Any:
        nonlocal seen
        message = await request.receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise too_large
        return message

    return await Request(request.scope, receive).form(max_files=0, max_fields=max_fields)


def _keystream(key: bytes, nonce: bytes, size: int) -> bytes:
    out = bytearray()
    block = 0
    while len(out) < size:
        out += hashlib.blake2b(nonce + block.to_bytes(8, "big"), key=key, digest_size=64).digest()
        block += 1
    return bytes(out[:size])


def seal(key: bytes, plain: bytes) -> str:
    """``plain`` enciphered (BLAKE2b keyed, in counter mode, under a fresh nonce); the flash
    signer authenticates the result."""
    nonce = secrets.token_bytes(16)
    body = bytes(a ^ b for a, b in zip(plain, _keystream(key, nonce, len(plain)), strict=True))
    return base64.urlsafe_b64encode(nonce + body).decode("ascii")


def unseal(key: bytes, sealed: str) -> bytes:
    raw = base64.urlsafe_b64decode(sealed.encode("ascii"))
    nonce, body = raw[:16], raw[16:]
    if len(nonce) != 16:
        raise ValueError("not a sealed value")
    return bytes(a ^ b for a, b in zip(body, _keystream(key, nonce, len(body)), strict=True))


def customer_names(ops: Ops) -> dict[str, str]:
    return {c["id"]: c["name"] for c in ops.customers()}


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this site only (never ``//host`` or a URL)."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 32 for c in target)
        or target.startswith("/sign-")
    ):
        return "/edges"
    return target


def when(iso: str | None) -> str:
    """ISO 8601 (``...Z``) as ``2024-05-01 12:03:04 UTC``; an em dash for None."""
    if not iso:
        return "—"
    return iso.replace("T", " ")[:19] + " UTC"


def _redirect(url: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return RedirectResponse(url, status_code=303)

    return endpoint


def routes(console: Console) -> list[BaseRoute]:
    """The console's pages, its static files under ``/static``, and a page for what is not here."""
    web = Web(console)
    v = web.view

    def assign(ops: Ops, ref: str, ctx_form: dict[str, str]) -> dict[str, Any]:
        return ops.assign(ref, ctx_form.get("type", ""), ctx_form.get("ref", ""))

    def form_action(
        work: Callable[[Ctx, Ops, str], dict[str, Any]],
        notice: Callable[[dict[str, Any]], str],
        **kw: Any,
    ) -> Handler:
        """An edge action whose work reads the posted form."""

        def handle(ctx: Ctx) -> Response:
            return edge_action(lambda ops, ref: work(ctx, ops, ref), notice, **kw)(ctx)

        return handle

    return [
        Route("/", _redirect("/edges"), methods=["GET"]),
        Route("/sign-in", web.sign_in_form, methods=["GET"]),
        Route("/sign-in", web.sign_in, methods=["POST"]),
        Route("/sign-in/link/{token}", web.sign_in_link, methods=["GET"]),
        Route("/sign-out", web.sign_out, methods=["POST"]),
        Route("/edges", v(edges_page), methods=["GET"]),
        Route("/edges", v(create_edge), methods=["POST"]),
        Route("/edges/{edge}", v(edge_page), methods=["GET"]),
        Route("/edges/{edge}/entities", v(lambda ctx: edge_page(ctx, "entities")), methods=["GET"]),
        Route("/edges/{edge}/downlinks/rows", v(downlink_rows, fragment=True), methods=["GET"]),
        Route(
            "/edges/{edge}/sync",
            v(edge_action(lambda ops, ref: ops.sync(ref), lambda r: "Sync Edge requested.")),
            methods=["POST"],
        ),
        Route(
            "/edges/{edge}/secret",
            v(
                edge_action(
                    lambda ops, ref: ops.rotate_secret(ref),
                    lambda r: "The edge has a new secret: the old one no longer connects.",
                    secret=True,
                )
            ),
            methods=["POST"],
        ),
        Route("/edges/{edge}/delete", v(delete_edge), methods=["POST"]),
        Route(
            "/edges/{edge}/retry",
            v(
                form_action(
                    lambda ctx, ops, ref: ops.retry(ref, seqs_of(ctx)),
                    lambda r: f"{r['retried']} failed downlink(s) queued again.",
                    form="failed",
                )
            ),
            methods=["POST"],
        ),
        Route(
            "/edges/{edge}/dismiss",
            v(
                form_action(
                    lambda ctx, ops, ref: ops.dismiss(ref, seqs_of(ctx)),
                    lambda r: f"{r['dismissed']} failed downlink(s) dismissed.",
                    form="failed",
                )
            ),
            methods=["POST"],
        ),
        Route(
            "/edges/{edge}/assign",
            v(
                form_action(
                    lambda ctx, ops, ref: assign(ops, ref, ctx.posted()),
                    lambda r: f"Assigned the {r['type']}.",
                    form="assign",
                    tab="entities",
                )
            ),
            methods=["POST"],
        ),
        Route(
            "/edges/{edge}/unassign",
            v(
                form_action(
                    lambda ctx, ops, ref: ops.unassign(ref, ctx.field("type"), ctx.field("ref")),
                    lambda r: f"Unassigned the {r['type']}.",
                    form="assign",
                    tab="entities",
                )
            ),
            methods=["POST"],
        ),
        Route("/entities/{type}", v(entities_page), methods=["GET"]),
        Route("/entities/{type}", v(create_entity), methods=["POST"]),
        Route("/entities/{type}/{ref}", v(entity_page), methods=["GET"]),
        Route("/entities/{type}/{ref}", v(update_entity), methods=["POST"]),
        Route(
            "/entities/{type}/{ref}/delete",
            v(
                entity_action(
                    lambda ctx, ops, t, ref: ops.delete_entity(t, ref),
                    lambda r: "Deleted.",
                    "actions",
                    back_to_list=True,
                )
            ),
            methods=["POST"],
        ),
        Route(
            "/entities/{type}/{ref}/members",
            v(
                entity_action(
                    lambda ctx, ops, t, ref: ops.add_member(
                        t, ref, ctx.field("member_type"), ctx.field("member_ref")
                    ),
                    lambda r: "Member added.",
                    "members",
                )
            ),
            methods=["POST"],
        ),
        Route(
            "/entities/{type}/{ref}/members/remove",
            v(
                entity_action(
                    lambda ctx, ops, t, ref: ops.remove_member(
                        t, ref, ctx.field("member_type"), ctx.field("member_ref")
                    ),
                    lambda r: "Member removed.",
                    "members",
                )
            ),
            methods=["POST"],
        ),
        Route("/users", v(users_page), methods=["GET"]),
        Route("/users", v(create_user), methods=["POST"]),
        Route("/tokens", v(tokens_page), methods=["GET"]),
        Route("/tokens", v(create_token), methods=["POST"]),
        Route("/tokens/{token}/revoke", v(revoke_token), methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
        Route("/{rest:path}", web.not_found, methods=["GET", "POST"]),
    ]
