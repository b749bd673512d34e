"""The console attacked: each test is a weakness found by a security review (or a door tried and
found shut), written as the secure behaviour it must keep. The console is the real one, over HTTP
on a loopback port (tests/console_world.py), signed in as a browser is (the sign-in form)."""

from __future__ import annotations

import base64
import re
import threading
import time
import uuid
import zlib
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from console_world import PASSWORD, ConsoleWorld

from winstar_core.console.app import COOKIE, CSRF_HEADER
from winstar_core.services import auth
from winstar_core.store.models import ApiToken, EdgeEvent, Entity, SignInThrottle, User

EMAILS = {
    "admin": "admin@acme.test",
    "north": "north@acme.test",
    "south": "south@acme.test",
    "other": "admin@other.test",
}

#: checks of HTTP (headers, forms, redirects, escaping, CSRF) in which the database plays no part:
#: run on SQLite only (the rights, the throttle and the sessions run on both databases)
HTTP_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


class Browser:
    """A signed-in browser: its cookies, and the CSRF token its pages carry."""

    def __init__(self, world: ConsoleWorld, who: str) -> None:
        self.client = httpx.Client(base_url=world.url, timeout=60, follow_redirects=False)
        page = self.client.get("/sign-in")
        pairing = re.search(r'name="pairing" value="([^"]+)"', page.text)
        assert pairing, page.text
        signed = self.client.post(
            "/sign-in",
            data={"email": EMAILS[who], "password": PASSWORD, "next": "/edges", "pairing": pairing[1]},
        )
        assert signed.status_code == 303, signed.text
        self.cookie = self.client.cookies[COOKIE]
        edges = self.client.get("/edges")
        found = re.search(r'name="csrf-token" content="([^"]+)"', edges.text)
        assert found, edges.text
        self.csrf = found[1]

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(self, path: str, data: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        return self.client.post(path, data={"csrf": self.csrf, **(data or {})}, **kw)

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {CSRF_HEADER: self.csrf, **kw.pop("headers", {})}
        return self.client.request(method, "/api/v1" + path, headers=headers, **kw)


def sign_in_form(world: ConsoleWorld) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=world.url, timeout=60, follow_redirects=False)
    page = client.get("/sign-in")
    found = re.search(r'name="pairing" value="([^"]+)"', page.text)
    assert found
    return client, found[1]


def count(world: ConsoleWorld, model: Any) -> int:
    with world.cloud.db.begin() as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(model)) or 0)


# --------------------------------------------------------------------------------------------------
# Odd requests: a clear refusal, never a 500
# --------------------------------------------------------------------------------------------------


@HTTP_ONLY
def test_head_requests_on_api_routes_are_answered_not_a_500(console_world: ConsoleWorld) -> None:
    w = console_world
    for path in ("/api/v1/edges", "/api/v1/me", f"/api/v1/edges/{w.ids['plant-1']}", "/api/v1/openapi.json"):
        r = w.call("admin", "HEAD", path)
        assert r.status_code == 200, (path, r.status_code)
    assert w.call(None, "HEAD", "/api/v1/edges").status_code == 401


def test_a_nul_or_odd_text_in_the_sign_in_email_is_refused_not_a_500(console_world: ConsoleWorld) -> None:
    """PostgreSQL cannot even compare a text holding NUL or a lone surrogate: the sign-in must
    answer "wrong email or password", not a 500."""
    w = console_world
    password = PASSWORD.replace(" ", "+")
    for email in ("admin%40acme.test%00", "%00", "a%ED%A0%80b%40acme.test", "a%FFb%40acme.test", "x" * 5000):
        client, pairing = sign_in_form(w)
        r = client.post(
            "/sign-in",
            content=f"email={email}&password={password}&next=%2Fedges&pairing={pairing}".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        client.close()
        assert r.status_code == 401, (email[:20], r.status_code, r.text[:200])
        assert "wrong email or password" in r.text
    # and the console still serves
    assert Browser(w, "admin").get("/edges").status_code == 200


@HTTP_ONLY
def test_web_pages_answer_head_too(console_world: ConsoleWorld) -> None:
    b = Browser(console_world, "admin")
    for path in ("/edges", f"/edges/{console_world.ids['plant-1']}", "/sign-in", "/no/such/page"):
        r = b.client.head(path)
        assert r.status_code in (200, 303, 404), (path, r.status_code)


# --------------------------------------------------------------------------------------------------
# Sign-in: the throttle, sessions
# --------------------------------------------------------------------------------------------------


def post_sign_in(world: ConsoleWorld, email: str, password: str) -> httpx.Response:
    client, pairing = sign_in_form(world)
    try:
        return client.post(
            "/sign-in", data={"email": email, "password": password, "next": "/edges", "pairing": pairing}
        )
    finally:
        client.close()


def test_the_throttle_is_not_bypassed_by_case_or_whitespace_variants(console_world: ConsoleWorld) -> None:
    w = console_world
    for variant in (
        "ADMIN@acme.test",
        " admin@acme.test",
        "admin@ACME.test\t",
        "Admin@Acme.Test",
        "admin@acme.test",
    ):
        assert post_sign_in(w, variant, "wrong password").status_code == 401
    # the sixth attempt, with the right password and the exact email, waits
    r = post_sign_in(w, "admin@acme.test", PASSWORD)
    assert r.status_code == 429, r.status_code


def test_parallel_wrong_passwords_are_each_counted_and_none_is_a_500(console_world: ConsoleWorld) -> None:
    """A burst of attempts in parallel for an email with no failures yet: each one is counted (else
    a burst gets as many guesses as it has requests before the throttle notices), none fails."""
    w = console_world
    results: list[int] = []
    pairings = [sign_in_form(w) for _ in range(12)]

    def one(client: httpx.Client, pairing: str) -> None:
        r = client.post(
            "/sign-in",
            data={"email": "south@acme.test", "password": "wrong password", "next": "/", "pairing": pairing},
        )
        results.append(r.status_code)

    threads = [threading.Thread(target=one, args=p) for p in pairings]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for client, _ in pairings:
        client.close()
    assert 500 not in results, results
    with w.cloud.db.begin() as s:
        row = s.get(SignInThrottle, auth._throttle_key("south@acme.test"))
        failures = row.failures if row is not None else 0
    assert failures == results.count(401), (failures, results)
    assert results.count(401) <= auth.FREE_FAILURES + 1, results


def test_signing_out_ends_the_session_not_only_the_cookie(console_world: ConsoleWorld) -> None:
    """A copy of the session cookie (a shared computer, a proxy log, malware) must not outlive
    the user's Sign out."""
    w = console_world
    b = Browser(w, "north")
    stolen = b.cookie
    assert b.api("GET", "/me").status_code == 200
    out = b.post("/sign-out")
    assert out.status_code == 303
    replay = httpx.Client(base_url=w.url, cookies={COOKIE: stolen}, timeout=30)
    assert replay.get("/api/v1/me").status_code == 401
    assert replay.get("/edges").status_code == 303  # to the sign-in page
    replay.close()
    # signing in again works
    assert Browser(w, "north").api("GET", "/me").status_code == 200


@HTTP_ONLY
def test_a_sign_out_without_the_csrf_token_changes_nothing(console_world: ConsoleWorld) -> None:
    b = Browser(console_world, "north")
    r = b.client.post("/sign-out", data={})
    assert r.status_code == 403
    assert b.api("GET", "/me").status_code == 200


# --------------------------------------------------------------------------------------------------
# What a customer user may read
# --------------------------------------------------------------------------------------------------


def test_a_customer_user_does_not_read_other_customers_users_through_downlinks(
    console_world: ConsoleWorld,
) -> None:
    """A new user is sent to every edge of the tenant (the edge checks permissions with it): the
    downlink's payload on south's edge must not hand south the email of north's (or the admins')."""
    w = console_world
    for email, authority, customer in (
        ("north2@acme.test", "CUSTOMER_USER", w.ids["north"]),
        ("boss@acme.test", "TENANT_ADMIN", None),
    ):
        r = w.call(
            "admin",
            "POST",
            "/api/v1/users",
            json={"email": email, "authority": authority, "customer": customer},
        )
        assert r.status_code == 201, r.text
    edge = w.ids["south-edge"]
    rows = w.call("south", "GET", f"/api/v1/edges/{edge}/downlinks").json()
    users = [d for d in rows if d["type"] == "_user"]
    assert users, rows
    b = Browser(w, "south")
    for d in users:
        r = w.call("south", "GET", f"/api/v1/edges/{edge}/downlinks/{d['seq']}")
        assert r.status_code in (200, 404), r.text
        assert "north2@acme.test" not in r.text and "boss@acme.test" not in r.text, r.text
    page = b.get(f"/edges/{edge}")
    assert "north2@acme.test" not in page.text and "boss@acme.test" not in page.text
    # the tenant administrator still reads them
    admin_payloads = [
        w.call("admin", "GET", f"/api/v1/edges/{edge}/downlinks/{d['seq']}").json()["payload"] for d in users
    ]
    assert {p.get("email") for p in admin_payloads} >= {"north2@acme.test", "boss@acme.test"}
    # and south reads their own customer's users
    r = w.call(
        "admin",
        "POST",
        "/api/v1/users",
        json={"email": "south2@acme.test", "authority": "CUSTOMER_USER", "customer": w.ids["south"]},
    )
    assert r.status_code == 201
    rows = w.call("south", "GET", f"/api/v1/edges/{edge}/downlinks").json()
    newest = next(d for d in rows if d["type"] == "_user")
    payload = w.call("south", "GET", f"/api/v1/edges/{edge}/downlinks/{newest['seq']}").json()["payload"]
    assert payload["email"] == "south2@acme.test"


# --------------------------------------------------------------------------------------------------
# Headers: framing, sniffing, caching
# --------------------------------------------------------------------------------------------------


def framing_refused(r: httpx.Response) -> bool:
    csp = r.headers.get("content-security-policy", "")
    return r.headers.get("x-frame-options", "").upper() == "DENY" or "frame-ancestors 'none'" in csp


@HTTP_ONLY
def test_every_html_answer_refuses_framing_and_sniffing(console_world: ConsoleWorld) -> None:
    """The Downlinks tab's rows (a fragment with Retry/Dismiss buttons and their CSRF token) could
    be framed by a same-site page and clicked through; nothing the console serves may be framed or
    read as another type than it says."""
    w = console_world
    b = Browser(w, "admin")
    edge = w.ids["plant-1"]
    answers = {
        "rows": b.get(f"/edges/{edge}/downlinks/rows"),
        "rows error": b.get("/edges/%3Cb%3Enone/downlinks/rows"),
        "rows signed out": httpx.get(f"{w.url}/edges/{edge}/downlinks/rows"),
        "page": b.get(f"/edges/{edge}"),
        "sign-in": httpx.get(f"{w.url}/sign-in"),
        "redirect": b.post(f"/edges/{edge}/sync"),
        "api": b.api("GET", "/edges"),
        "api error": b.api("GET", "/edges/nothing"),
        "static": b.get("/static/console.js"),
    }
    for what, r in answers.items():
        assert framing_refused(r), (what, dict(r.headers))
        assert r.headers.get("x-content-type-options") == "nosniff", (what, dict(r.headers))
        if r.content:
            assert r.headers.get("content-type"), (what, dict(r.headers))
    assert answers["rows error"].headers["content-type"].startswith("text/plain")
    assert answers["rows signed out"].headers["content-type"].startswith("text/plain")


@HTTP_ONLY
def test_api_answers_holding_secrets_are_not_cached(console_world: ConsoleWorld) -> None:
    w = console_world
    for method, path, body in (
        ("POST", "/api/v1/edges", {"name": "fresh-edge"}),
        ("POST", f"/api/v1/edges/{w.ids['plant-1']}/secret", None),
        ("GET", "/api/v1/me", None),
    ):
        r = w.call("admin", method, path, json=body)
        assert r.status_code in (200, 201), r.text
        assert "no-store" in r.headers.get("cache-control", ""), (path, dict(r.headers))


# --------------------------------------------------------------------------------------------------
# Huge and odd forms
# --------------------------------------------------------------------------------------------------


@HTTP_ONLY
def test_a_huge_sign_in_form_is_refused_before_it_is_read(console_world: ConsoleWorld) -> None:
    """Before anyone is signed in, a form of 20 fields of 1 MB each would be read whole."""
    w = console_world
    client, pairing = sign_in_form(w)
    big = "x" * (1024 * 1024 - 10)
    data = {"email": "a@b.c", "password": "p", "pairing": pairing, **{f"f{i}": big for i in range(15)}}
    r = client.post("/sign-in", data=data)
    assert r.status_code == 413, r.status_code
    client.close()
    assert post_sign_in(w, "admin@acme.test", PASSWORD).status_code == 303


@HTTP_ONLY
def test_a_huge_form_of_a_signed_in_user_is_refused_and_changes_nothing(console_world: ConsoleWorld) -> None:
    """Any session (a read-only customer user's too) could post 2,000 fields of 1 MB each."""
    w = console_world
    b = Browser(w, "north")
    big = "x" * (1024 * 1024 - 10)
    tokens = count(w, ApiToken)
    r = b.post("/tokens", data={"name": "big", **{f"f{i}": big for i in range(12)}})
    assert r.status_code == 413, r.status_code
    assert count(w, ApiToken) == tokens
    assert b.get("/edges").status_code == 200


@HTTP_ONLY
def test_a_file_posted_to_a_form_is_a_clear_refusal(console_world: ConsoleWorld) -> None:
    w = console_world
    b = Browser(w, "admin")
    tokens = count(w, ApiToken)
    r = b.client.post(
        "/tokens",
        data={"csrf": b.csrf, "name": "with a file"},
        files={"f": ("a.txt", b"hello", "text/plain")},
    )
    assert 400 <= r.status_code < 500, r.status_code
    client, pairing = sign_in_form(w)
    r = client.post(
        "/sign-in",
        data={"email": "admin@acme.test", "password": PASSWORD, "pairing": pairing},
        files={"f": ("a.txt", b"hello", "text/plain")},
    )
    client.close()
    assert 400 <= r.status_code < 500, r.status_code
    assert count(w, ApiToken) == tokens


# --------------------------------------------------------------------------------------------------
# Secrets in transit
# --------------------------------------------------------------------------------------------------


def readable(cookie: str) -> str:
    """What a signed (not encrypted) itsdangerous value says, to anyone who sees it."""
    body = cookie.split(".")[0] if not cookie.startswith(".") else cookie[1:].split(".")[0]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    return (zlib.decompress(raw) if cookie.startswith(".") else raw).decode("utf-8", "replace")


@HTTP_ONLY
def test_a_new_token_or_edge_secret_does_not_travel_readable_in_a_cookie(console_world: ConsoleWorld) -> None:
    """The one-time secret shown after a form's redirect was carried by a signed, readable cookie:
    any proxy or log that keeps Cookie headers kept the token and the edge's secret."""
    w = console_world
    b = Browser(w, "admin")
    made = b.post("/tokens", data={"name": "shown once"})
    assert made.status_code == 303
    flash = made.cookies.get("winstar_flash") or ""
    shown = b.get("/tokens")
    token = re.search(r"<code data-token>([^<]+)</code>", shown.text)
    assert token, shown.text
    assert token[1] not in readable(flash) and token[1] not in flash
    with w.cloud.db.begin() as s:
        assert auth.token_user(s, token[1]) is not None
    # an edge's secret likewise
    made = b.post("/edges", data={"name": "shown-once-edge"})
    assert made.status_code == 303
    flash = made.cookies.get("winstar_flash") or ""
    page = b.get(made.headers["location"])
    secret = re.search(r"<code data-edge-secret>([^<]+)</code>", page.text)
    assert secret, page.text
    assert secret[1] not in readable(flash) and secret[1] not in flash
    # shown once: not again
    assert secret[1] not in b.get(made.headers["location"]).text


# --------------------------------------------------------------------------------------------------
# Doors tried and found shut (kept, so that they stay shut)
# --------------------------------------------------------------------------------------------------


def test_a_customer_user_reaches_nothing_of_another_customer_through_the_pages(
    console_world: ConsoleWorld,
) -> None:
    w = console_world
    b = Browser(w, "north")
    south, south_pump, other = w.ids["south-edge"], w.ids["south-pump"], w.ids["other-edge"]
    for path in (
        f"/edges/{south}",
        "/edges/south-edge",
        f"/edges/{other}",
        f"/edges/{w.ids['plant-1']}",
        f"/edges/{south}/entities",
        f"/edges/{south}/downlinks/rows",
        f"/entities/device/{south_pump}",
        "/entities/device/south-pump",
        f"/entities/device/{w.ids['other-pump']}",
        f"/entities/device/{w.ids['pump-1']}",
    ):
        r = b.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert w.ids["south-edge.routing_key"] not in r.text
        assert "south-pump" in path or "south-pump" not in r.text, path
    for path, data in (
        (f"/edges/{south}/sync", {}),
        (f"/edges/{south}/secret", {}),
        (f"/edges/{south}/delete", {}),
        (f"/edges/{w.ids['north-edge']}/assign", {"type": "device", "ref": south_pump}),
        (f"/entities/device/{south_pump}", {"name": "taken"}),
        (f"/entities/device/{south_pump}/delete", {}),
        ("/users", {"email": "x@acme.test", "authority": "TENANT_ADMIN"}),
    ):
        r = b.post(path, data)
        assert r.status_code in (403, 404), (path, r.status_code)
    listed = b.get("/entities/device").text + b.get("/edges").text
    for name in ("south-pump", "pump-1", "other-pump", "south-edge", "plant-1", "other-edge"):
        assert f">{name}<" not in listed, name
    assert b.get("/users").status_code == 403


def test_a_pe_customer_user_writes_only_within_their_customer(pe_console_world: ConsoleWorld) -> None:
    w = pe_console_world
    north, north_pump = w.ids["north"], w.ids["north-pump"]
    entities = count(w, Entity)
    for method, path, body in (
        ("POST", "/api/v1/entities/device", {"name": "mine", "customer": north}),
        ("POST", "/api/v1/entities/device", {"name": "mine", "customer": "north"}),
        ("POST", "/api/v1/edges", {"name": "mine", "customer": north}),
        ("POST", f"/api/v1/edges/{w.ids['south-edge']}/assignments", {"type": "device", "ref": north_pump}),
        (
            "POST",
            f"/api/v1/edges/{w.ids['south-edge']}/assignments",
            {"type": "device", "ref": w.ids["pump-1"]},
        ),
        ("PATCH", f"/api/v1/entities/device/{north_pump}", {"name": "renamed"}),
        ("DELETE", f"/api/v1/entities/device/{north_pump}", None),
        ("POST", f"/api/v1/edges/{w.ids['north-edge']}/sync", None),
        ("POST", "/api/v1/users", {"email": "x@acme.test", "authority": "TENANT_ADMIN"}),
        ("GET", "/api/v1/users", None),
    ):
        r = w.call("south", method, path, json=body)
        assert r.status_code in (403, 404), (method, path, r.status_code, r.text)
    assert count(w, Entity) == entities
    made = w.call("south", "POST", "/api/v1/entities/device", json={"name": "mine"})
    assert made.status_code == 201 and made.json()["customer_id"] == w.ids["south"]
    customers = w.call("south", "GET", "/api/v1/customers").json()
    assert [c["id"] for c in customers] == [w.ids["south"]]


def test_a_name_taken_by_another_customer_is_a_conflict_that_names_nothing_else(
    pe_console_world: ConsoleWorld,
) -> None:
    """Names are unique per tenant and type (CLI.md: an edge and a rule find an entity by its
    name), so a PE customer user who picks a name another customer holds gets a 409: that the
    name is taken is all it says (not whose, nor its id), and nothing of it becomes readable."""
    w = pe_console_world
    taken = w.call("south", "POST", "/api/v1/entities/device", json={"name": "north-pump"})
    assert taken.status_code == 409, taken.text
    error = taken.json()["error"]
    assert w.ids["north-pump"] not in error and "north@" not in error and w.ids["north"] not in error
    assert w.call("south", "GET", "/api/v1/entities/device/north-pump").status_code == 404


@HTTP_ONLY
def test_names_and_values_are_escaped_everywhere(console_world: ConsoleWorld) -> None:
    w = console_world
    evil = "<img src=x onerror=alert(1)>"
    r = w.call(
        "admin",
        "POST",
        "/api/v1/entities/device",
        json={"name": evil, "data": {"label": f'"><script>x()</script>{evil}'}},
    )
    assert r.status_code == 201, r.text
    entity = r.json()["id"]
    edge = w.ids["plant-1"]
    assert (
        w.call(
            "admin", "POST", f"/api/v1/edges/{edge}/assignments", json={"type": "device", "ref": entity}
        ).status_code
        == 200
    )
    b = Browser(w, "admin")
    for path in (
        "/entities/device",
        f"/entities/device/{entity}",
        f"/edges/{edge}/entities",
        f"/edges/{edge}",
        f"/edges/{edge}/downlinks/rows",
        "/edges/%3Cimg%20src=x%20onerror=alert(1)%3E",
        "/entities/%3Cimg%20src=x%20onerror=alert(1)%3E",
    ):
        page = b.get(path)
        assert evil not in page.text and "<script>x()" not in page.text, path
    assert "&lt;img src=x onerror=alert(1)&gt;" in b.get(f"/entities/device/{entity}").text


@HTTP_ONLY
def test_next_only_leads_to_a_page_of_this_console(console_world: ConsoleWorld) -> None:
    w = console_world
    for target in (
        "//evil.example/",
        "/\\evil.example",
        "https://evil.example/",
        "/\t/evil.example",
        "\\\\evil.example",
        "/sign-in/link/x",
        "javascript:alert(1)",
        " //evil.example",
        "/%2F%2Fevil.example",
    ):
        client, pairing = sign_in_form(w)
        r = client.post(
            "/sign-in",
            data={"email": EMAILS["admin"], "password": PASSWORD, "next": target, "pairing": pairing},
        )
        location = r.headers.get("location", "")
        assert r.status_code == 303 and location.startswith("/") and not location.startswith("//"), location
        assert "\\" not in location and "evil.example" not in httpx.URL(w.url).join(location).host
        signed_in = client.get("/sign-in", params={"next": target})
        assert signed_in.headers["location"].startswith("/") and not signed_in.headers["location"].startswith(
            "//"
        )
        client.close()


@HTTP_ONLY
def test_sign_in_without_its_pairing_is_refused(console_world: ConsoleWorld) -> None:
    """Login CSRF: another site's form signing the victim in to the attacker's account."""
    r = httpx.post(
        f"{console_world.url}/sign-in",
        data={"email": EMAILS["north"], "password": PASSWORD, "next": "/edges", "pairing": uuid.uuid4().hex},
    )
    assert r.status_code == 403 and COOKIE not in r.cookies


@HTTP_ONLY
def test_api_writes_by_cookie_without_the_csrf_header_change_nothing(console_world: ConsoleWorld) -> None:
    """A cross-site form can post text/plain that reads as JSON, with the cookie: no CSRF header."""
    w = console_world
    b = Browser(w, "admin")
    edges = count(w, EdgeEvent), w.call("admin", "GET", "/api/v1/edges").json()
    for headers in (
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {},
    ):
        r = b.client.post("/api/v1/edges", content=b'{"name": "csrf-edge"}', headers=headers)
        assert r.status_code == 403, r.text
        r = b.client.post(f"/api/v1/edges/{w.ids['plant-1']}/secret", headers=headers)
        assert r.status_code == 403, r.text
    assert (count(w, EdgeEvent), w.call("admin", "GET", "/api/v1/edges").json()) == edges
    # and a form post without the csrf field
    assert b.client.post("/tokens", data={"name": "csrf"}).status_code == 403


def test_a_sign_in_link_works_once_and_a_page_never_shows_a_password_hash(
    console_world: ConsoleWorld,
) -> None:
    w = console_world
    with w.cloud.db.begin() as s:
        link = auth.create_sign_in_link(s, s.get(User, uuid.UUID(w.ids["user_north"])))
        stored = s.get(User, uuid.UUID(w.ids["user_admin"])).password
    client = httpx.Client(base_url=w.url, timeout=30)
    first = client.get(f"/sign-in/link/{link}")
    assert first.status_code == 303 and COOKIE in first.cookies
    again = httpx.get(f"{w.url}/sign-in/link/{link}")
    assert again.status_code == 404 and COOKIE not in again.cookies
    client.close()
    admin = Browser(w, "admin")
    for path in ("/users", "/api/v1/users", "/api/v1/me"):
        text = admin.get(path).text
        assert stored.split("$")[-1] not in text and "scrypt$" not in text, path
    started = time.monotonic()
    assert post_sign_in(w, "nobody@acme.test", PASSWORD).status_code == 401
    assert time.monotonic() - started < 30
