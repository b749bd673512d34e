"""Who is asking, on the console: passwords (salted scrypt), the slow-down of failed sign-ins,
API tokens (kept as their SHA-256), one-time sign-in links, the browser's session cookie with its
CSRF token, and the CLI that sets passwords and makes and revokes tokens."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from console_world import PASSWORD, ConsoleWorld
from itsdangerous import URLSafeTimedSerializer
from starlette.requests import Request

from winstar_core.cli import build_cli
from winstar_core.console.app import COOKIE, CSRF_HEADER, Console
from winstar_core.errors import NotFound, WinstarError
from winstar_core.node import Node
from winstar_core.plugin.manager import Platform
from winstar_core.services import auth
from winstar_core.store.models import ApiToken, SignInLink, SignInThrottle, User

ADMIN = "admin@acme.test"


def make_admin(node: Node, password: str | None = PASSWORD) -> uuid.UUID:
    """Tenant "acme" with its administrator (with ``password``) and a user without one."""
    with node.cloud() as c:
        acme = c.create_tenant("acme")
        user = c.create_user(ADMIN, acme, "TENANT_ADMIN")
        c.create_user("nopass@acme.test", acme, "TENANT_ADMIN")
        if password is not None:
            auth.set_password(c.session, user, password)
        return user.id


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the scrypt computations of :mod:`auth` (a counter around the real function)."""
    calls: list[int] = []
    real = auth._scrypt

    def counted(*args: Any, **kw: Any) -> bytes:
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(auth, "_scrypt", counted)
    return calls


def attempt(node: Node, email: str, password: str) -> str | User:
    """One sign-in in a transaction of its own, committed whatever the answer (as the sign-in page
    does: a failure must be counted); the user, or the refusal's class and line."""
    with node.db.begin() as s:
        try:
            user = auth.sign_in(s, email, password)
            s.expunge(user)
            return user
        except auth.TooManyFailures as exc:
            return f"TooManyFailures: {exc}"
        except WinstarError as exc:
            return f"WinstarError: {exc}"


# --------------------------------------------------------------------------------------------------
# Passwords
# --------------------------------------------------------------------------------------------------


def test_a_password_is_kept_as_salted_scrypt(scrypt_calls: list[int]) -> None:
    stored = auth.hash_password(PASSWORD)
    m = re.fullmatch(r"scrypt\$(\d+)\$(\d+)\$(\d+)\$([0-9a-f]{32})\$([0-9a-f]{128})", stored)
    assert m, stored
    n, r, p = int(m[1]), int(m[2]), int(m[3])
    assert (n, r, p) == (auth.PASSWORD_SCRYPT["n"], auth.PASSWORD_SCRYPT["r"], auth.PASSWORD_SCRYPT["p"])
    assert n >= 2**15, "a person's password deserves a slow hash"
    assert bytes.fromhex(m[5]) == hashlib.scrypt(
        PASSWORD.encode(), salt=bytes.fromhex(m[4]), n=n, r=r, p=p, dklen=64, maxmem=256 * 2**20
    )
    again = auth.hash_password(PASSWORD)
    assert again != stored and again.split("$")[4] != m[4], "each hash has its own salt"
    assert auth.check_password(stored, PASSWORD)
    assert not auth.check_password(stored, PASSWORD + "x")
    assert not auth.check_password(stored, "")
    assert not auth.check_password(None, PASSWORD)
    assert not auth.check_password("md5$abc", PASSWORD)
    assert not auth.check_password(stored, PASSWORD + "x" * 2000)  # too long: not even hashed
    # every check costs exactly one scrypt, whatever is stored (none, garbage, a real hash)
    assert len(scrypt_calls) == 2 + 6


def test_new_passwords_are_checked_before_hashing(scrypt_calls: list[int]) -> None:
    assert auth.check_new_password("p" * auth.MAX_PASSWORD) == "p" * auth.MAX_PASSWORD
    assert auth.check_new_password("a" * auth.MIN_PASSWORD)
    for bad in ("p" * (auth.MAX_PASSWORD + 1), "p" * 10**6, "with\x00a NUL", "\x00" * 10, "short",
                "", "\ud800" * 10):  # fmt: skip
        with pytest.raises(WinstarError) as refused:
            auth.check_new_password(bad)
        assert "\n" not in str(refused.value) and str(refused.value)
    assert scrypt_calls == []  # refused before any work


def test_an_unknown_email_and_a_wrong_password_answer_alike(
    cloud_node: Node, scrypt_calls: list[int]
) -> None:
    make_admin(cloud_node)
    answers: list[Any] = []
    for email, password in [
        ("nobody@acme.test", PASSWORD),  # no such user
        (ADMIN, "wrong password"),  # a wrong password
        ("nopass@acme.test", PASSWORD),  # a user without a password
        ("", PASSWORD),
    ]:
        scrypt_calls.clear()
        answers.append(attempt(cloud_node, email, password))
        assert len(scrypt_calls) == 1, (email, len(scrypt_calls))
    assert answers[0].startswith("WinstarError: ") and len(set(answers)) == 1, answers
    scrypt_calls.clear()
    user = attempt(cloud_node, ADMIN, PASSWORD)
    assert isinstance(user, User) and user.email == ADMIN and len(scrypt_calls) == 1


def test_failed_sign_ins_are_slowed_down_for_every_console_process(
    cloud_node: Node, platform: Platform, scrypt_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_admin(cloud_node)
    scrypt_calls.clear()
    for _ in range(auth.FREE_FAILURES):
        assert attempt(cloud_node, ADMIN, "wrong password") == "WinstarError: wrong email or password"
    assert len(scrypt_calls) == auth.FREE_FAILURES
    scrypt_calls.clear()
    # the next attempt is refused before the password is looked at, even the right one
    assert attempt(cloud_node, ADMIN, PASSWORD).startswith("TooManyFailures: ")
    assert attempt(cloud_node, f"  {ADMIN.upper()} ", PASSWORD).startswith("TooManyFailures: ")  # same email
    with cloud_node.db.begin() as s, pytest.raises(auth.TooManyFailures) as refused:
        auth.sign_in(s, ADMIN, PASSWORD)
    assert refused.value.wait >= 1
    # another process on the same database sees the same count
    other = Node(cloud_node.url, platform=platform)
    try:
        assert attempt(other, ADMIN, PASSWORD).startswith("TooManyFailures: ")
    finally:
        other.close()
    assert scrypt_calls == []
    # another email is not slowed down
    assert attempt(cloud_node, "nopass@acme.test", "x" * 10) == "WinstarError: wrong email or password"
    # the throttle keeps no email, only its hash
    with cloud_node.db.begin() as s:
        keys = list(s.scalars(sa.select(SignInThrottle.key)))
        assert all(ADMIN not in k and "acme" not in k for k in keys) and len(keys) == 2

    # once the wait is over, a success resets the count
    real_now = auth.now_ms
    monkeypatch.setattr(auth, "now_ms", lambda: real_now() + 1000 * auth.MAX_WAIT_S + 1000)
    user = attempt(cloud_node, ADMIN, PASSWORD)
    assert isinstance(user, User)
    with cloud_node.db.begin() as s:
        assert s.get(SignInThrottle, auth._throttle_key(ADMIN)) is None  # the success removed the count
    assert attempt(cloud_node, ADMIN, "wrong again") == "WinstarError: wrong email or password"
    assert isinstance(attempt(cloud_node, ADMIN, PASSWORD), User)  # one failure after a reset is free


def test_counts_past_their_window_are_pruned(
    cloud_node: Node, scrypt_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Emails sprayed at the sign-in form leave a row each; a new row now and then (here: every
    one) deletes those whose window is over, and keeps the live ones."""
    make_admin(cloud_node)
    for i in range(3):
        attempt(cloud_node, f"sprayed{i}@nowhere.test", "guess one")
    real_now = auth.now_ms
    monkeypatch.setattr(auth, "now_ms", lambda: real_now() + auth.FAILURE_WINDOW_MS + 60_000)
    attempt(cloud_node, "fresh@nowhere.test", "guess two")  # its window is live
    monkeypatch.setattr(auth, "PRUNE_EVERY", 1)
    attempt(cloud_node, "another@nowhere.test", "guess three")
    with cloud_node.db.begin() as s:
        keys = set(s.scalars(sa.select(SignInThrottle.key)))
    assert keys == {auth._throttle_key("fresh@nowhere.test"), auth._throttle_key("another@nowhere.test")}


# --------------------------------------------------------------------------------------------------
# API tokens and sign-in links
# --------------------------------------------------------------------------------------------------


def test_api_tokens_are_kept_as_their_sha256_and_revoked(cloud_node: Node) -> None:
    user_id = make_admin(cloud_node, password=None)
    with cloud_node.cloud() as c:
        user = c.session.get(User, user_id)
        issued = auth.create_token(c.session, user, "ci")
        unnamed = auth.create_token(c.session, user)
        other = c.create_user("b@acme.test", c.find_tenant(user.tenant_id), "TENANT_ADMIN")
    assert issued.token.startswith(auth.TOKEN_PREFIX) and len(issued.token) >= 40
    assert issued.token != unnamed.token and unnamed.name
    with cloud_node.db.read() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(ApiToken.__table__))]
    assert len(rows) == 2 and {r["user_id"] for r in rows} == {user_id}
    row = next(r for r in rows if r["id"] == issued.id)
    assert bytes(row["token_hash"]) == hashlib.sha256(issued.token.encode()).digest()
    for r in rows:  # the tokens themselves are nowhere
        for value in r.values():
            text = bytes(value).hex() if isinstance(value, bytes | memoryview) else str(value)
            assert issued.token not in text and issued.token[len(auth.TOKEN_PREFIX) :] not in text
            assert unnamed.token not in text

    with cloud_node.db.begin() as s:
        assert auth.token_user(s, issued.token).id == user_id
        for wrong in (issued.token + "x", issued.token[:-1], issued.token.upper(), "", "wst_", "x" * 10_000):
            assert auth.token_user(s, wrong) is None
    with cloud_node.db.begin() as s:
        assert s.get(ApiToken, issued.id).last_used is not None  # touched by its use
        auth.revoke_token(s, str(issued.id))
        auth.revoke_token(s, str(issued.id))  # twice: harmless
        with pytest.raises(NotFound):
            auth.revoke_token(s, str(uuid.uuid4()))
        with pytest.raises(NotFound):
            auth.revoke_token(s, "not an id")
        with pytest.raises(NotFound):  # another user's token
            auth.revoke_token(s, str(unnamed.id), s.get(User, other.id))
    with cloud_node.db.begin() as s:
        assert auth.token_user(s, issued.token) is None
        assert auth.token_user(s, unnamed.token).id == user_id  # the other one lives on


def test_sign_in_links_work_once_and_expire(cloud_node: Node) -> None:
    user_id = make_admin(cloud_node, password=None)
    with cloud_node.cloud() as c:
        user = c.session.get(User, user_id)
        link = auth.create_sign_in_link(c.session, user)
        expired = auth.create_sign_in_link(c.session, user, lifetime_ms=-1)
        spare = auth.create_sign_in_link(c.session, user)
    with cloud_node.db.begin() as s:
        hashes = {bytes(h) for h in s.scalars(sa.select(SignInLink.token_hash))}
        assert hashlib.sha256(link.encode()).digest() in hashes and link.encode() not in hashes
    with cloud_node.db.begin() as s:
        assert auth.use_sign_in_link(s, link).id == user_id
    with cloud_node.db.begin() as s:
        assert auth.use_sign_in_link(s, link) is None  # used
        assert auth.use_sign_in_link(s, expired) is None
        assert auth.use_sign_in_link(s, "wst_" + "a" * 43) is None
        assert auth.use_sign_in_link(s, "x" * 10_000) is None
    with cloud_node.db.begin() as s:
        assert auth.use_sign_in_link(s, spare).id == user_id  # the others were not spent by those
        assert s.scalars(sa.select(SignInLink)).all() == []  # the expired one is gone too


# --------------------------------------------------------------------------------------------------
# The browser's session cookie, over HTTP
# --------------------------------------------------------------------------------------------------


def cookie_for(world: ConsoleWorld, who: str, csrf: str, signer: URLSafeTimedSerializer | None = None) -> str:
    """The session cookie the sign-in page would set for ``who`` (made with their password now)."""
    signer = signer or Console(world.cloud).signer  # the key is the cloud's, in its database
    with world.cloud.db.begin() as s:
        user = s.get(User, uuid.UUID(world.ids[f"user_{who}"]))
        return signer.dumps({"u": str(user.id), "p": auth.password_mark(user.password), "c": csrf})


def request_with(cookie: str) -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/",
            "headers": [(b"cookie", f"{COOKIE}={cookie}".encode())],
        }
    )


def test_cookie_sessions_need_their_csrf_token_and_end_with_a_new_password(
    console_world: ConsoleWorld,
) -> None:
    w = console_world
    csrf = "the-csrf-token-of-this-session"
    cookie = cookie_for(w, "north", csrf)

    def call(method: str, path: str, headers: dict[str, str] | None = None, value: str = cookie, **kw: Any):
        return w.call(
            None, method, "/api/v1" + path, headers={"Cookie": f"{COOKIE}={value}", **(headers or {})}, **kw
        )

    def tokens() -> int:
        with w.cloud.db.begin() as s:
            return len(s.scalars(sa.select(ApiToken)).all())

    assert call("GET", "/me").json()["email"] == "north@acme.test"
    found = Console(w.cloud).session_of(request_with(cookie))
    assert (
        found is not None
        and found.via == "cookie"
        and found.csrf == csrf
        and str(found.user_id) == w.ids["user_north"]
    )
    # a change by cookie needs the session's CSRF token
    count = tokens()
    for headers in ({}, {CSRF_HEADER: ""}, {CSRF_HEADER: csrf + "x"}, {CSRF_HEADER: csrf.upper()}):
        r = call("POST", "/tokens", headers, json={"name": "by cookie"})
        assert r.status_code == 403 and "\n" not in r.json()["error"], (headers, r.text)
    assert tokens() == count
    for bad in ({"name": 5}, {"name": ""}, {"name": ["x"]}, {"nam": "x"}, [1]):
        r = call("POST", "/tokens", {CSRF_HEADER: csrf}, json=bad)
        assert r.status_code == 400 and "\n" not in r.json()["error"], (bad, r.text)
    assert tokens() == count
    made = call("POST", "/tokens", {CSRF_HEADER: csrf}, json={"name": "by cookie"})
    assert made.status_code == 201 and tokens() == count + 1
    assert call("DELETE", f"/tokens/{made.json()['id']}").status_code == 403
    assert call("DELETE", f"/tokens/{made.json()['id']}", {CSRF_HEADER: csrf}).json()["revoked"] is True
    # a cookie altered, signed with another key, or naming nobody: not signed in
    forged = [
        cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB"),
        cookie_for(w, "north", csrf, URLSafeTimedSerializer("another key", salt="winstar-console-session")),
        Console(w.cloud).signer.dumps({"u": str(uuid.uuid4()), "p": "x", "c": csrf}),
        Console(w.cloud).signer.dumps({"u": w.ids["user_admin"], "p": "not the mark", "c": csrf}),
        Console(w.cloud).signer.dumps(["not", "a", "session"]),
        "x" * 5000,
    ]
    for value in forged:
        r = call("GET", "/me", value=value)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", value[:40]
        assert Console(w.cloud).session_of(request_with(value)) is None

    # a new password ends the sessions made with the old one
    with w.cloud.cloud() as c:
        auth.set_password(
            c.session, c.session.get(User, uuid.UUID(w.ids["user_north"])), "a brand new password"
        )
    assert call("GET", "/me").status_code == 401
    assert Console(w.cloud).session_of(request_with(cookie)) is None
    assert call("GET", "/me", value=cookie_for(w, "north", csrf)).status_code == 200  # a new session works

    # a deleted user's token and session open nothing
    south_cookie = cookie_for(w, "south", csrf)
    assert w.call("south", "GET", "/api/v1/me").status_code == 200
    with w.cloud.db.begin() as s:
        s.delete(s.get(User, uuid.UUID(w.ids["user_south"])))
    r = w.call("south", "GET", "/api/v1/me")
    assert r.status_code == 401 and "\n" not in r.json()["error"]
    assert call("GET", "/me", value=south_cookie).status_code == 401


# --------------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def winstar(platform: Platform) -> Callable[..., Any]:
    """``winstar(db, *args, input=None)``: the click result of running ``winstar --db DB ARGS``."""
    cli = build_cli(platform)
    runner = CliRunner()

    def run(db: str, *args: str, input: str | None = None) -> Any:
        return runner.invoke(cli, ["--db", db, *args], input=input, prog_name="winstar")

    return run


def test_cli_sets_passwords_from_stdin_and_makes_and_revokes_tokens(
    cloud_node: Node, winstar: Callable[..., Any]
) -> None:
    db = cloud_node.url
    user_id = make_admin(cloud_node, password=None)

    def stored_password() -> str | None:
        with cloud_node.db.begin() as s:
            return s.get(User, user_id).password

    done = winstar(db, "user", "password", ADMIN, "--json", input="a fine new password\n")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["email"] == ADMIN and "a fine new password" not in done.stdout
    first = stored_password()
    assert first and auth.check_password(first, "a fine new password")
    for bad in ("short\n", "x" * 1025 + "\n", "with a \x00 NUL inside\n"):
        refused = winstar(db, "user", "password", ADMIN, input=bad)
        assert refused.exit_code != 0 and isinstance(refused.exception, SystemExit | None), refused.exception
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr, (
            refused.stderr
        )
        assert stored_password() == first  # unchanged
    nobody = winstar(db, "user", "password", "nobody@acme.test", input="a fine new password\n")
    assert nobody.exit_code != 0 and len(nobody.stderr.strip().splitlines()) == 1

    made = winstar(db, "token", "create", ADMIN, "--name", "deploy", "--json")
    assert made.exit_code == 0, made.stderr
    token = json.loads(made.stdout)
    assert set(token) == {"id", "name", "token"} and token["name"] == "deploy"
    with cloud_node.db.begin() as s:
        assert auth.token_user(s, token["token"]).id == user_id
    revoked = winstar(db, "token", "revoke", token["id"], "--json")
    assert revoked.exit_code == 0 and json.loads(revoked.stdout) == {"id": token["id"], "revoked": True}
    with cloud_node.db.begin() as s:
        assert auth.token_user(s, token["token"]) is None
    for args in (("token", "revoke", str(uuid.uuid4())), ("token", "create", "nobody@acme.test")):
        refused = winstar(db, *args, "--json")
        assert (
            refused.exit_code != 0 and refused.stdout == "" and len(refused.stderr.strip().splitlines()) == 1
        )
