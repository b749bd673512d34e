"""The web console in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright
through sign-in, the edges list updating live, an edge's Downlinks tab filling as a live edge drains
(real `winstar run` cloud and edge processes), Sync Edge, assign/unassign, an entity created
through the form generated from its type's schema (a third-party plugin's type included),
retry/dismiss of failed downlinks, a customer user who cannot see another customer's edge, and
forms refused without the session's CSRF token.

Without a browser or Playwright the tests skip with the reason (with ``CI=true`` they fail). The
tests take the screenshots of docs/console.md (1366×768), into docs/img/ when run with
``WINSTAR_SCREENSHOTS=docs``.

One browser and one console (a SQLite cloud seeded as a small fleet) serve the whole module; each
test has its own browser context (its own cookies) and touches its own rows.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from console_world import PASSWORD, ConsoleServer, build_world
from e2e_world import World, _world
from marshmallow import Schema, fields, validate
from procs import wait_until

from winstar_core import EntityType, EntityTypeRegister, hookimpl
from winstar_core.node import Node
from winstar_core.plugin.manager import make_plugin_manager
from winstar_core.services import auth
from winstar_core.store.models import CloudNode, Edge, EdgeEvent, Entity, User, now_ms

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1366, "height": 768}
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "img"
#: how long a live change may take to show (the pages poll every 2 s)
LIVE_MS = 15_000


def unavailable(reason: str) -> None:
    """Skip (fail under ``CI=true``: CI installs the browser, so its absence is a fault there)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the browser tests cannot run: {reason}")
    pytest.skip(reason)


# -- a third-party entity type, with no web code of its own -------------------------------------------
class LimitsSchema(Schema):
    low = fields.Float(load_default=None, allow_none=True)
    high = fields.Float(load_default=None, allow_none=True)


class MeterSchema(Schema):
    interval_s = fields.Integer(
        required=True,
        validate=validate.Range(min=1, max=3600),
        metadata={"description": "read every N seconds"},
    )
    unit = fields.String(load_default="kWh", validate=validate.OneOf(["kWh", "m3", "l"]))
    enabled = fields.Boolean(load_default=True)
    limits = fields.Nested(LimitsSchema, load_default=dict)
    tags = fields.List(fields.String(), load_default=list)


class MeterType(EntityType):
    name = "meter"
    schema = MeterSchema
    schema_version = 1


class MetersPlugin:
    @staticmethod
    @hookimpl
    def winstar_register_entity_types(register: EntityTypeRegister) -> None:
        register.add(MeterType)


# -- the module's console ---------------------------------------------------------------------------
@dataclass
class Site:
    node: Node
    server: ConsoleServer
    ids: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    def edge(self, name: str) -> str:
        return f"{self.url}/edges/{self.ids[name]}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright is not installed (pip install playwright; the browser is Debian's chromium)")
    if not os.path.exists(CHROMIUM):
        unavailable(f"no browser at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        except Exception as exc:  # a broken browser install says why
            unavailable(f"chromium does not start: {str(exc).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A CE cloud on SQLite, seeded by :func:`build_world` and made to look like a small fleet,
    with the third-party ``meter`` type installed; its console served on a loopback port."""
    platform = make_plugin_manager(extra_plugins=(("meters", MetersPlugin()),))
    node = Node(f"sqlite:///{tmp_path_factory.mktemp('console') / 'cloud.db'}", platform=platform)
    node.init_cloud("ce")
    ids = build_world(node)["ids"]
    seed_fleet(node, ids)
    server = ConsoleServer(node).start()
    try:
        yield Site(node, server, ids)
    finally:
        server.stop()
        node.close()


def seed_fleet(node: Node, ids: dict[str, str]) -> None:
    """More edges, devices and downlinks, some edges served by a node, some downlinks failed."""
    minute = 60_000
    now = now_ms()
    with node.cloud() as c:
        acme = c.find_tenant("acme")
        north = c.find_customer("north", acme)
        for name, customer in (
            ("berlin-plant", None),
            ("lyon-warehouse", north),
            ("oslo-substation", None),
            ("porto-line-2", None),
        ):
            edge, _ = c.create_edge(name, acme, customer)
            ids[name] = str(edge.id)
        devices = [
            c.create_entity("device", name, acme, {"label": label, "device_profile": profile})
            for name, label, profile in (
                ("chiller-1", "Chiller, hall A", "hvac"),
                ("compressor-2", "Air compressor", "default"),
                ("flow-meter-7", "Inlet flow", "metering"),
                ("boiler-3", "Steam boiler", "hvac"),
                ("valve-12", "Bypass valve", "default"),
            )
        ]
        c.create_entity("dashboard", "Energy overview", acme, {"title": "Energy"})
        for edge_name, count in (("berlin-plant", 5), ("oslo-substation", 3), ("porto-line-2", 2)):
            edge = c.find_edge(edge_name, acme)
            for d in devices[:count]:
                c.assign(edge, d)
    with node.db.begin() as s:
        nodes = [
            CloudNode(name=n, address=f"10.0.0.{i}:7070", last_seen=now + 60 * minute)
            for i, n in enumerate(("cloud-a", "cloud-b"), 1)
        ]
        s.add_all(nodes)
        s.flush()
        for name, served_by, seen_ago, synced_ago in (
            ("berlin-plant", nodes[0], 0, 42),
            ("north-edge", nodes[1], 0, 180),
            ("lyon-warehouse", nodes[0], 0, 20),
            ("south-edge", None, 95, 600),
            ("oslo-substation", None, 7 * 24 * 60, None),
            ("porto-line-2", nodes[1], 0, 5),
        ):
            edge = s.get(Edge, uuid.UUID(ids[name]))
            assert edge is not None
            edge.node_id = served_by.id if served_by else None
            edge.connected = served_by is not None
            edge.last_seen = now - seen_ago * minute - 3000
            edge.last_sync = now - synced_ago * minute if synced_ago is not None else None
        # berlin's downlinks went through but two: the edge refused them
        rows = list(
            s.scalars(sa.select(EdgeEvent).where(EdgeEvent.edge_id == uuid.UUID(ids["berlin-plant"])))
        )
        for i, ev in enumerate(rows):
            ev.status = "DELIVERED"
            ev.delivered_time = now - 30 * minute
            if i in (1, 3):
                ev.status = "FAILED"
                ev.error = "device 'compressor-2': the edge's device plugin refused credentials: type: Must be one of: ACCESS_TOKEN."
        porto = list(
            s.scalars(sa.select(EdgeEvent).where(EdgeEvent.edge_id == uuid.UUID(ids["porto-line-2"])))
        )
        for ev in porto:
            ev.status, ev.delivered_time = "DELIVERED", now - 5 * minute


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(LIVE_MS)
    pg = context.new_page()
    pg.on("dialog", lambda dialog: dialog.accept())  # the confirmations of delete, dismiss...
    yield pg
    context.close()


def sign_in(page: Any, url: str, email: str, password: str = PASSWORD) -> None:
    page.goto(f"{url}/sign-in")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-me]")


def mark_page(page: Any) -> None:
    """A mark in the page's window: gone if the page reloads."""
    page.evaluate("window.__same_page = 'yes'")


def same_page(page: Any) -> bool:
    return bool(page.evaluate("window.__same_page === 'yes'"))


def rows_of(page: Any) -> list[tuple[int, str]]:
    """The Downlinks tab's rows: (seq, status)."""
    raw = page.eval_on_selector_all(
        "tbody[data-rows-url] tr[data-seq]",
        "rows => rows.map(r => [r.dataset.seq, r.dataset.sig.split('|')[0]])",
    )
    return [(int(seq), status) for seq, status in raw]


def screenshot(page: Any, name: str) -> None:
    """The page as a PNG: into docs/img/ with ``WINSTAR_SCREENSHOTS=docs`` (how the screenshots of
    docs/console.md are made), else into a temporary folder (a test run leaves the tree clean)."""
    folder = (
        SHOTS
        if os.environ.get("WINSTAR_SCREENSHOTS") == "docs"
        else Path(tempfile.gettempdir()) / "winstar-shots"
    )
    folder.mkdir(parents=True, exist_ok=True)
    png = page.screenshot(path=str(folder / name))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


# -- tests ----------------------------------------------------------------------------------------------
def test_sign_in_refuses_a_wrong_password_then_lands_on_the_edges(site: Site, page: Any) -> None:
    page.goto(site.url + "/")
    assert re.search(r"/sign-in\?next=%2Fedges$", page.url), page.url
    page.fill("#email", "admin@acme.test")
    page.fill("#password", "not the password")
    page.click("button[type=submit]")
    assert page.inner_text("[data-error]") == "wrong email or password"
    assert page.input_value("#email") == "admin@acme.test"
    page.fill("#email", "nobody@acme.test")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    assert page.inner_text("[data-error]") == "wrong email or password"  # the same answer

    page.fill("#email", "admin@acme.test")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(site.url + "/edges")
    assert page.inner_text("[data-me]") == "admin@acme.test"
    assert page.locator("tr[data-edge-name='plant-1']").count() == 1

    page.click("text=Sign out")
    page.wait_for_url(re.compile(r"/sign-in"))
    page.goto(site.url + "/edges")
    assert "/sign-in" in page.url

    # repeated failures for one email are slowed down, and the page says for how long
    statuses = []
    for _ in range(8):
        page.fill("#email", "ghost@acme.test")
        page.fill("#password", "guess")
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            page.click("button[type=submit]")
        statuses.append(answer.value.status)
        if statuses[-1] == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401}, statuses
    assert re.fullmatch(
        r"too many failed sign-ins for this email: try again in \d+ s", page.inner_text("[data-error]")
    )


def test_a_one_time_sign_in_link_signs_in_once(site: Site, page: Any) -> None:
    with site.node.db.begin() as s:
        user = s.scalars(sa.select(User).where(User.email == "south@acme.test")).one()
        token = auth.create_sign_in_link(s, user)
    page.goto(f"{site.url}/sign-in/link/{token}")
    page.wait_for_url(site.url + "/edges")
    assert page.inner_text("[data-me]") == "south@acme.test"
    page.context.clear_cookies()
    response = page.goto(f"{site.url}/sign-in/link/{token}")
    assert response is not None and response.status == 404
    assert "unknown, used or expired" in page.inner_text("[data-error]")


def test_the_edges_list_updates_live(site: Site, page: Any) -> None:
    sign_in(page, site.url, "admin@acme.test")
    row = page.locator("tr[data-edge-name='plant-1']")
    assert row.locator("[data-field=connected]").inner_text() == "offline"
    assert row.locator("[data-field=pending]").inner_text() == "0"
    mark_page(page)

    with site.node.cloud() as c:  # a node takes the edge, and a device is assigned to it
        acme = c.find_tenant("acme")
        c.assign(c.find_edge("plant-1", acme), c.create_entity("device", "pump-9", acme, {"label": "Pump 9"}))
    with site.node.db.begin() as s:
        edge = s.get(Edge, uuid.UUID(site.ids["plant-1"]))
        assert edge is not None
        edge.node_id = s.scalars(sa.select(CloudNode.id).where(CloudNode.name == "cloud-a")).one()
        edge.connected, edge.last_seen = True, now_ms()

    row.locator("[data-field=connected] .st-connected").wait_for()
    assert row.locator("[data-field=node]").inner_text() == "cloud-a"
    page.wait_for_function(
        "() => document.querySelector(\"tr[data-edge-name='plant-1'] [data-field=pending]\").innerText === '1'"
    )
    assert same_page(page), "the page reloaded: the list must update in place"
    assert page.locator("tr[data-edge-name='berlin-plant'] [data-field=failed]").inner_text() == "2"
    page.wait_for_timeout(1300)  # the highlight of the changed row fades
    screenshot(page, "console-edges.png")


def test_assign_and_unassign_through_the_entities_tab(site: Site, page: Any) -> None:
    sign_in(page, site.url, "admin@acme.test")
    page.goto(site.edge("south-edge") + "/entities")
    assert page.locator("tr[data-entity-name='valve-12']").count() == 0

    page.select_option("#assign-type", "device")
    page.fill("#assign-ref", "no-such-valve")
    page.click("[data-form=assign] button[type=submit]")
    assert "no device 'no-such-valve'" in page.inner_text("[data-problem=assign]")
    assert page.input_value("#assign-ref") == "no-such-valve"

    page.fill("#assign-ref", "valve-12")
    page.click("[data-form=assign] button[type=submit]")
    page.wait_for_url(site.edge("south-edge") + "/entities")
    assert page.inner_text("[data-notice]") == "Assigned the device."
    assert page.locator("tr[data-entity-name='valve-12'] td").nth(3).inner_text() == "directly"
    with site.node.cloud() as c:
        assert "valve-12" in {
            e.name for e in c.effective_entities(c.find_edge("south-edge", c.find_tenant("acme")))
        }

    page.click("[data-unassign='valve-12']")
    page.wait_for_url(site.edge("south-edge") + "/entities")
    assert page.locator("tr[data-entity-name='valve-12']").count() == 0
    with site.node.cloud() as c:
        assert "valve-12" not in {
            e.name for e in c.effective_entities(c.find_edge("south-edge", c.find_tenant("acme")))
        }


def test_the_generated_form_shows_the_schemas_errors_beside_their_fields(site: Site, page: Any) -> None:
    sign_in(page, site.url, "admin@acme.test")
    # a third-party type: in the nav and with its form, without web code of its own
    page.click("nav.side a[data-type=meter]")
    page.wait_for_url(site.url + "/entities/meter")
    page.click("[data-new-entity] summary")
    page.fill("#f-name", "main meter")
    page.fill("#f-interval_s", "every minute")
    page.select_option("#f-unit", "m3")
    page.fill("#f-limits-high", "120.5")
    assert page.is_checked("#f-enabled")  # the schema's default
    page.uncheck("#f-enabled")
    page.click("[data-form=new] button[type=submit]")
    assert page.inner_text("#f-interval_s-error") == "Not a valid integer."
    assert "interval_s" in page.inner_text("[data-error]")
    assert page.input_value("#f-name") == "main meter"  # what the user typed is kept
    assert page.input_value("#f-unit") == "m3"
    assert page.input_value("#f-limits-high") == "120.5"
    assert not page.is_checked("#f-enabled")

    page.fill("#f-interval_s", "60")
    page.fill("#f-tags", '["basement", "water"]')
    page.click("[data-form=new] button[type=submit]")
    page.wait_for_url(re.compile(r"/entities/meter/[0-9a-f-]{36}$"))
    assert page.inner_text("[data-notice]") == "meter main meter created."
    with site.node.cloud() as c:
        meter = c.entities.find_entity("meter", "main meter")
        assert meter.data == {
            "interval_s": 60,
            "unit": "m3",
            "enabled": False,
            "limits": {"low": None, "high": 120.5},
            "tags": ["basement", "water"],
        }

    # a device: its nested credentials become a fieldset; a too long token is refused beside it
    page.goto(site.url + "/entities/device")
    page.click("[data-new-entity] summary")
    page.fill("#f-name", "pump-12")
    page.fill("#f-label", "Cooling pump, line 2")
    page.select_option("#f-credentials-type", "ACCESS_TOKEN")
    page.fill("#f-credentials-access_token", "t" * 80)
    page.click("[data-form=new] button[type=submit]")
    assert page.inner_text("#f-credentials-access_token-error") == "Length must be between 1 and 64."
    assert page.locator("[data-field-name='credentials.access_token'].has-error").count() == 1
    with site.node.db.read() as conn:
        assert (
            conn.scalar(sa.select(sa.func.count()).select_from(Entity).where(Entity.name == "pump-12")) == 0
        )
    page.locator("[data-field-name='credentials.access_token']").scroll_into_view_if_needed()
    screenshot(page, "console-entity-form.png")

    page.fill("#f-credentials-access_token", "A1b2C3d4")
    page.click("[data-form=new] button[type=submit]")
    page.wait_for_url(re.compile(r"/entities/device/[0-9a-f-]{36}$"))
    with site.node.cloud() as c:
        device = c.entities.find_entity("device", "pump-12")
        assert device.data["credentials"]["access_token"] == "A1b2C3d4"
        assert device.data["label"] == "Cooling pump, line 2"

    # and edited through the same form
    page.fill("#f-label", "")
    page.click("[data-form=edit] button[type=submit]")
    page.wait_for_url(re.compile(r"/entities/device/[0-9a-f-]{36}$"))
    with site.node.cloud() as c:
        device = c.entities.find_entity("device", "pump-12")
        assert device.data["label"] is None and device.version == 2


def test_names_render_as_text(site: Site, page: Any) -> None:
    with site.node.cloud() as c:
        c.create_entity("asset", "<script>window.__xss = 1</script><b>hall</b>", c.find_tenant("acme"))
    sign_in(page, site.url, "admin@acme.test")
    page.goto(site.url + "/entities/asset")
    assert page.locator("text=<script>window.__xss = 1</script><b>hall</b>").count() == 1
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("main b").count() == 0


def test_failed_downlinks_show_their_reason_and_can_be_retried_or_dismissed(site: Site, page: Any) -> None:
    sign_in(page, site.url, "admin@acme.test")
    page.goto(site.edge("berlin-plant") + "?status=failed")
    failed = rows_of(page)
    assert [s for _, s in failed] == ["failed", "failed"]
    assert "refused credentials" in page.locator("[data-reason]").first.inner_text()

    page.click(f"[data-retry='{failed[0][0]}']")
    assert page.inner_text("[data-notice]") == "1 failed downlink(s) queued again."
    with site.node.db.read() as conn:
        newest = conn.execute(
            sa.select(EdgeEvent.seq, EdgeEvent.status)
            .where(EdgeEvent.edge_id == uuid.UUID(site.ids["berlin-plant"]))
            .order_by(EdgeEvent.seq.desc())
        ).first()
    assert newest is not None and newest.seq > max(seq for seq, _ in failed) and newest.status == "PENDING"

    page.click("[data-dismiss-all]")  # confirmed by the dialog handler
    assert re.fullmatch(r"[12] failed downlink\(s\) dismissed\.", page.inner_text("[data-notice]"))
    with site.node.db.read() as conn:
        statuses = set(
            conn.scalars(
                sa.select(EdgeEvent.status).where(
                    EdgeEvent.edge_id == uuid.UUID(site.ids["berlin-plant"]),
                    EdgeEvent.seq.in_([s for s, _ in failed]),
                )
            )
        )
    assert "FAILED" not in statuses and "DISMISSED" in statuses
    page.goto(site.edge("berlin-plant") + "?status=failed")
    assert rows_of(page) == []


def test_a_customer_user_sees_only_their_customers_edges_and_cannot_change_them(
    site: Site, page: Any
) -> None:
    sign_in(page, site.url, "north@acme.test")
    names = set(page.eval_on_selector_all("tr[data-edge-name]", "rows => rows.map(r => r.dataset.edgeName)"))
    assert names == {"north-edge", "lyon-warehouse"}
    assert page.locator("text=New edge").count() == 0

    response = page.goto(site.edge("south-edge"))
    assert response is not None and response.status == 404
    assert "no edge" in page.inner_text(".error-page")
    response = page.goto(site.edge("other-edge"))
    assert response is not None and response.status == 404

    page.goto(site.edge("north-edge"))
    assert page.locator("[data-sync-button]").count() == 0  # CE: customer users read only
    assert page.locator("[data-delete]").count() == 0
    page.goto(site.url + "/users")
    assert page.locator(".error-page").count() == 1
    assert page.locator("nav.side >> text=Users").count() == 0
    # a forced post (with the token) is refused by the rights, and changes nothing
    status = page.evaluate(
        """async (url) => {
            const csrf = document.querySelector('meta[name=csrf-token]').content;
            const r = await fetch(url, {method: 'POST', body: new URLSearchParams({csrf})});
            return r.status; }""",
        site.edge("north-edge") + "/delete",
    )
    assert status == 403
    with site.node.cloud() as c:
        assert c.find_edge("north-edge", c.find_tenant("acme"))


def test_forms_without_the_sessions_csrf_token_are_refused_and_change_nothing(
    site: Site, page: Any, browser: Any
) -> None:
    sign_in(page, site.url, "admin@acme.test")
    refused = page.evaluate(
        """async (url) => {
            const r = await fetch(url + '/edges', {method: 'POST', body: new URLSearchParams({name: 'forged-1'})});
            return [r.status, await r.text()]; }""",
        site.url,
    )
    assert refused[0] == 403 and "CSRF" in refused[1]
    wrong = page.evaluate(
        """async (url) => {
            const r = await fetch(url + '/edges', {method: 'POST', body: new URLSearchParams({name: 'forged-2', csrf: 'guess'})});
            return r.status; }""",
        site.url,
    )
    assert wrong == 403

    # a page of another site posting a form at the console, in the signed-in browser
    page.set_content(
        f"""<form id=f method=post action="{site.url}/edges/{site.ids["plant-1"]}/delete"></form>
            <script>document.getElementById('f').submit()</script>"""
    )
    page.wait_for_load_state()
    with site.node.cloud() as c:
        acme = c.find_tenant("acme")
        names = {e.name for e in c.session.scalars(sa.select(Edge).where(Edge.tenant_id == acme.id))}
    assert "plant-1" in names and not {"forged-1", "forged-2"} & names


# -- a live edge: real `winstar run` processes ---------------------------------------------------------
@dataclass
class Live:
    world: World
    server: ConsoleServer
    devices: int

    @property
    def edge_url(self) -> str:
        return f"{self.server.url}/edges/{self.world.edge_id}"

    def start(self) -> None:
        if self.world.cloud_proc is None:
            self.world.start_cloud()
            self.world.start_edge()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A cloud and an edge database (the end-to-end world, SQLite), the console on the cloud, and
    40 devices assigned to the edge while no process runs yet."""
    tmp = tmp_path_factory.mktemp("live")
    w = _world(f"sqlite:///{tmp / 'cloud.db'}", tmp, make_plugin_manager(), "ce")
    devices = 40
    with w.cloud.cloud() as c:
        tenant = c.find_tenant("Acme")
        user = c.session.scalars(sa.select(User).where(User.email == "admin@acme.io")).one()
        auth.set_password(c.session, user, PASSWORD)
        edge = c.find_edge("Plant 7", tenant)
        for i in range(1, devices + 1):
            c.assign(
                edge,
                c.create_entity(
                    "device", f"sensor-{i:02d}", tenant, {"label": f"Line {1 + i % 3} sensor {i}"}
                ),
            )
    server = ConsoleServer(w.cloud).start()
    try:
        yield Live(w, server, devices)
    finally:
        server.stop()
        w.stop_all()
        w.cloud.close()
        w.edge.close()


def test_the_downlinks_tab_fills_as_a_live_edge_drains(live: Live, page: Any) -> None:
    sign_in(page, live.server.url, "admin@acme.io")
    page.goto(live.edge_url)
    before = rows_of(page)
    assert len(before) == live.devices and {s for _, s in before} == {"pending"}
    assert page.inner_text("h1 [data-field=connected]") == "offline"
    mark_page(page)

    t0 = time.monotonic()
    live.start()
    page.wait_for_function(
        """(n) => { const rows = [...document.querySelectorAll('tbody[data-rows-url] tr[data-seq]')];
                    return rows.length >= n && rows.every(r => r.dataset.sig.startsWith('delivered|')); }""",
        arg=live.devices,
        timeout=60_000,
    )
    assert same_page(page), "the tab reloaded: it must fill in place"
    page.locator("h1 [data-field=connected] .st-connected").wait_for()
    page.wait_for_function("() => document.querySelector('[data-field=pending]').innerText === '0'")
    assert [seq for seq, _ in rows_of(page)] == [seq for seq, _ in before]  # the same events, now delivered
    assert len(live.world.edge_entities()) == live.devices
    print(f"drained {live.devices} downlinks in view within {time.monotonic() - t0:.1f} s")

    page.click("[data-payload]")  # the newest event's payload, on demand
    page.wait_for_function(
        "() => document.querySelector('[data-dialog-body]').textContent.includes('sensor-')"
    )
    assert '"type": "device"' in page.inner_text("[data-dialog-body]")
    page.keyboard.press("Escape")


def test_sync_edge_shows_its_outcome_live(live: Live, page: Any) -> None:
    live.start()
    live.world.wait_connected()
    wait_until(lambda: live.world.cloud_pending() == 0, 60, what="the edge to drain")
    sign_in(page, live.server.url, "admin@acme.io")
    page.goto(live.edge_url)
    mark_before = rows_of(page)[0][0]
    page.click("[data-sync-button]")
    page.wait_for_url(live.edge_url)
    assert page.inner_text("[data-notice]") == "Sync Edge requested."
    mark_page(page)
    sync = page.locator("[data-field='sync.state'] .badge")
    page.wait_for_function(
        "() => document.querySelector(\"[data-field='sync.state'] .badge\").classList.contains('sy-done')",
        timeout=30_000,
    )
    assert sync.inner_text() == "done"
    assert same_page(page)
    assert page.locator("[data-field='sync.finished'] time").count() == 1
    assert "unchanged" in page.inner_text("[data-field=sync][data-kind=sync-counts]")
    page.wait_for_function(
        f"() => +document.querySelector('tbody[data-rows-url] tr[data-seq]').dataset.seq > {mark_before}"
    )
    page.reload()  # the picture without the notice
    screenshot(page, "console-downlinks.png")
