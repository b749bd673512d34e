"""The console's process: a Starlette application serving the REST API (``/api/v1``, api.py) and
the web pages (web.py) on one cloud database, run by uvicorn (`winstar console`).

:class:`Console` is what both halves share: the node, one transaction per request
(:meth:`Console.run`), who is asking (a Bearer token, or the browser's signed session cookie),
and the cookie's CSRF token. Any number of console processes may serve one cloud: everything they
share (the cookie-signing key, the sign-in throttle, tokens) is in the database.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from winstar_core.console.ops import Ops, principal
from winstar_core.errors import PermissionDenied, WinstarError
from winstar_core.node import CLOUD, Node
from winstar_core.services import auth
from winstar_core.services.cloud import CloudService
from winstar_core.store.models import User

log = logging.getLogger("winstar.console")

T = TypeVar("T")

COOKIE = "winstar_session"
#: a browser session lasts this long after sign-in
SESSION_SECONDS = 12 * 3600
CSRF_HEADER = "x-csrf-token"


class Unauthorized(WinstarError):
    """No credentials, or credentials that name nobody: 401."""


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: the user's id, and how they proved it (``"token"``: a Bearer
    token, ``"cookie"``: the browser's session, with its CSRF token)."""

    user_id: uuid.UUID
    via: str
    csrf: str | None = None


class Console:
    """The state of one console process."""

    def __init__(self, node: Node, *, secure_cookies: bool = False) -> None:
        node.require(CLOUD, "winstar console")
        self.node = node
        self.secure_cookies = secure_cookies
        try:
            with node.db.begin() as session:
                key = auth.console_secret(session)
        except sa.exc.IntegrityError:  # another console process made it at the same moment
            with node.db.begin() as session:
                key = auth.console_secret(session)
        self.signer = URLSafeTimedSerializer(key, salt="winstar-console-session")

    # -- transactions -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def cloud(self) -> Iterator[CloudService]:
        """One transaction: committed when the block ends, rolled back on any error."""
        with self.node.db.begin() as session:
            service = CloudService(session, self.node.platform)
            yield service
            service.outbox.flush(session)

    def run(
        self,
        request: Request,
        work: Callable[[Ops], T],
        *,
        write: bool = False,
        browser_only: bool = False,
        caller: Caller | None = None,
    ) -> T:
        """``work`` for the request's user, in one transaction. A request that changes something
        and is signed in by cookie must carry the session's CSRF token (:meth:`check_csrf`);
        ``browser_only`` work is refused to an API token (a token may not make another: a stolen
        one would outlive its revocation). ``caller``: who the request is from, when the page
        already read it (else read here, in the same transaction)."""
        with self.cloud() as cloud:
            if caller is None:
                caller = self.caller(request, cloud.session)  # in the same transaction
            if write and caller.via == "cookie":
                self.check_csrf(request, caller)
            if browser_only and caller.via != "cookie":
                raise PermissionDenied(
                    "an API token cannot make tokens: sign in to the console, or run `winstar token create`"
                )
            user = cloud.session.get(User, caller.user_id)
            if user is None:
                raise Unauthorized("the user signed in no longer exists: sign in again")
            return work(Ops(cloud, principal(cloud, user)))

    # -- who is asking -----------------------------------------------------------------------------
    def caller(self, request: Request, session: Session | None = None) -> Caller:
        """The request's user: a Bearer token, else the session cookie; :class:`Unauthorized` if
        neither names a user. Read in ``session`` if given, else in a transaction of its own."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("the Authorization header must be 'Bearer TOKEN'")
            with contextlib.ExitStack() as stack:
                if session is None:
                    session = stack.enter_context(self.node.db.begin())
                user = auth.token_user(session, token.strip())
                if user is None:
                    raise Unauthorized("the token is unknown or revoked")
                return Caller(user.id, "token")
        found = self.session_of(request, session)
        if found is None:
            raise Unauthorized("sign in first, or send 'Authorization: Bearer TOKEN'")
        return found

    def session_of(self, request: Request, session: Session | None = None) -> Caller | None:
        """The browser session the request's cookie proves, None if none (missing, forged,
        expired, or made with a password since changed)."""
        raw = request.cookies.get(COOKIE)
        if not raw or len(raw) > 4096:
            return None
        try:
            data = self.signer.loads(raw, max_age=SESSION_SECONDS)
            user_id = uuid.UUID(str(data["u"]))
            mark, csrf = str(data["p"]), str(data["c"])
            generation = int(data.get("g", 0))
        except (BadSignature, KeyError, ValueError, TypeError, AttributeError):
            return None
        # the user's password hash, and the generation of their sessions (Sign out moves it on)
        query = sa.select(User.password, User.session_generation).where(User.id == user_id)
        if session is not None:
            row = session.execute(query).first()
        else:
            with self.node.db.read() as conn:
                row = conn.execute(query).first()
        # a user signed in by a one-time link may have no password: the mark is then of none
        if row is None or not hmac.compare_digest(mark, auth.password_mark(row.password)):
            return None
        if generation != (row.session_generation or 0):
            return None  # signed out since
        return Caller(user_id, "cookie", csrf)

    def check_csrf(self, request: Request, caller: Caller, form_value: str | None = None) -> None:
        """A state-changing request by cookie must echo the session's CSRF token (header
        ``X-CSRF-Token``, or the form field ``csrf``): a page of another site cannot read it."""
        sent = form_value if form_value is not None else request.headers.get(CSRF_HEADER, "")
        if not caller.csrf or not hmac.compare_digest(str(sent), caller.csrf):
            raise CsrfRefused("the request lacks this session's CSRF token: reload the page and try again")

    def start_session(self, response: Response, user: User, request: Request) -> str:
        """Sign ``user``'s browser in: set the session cookie; returns its CSRF token."""
        csrf = secrets.token_urlsafe(24)
        generation = user.session_generation or 0
        value = self.signer.dumps(
            {"u": str(user.id), "p": auth.password_mark(user.password), "c": csrf, "g": generation}
        )
        response.set_cookie(
            COOKIE,
            value,
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="lax",
            secure=self.secure_cookies or request.url.scheme == "https",
            path="/",
        )
        return csrf

    def end_session(self, response: Response, caller: Caller | None = None) -> None:
        """Sign the browser out; with the ``caller`` of a valid session, every session of theirs
        ends on the server too (a copy of the cookie opens nothing after Sign out)."""
        if caller is not None:
            with self.node.db.begin() as session:
                auth.end_sessions(session, caller.user_id)
        response.delete_cookie(COOKIE, path="/")


class SecurityHeaders:
    """Headers every answer carries: never framed (clickjacking), never read as another type than
    it says, and not cached unless it is a static file (answers may hold secrets)."""

    HEADERS = (
        (b"x-frame-options", b"DENY"),
        (b"content-security-policy", b"frame-ancestors 'none'"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [*self.HEADERS, *(() if static else ((b"cache-control", b"no-store"),))]
                headers += [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class CsrfRefused(WinstarError):
    """A cookie-signed change without the session's CSRF token: 403."""


def make_app(node: Node, *, secure_cookies: bool = False) -> Starlette:
    """The console's ASGI application on ``node`` (a cloud database)."""
    from winstar_core.console import api, web

    console = Console(node, secure_cookies=secure_cookies)
    routes = [*api.routes(console), *web.routes(console)]
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])
    app.state.console = console
    return app


def serve(
    node: Node,
    host: str,
    port: int,
    *,
    secure_cookies: bool = False,
    ready: Callable[[str], Any] | None = None,
) -> None:
    """Serve the console on ``host:port`` (0: a free port) until SIGINT/SIGTERM (uvicorn)."""
    import gc
    import signal
    import socket

    import uvicorn

    app = make_app(node, secure_cookies=secure_cookies)
    # what start-up made (modules, the plugins, SQLAlchemy's mappers) lives as long as the process:
    # kept out of the collector's full passes, which a thousand edges' answer would otherwise
    # trigger over it (a p95 of twice the p50)
    gc.collect()
    gc.freeze()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY on accepted connections only for such a socket
    # (else a response's second write waits for the client's delayed ACK: 40 ms a request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise WinstarError(f"cannot serve the console on {host}:{port}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # uvicorn's own records the signal and raises it again once shut down (the process
            # then dies of it); the console, like `winstar run`, ends cleanly with status 0
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: do not wait for open connections
            self.should_exit = True

    server = Server(config)
    if ready is not None:
        original = server.startup

        async def startup(sockets: Any = None) -> None:
            await original(sockets=sockets)
            if server.started:
                ready(f"http://{host if ':' not in host else f'[{host}]'}:{bound}")

        server.startup = startup  # type: ignore[method-assign]
    server.run(sockets=[sock])
