"""The console's REST API over real HTTP (a uvicorn server on a loopback port, tests/console_world.py),
on SQLite and PostgreSQL: who may call what (every route of ``ENDPOINTS``, so a new one cannot
escape), the answers' shapes against CLI.md, bad input (one line, nothing changed) and the OpenAPI
description."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from console_world import ConsoleServer, ConsoleWorld, build_world
from helpers import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from winstar_core.console.api import ENDPOINTS, MAX_BODY, PREFIX, Endpoint
from winstar_core.node import Node
from winstar_core.plugin.manager import Platform
from winstar_core.services import auth
from winstar_core.services.cloud import check_secret
from winstar_core.services.constants import ADDED, UNASSIGNED
from winstar_core.store.db import make_engine
from winstar_core.store.models import (
    ApiToken,
    Assignment,
    Customer,
    Edge,
    EdgeEvent,
    Entity,
    EntityMember,
    Tenant,
    User,
)

GROUP = "entity_group"
#: CLI.md's `edge list` and `edge show` keys (the API may add more, never fewer)
EDGE_LIST_KEYS = {"id", "name", "tenant_id", "connected", "node", "last_seen", "pending"}
EDGE_SHOW_KEYS = {
    "id", "name", "tenant_id", "connected", "node", "instance", "conflict", "last_seen", "pending", "failed", "sync",
}  # fmt: skip
SYNC_KEYS = {"state", "requested", "finished", "added", "updated", "removed", "unchanged", "failed", "bytes"}
DOWNLINK_KEYS = {"seq", "created_time", "type", "action", "entity_id", "status", "delivered_time", "error"}
ENTITY_KEYS = {"id", "type", "name", "tenant_id", "version", "data"}
#: the writes a read-only user may still make: their own API tokens
OWN_TOKEN_WRITES = {("POST", "/tokens"), ("DELETE", "/tokens/{token}")}


#: these tests sign in by token only (tests/test_console_auth.py checks passwords at their real
#: cost): the world's password hashes are made cheap, a tenth of a second saved on each
CHEAP_SCRYPT = {"n": 2**4, "r": 8, "p": 1}


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "PASSWORD_SCRYPT", CHEAP_SCRYPT)


@contextlib.contextmanager
def pg_database(server: str, template: str) -> Iterator[str]:
    """A PostgreSQL database of its own, cloned from the kit's migrated template (as ``pg_url``)."""
    name = f"winstar_t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def seen_world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, platform: Platform
) -> Iterator[ConsoleWorld]:
    """The world of tests/console_world.py, built once per database for the tests that only read
    or are refused (each of them checks that nothing changed), with device groups (acme-group,
    north-group, south-group, other-group) and a revoked token of admin (``ids["revoked"]``)."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('console') / 'cloud.db'}"
        else:
            server, template = request.getfixturevalue("pg_server"), request.getfixturevalue("pg_template")
            url = stack.enter_context(pg_database(server, template))
        stack.enter_context(pytest.MonkeyPatch.context()).setattr(auth, "PASSWORD_SCRYPT", CHEAP_SCRYPT)
        node = Node(url, platform=platform)
        stack.callback(node.close)
        node.init_cloud("ce")
        seeded = build_world(node)
        world = ConsoleWorld(node, ConsoleServer(node).start(), seeded["ids"], seeded["tokens"])
        stack.callback(world.server.stop)
        add_groups(world)
        with node.cloud() as c:
            revoked = auth.create_token(
                c.session, c.session.get(User, uuid.UUID(world.ids["user_admin"])), "revoked"
            )
            auth.revoke_token(c.session, str(revoked.id))
            world.ids["revoked"] = revoked.token
        yield world


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def snapshot(node: Node) -> dict[str, list[tuple[Any, ...]]]:
    """Every row a request could change, as comparable tuples (an API token's ``last_used`` is
    left out: reading with a token touches it)."""
    with node.db.begin() as s:
        return {
            "edge": sorted(
                (
                    str(e.id),
                    e.name,
                    str(e.customer_id),
                    bytes(e.secret_hash).hex(),
                    e.routing_key,
                    bool(e.sync_requested),
                )
                for e in s.scalars(sa.select(Edge))
            ),
            "entity": sorted(
                (str(e.id), e.type, e.name, str(e.customer_id), e.version, json.dumps(e.data, sort_keys=True))
                for e in s.scalars(sa.select(Entity))
            ),
            "assignment": sorted(
                (str(a.edge_id), str(a.entity_id)) for a in s.scalars(sa.select(Assignment))
            ),
            "entity_member": sorted(
                (str(m.container_id), str(m.member_id)) for m in s.scalars(sa.select(EntityMember))
            ),
            "edge_event": sorted(
                (str(ev.edge_id), ev.seq, ev.status, ev.type, ev.action, str(ev.entity_id), ev.error or "")
                for ev in s.scalars(sa.select(EdgeEvent))
            ),
            "app_user": sorted(
                (str(u.id), u.email, u.authority, str(u.customer_id), u.password or "")
                for u in s.scalars(sa.select(User))
            ),
            "api_token": sorted(
                (str(t.id), t.name, t.revoked_time is not None) for t in s.scalars(sa.select(ApiToken))
            ),
            "tenant": sorted((str(t.id), t.name) for t in s.scalars(sa.select(Tenant))),
            "customer": sorted((str(c.id), c.name) for c in s.scalars(sa.select(Customer))),
        }


def assert_one_line_error(r: httpx.Response, *statuses: int) -> str:
    """``r`` is a refusal with one of ``statuses`` and a body ``{"error": one line}``; its line."""
    assert r.status_code in statuses, (r.request.method, r.request.url, r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    assert set(body) <= {"error", "fields"}, body
    line = body["error"]
    assert line and "\n" not in line and "\r" not in line and line == line.strip(), line
    return line


def token_ids(world: ConsoleWorld) -> dict[str, str]:
    """Each world user's API token id."""
    with world.cloud.db.begin() as s:
        return {
            who: str(s.scalars(sa.select(ApiToken.id).where(ApiToken.name == f"{who} token")).one())
            for who in ("admin", "north", "south", "other")
        }


def add_groups(world: ConsoleWorld) -> None:
    """Device groups: "acme-group" (acme, no customer), "north-group" and "south-group" (of those
    customers), "other-group" (tenant other); their ids in ``world.ids``."""
    with world.cloud.cloud() as c:
        for name, tenant, customer in (
            ("acme-group", "acme", None),
            ("north-group", "acme", "north"),
            ("south-group", "acme", "south"),
            ("other-group", "other", None),
        ):
            t = c.session.get(Tenant, uuid.UUID(world.ids[tenant]))
            cust = c.session.get(Customer, uuid.UUID(world.ids[customer])) if customer else None
            group = c.create_entity(GROUP, name, t, {"entity_type": "device"}, customer=cust)
            world.ids[name] = str(group.id)


def placeholders(path: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", path)


def refs_used(e: Endpoint) -> set[str]:
    """Which of the world's objects ("edge", "device", "group", "token") a request to ``e`` names,
    in its path or its body."""
    members = "/members" in e.path
    used = set()
    for p in placeholders(e.path):
        if p == "edge":
            used.add("edge")
        elif p == "ref":
            used.add("group" if members else "device")
        elif p == "member_ref":
            used.add("device")
        elif p == "token":
            used.add("token")
    if e.body is not None and "ref" in e.body:
        used.add("device")
    return used


def url_of(e: Endpoint, refs: dict[str, str], seq: str = "1") -> str:
    """``e``'s path with its placeholders filled from ``refs`` (edge, device, group, token)."""
    members = "/members" in e.path
    values = {
        "edge": refs["edge"],
        "seq": seq,
        "type": GROUP if members else "device",
        "ref": refs["group"] if members else refs["device"],
        "member_type": "device",
        "member_ref": refs["device"],
        "token": refs["token"],
    }
    return PREFIX + re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], e.path)


def body_of(e: Endpoint, refs: dict[str, str]) -> Any:
    """A body ``e`` accepts (None: it takes none); a new endpoint with a body must be added here."""
    if e.body is None:
        return None
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/edges"): {"name": "new-edge"},
        ("POST", "/edges/{edge}/downlinks/retry"): {"seqs": [1]},
        ("POST", "/edges/{edge}/downlinks/dismiss"): {"seqs": [1]},
        ("POST", "/edges/{edge}/assignments"): {"type": "device", "ref": refs["device"]},
        ("POST", "/entities/{type}"): {"name": "new-device", "data": {"label": "new"}},
        ("PATCH", "/entities/{type}/{ref}"): {"name": "renamed", "data": {"label": "changed"}},
        ("POST", "/entities/{type}/{ref}/members"): {"type": "device", "ref": refs["device"]},
        ("POST", "/users"): {"email": "new@acme.test", "authority": "CUSTOMER_USER", "customer": "north"},
        ("POST", "/tokens"): {"name": "new token"},
    }
    assert (e.method, e.path) in bodies, f"tests/test_console_api.py: add a body for {e.method} {e.path}"
    return bodies[(e.method, e.path)]


def request(client: httpx.Client, e: Endpoint, refs: dict[str, str], **kw: Any) -> httpx.Response:
    body = body_of(e, refs)
    return client.request(e.method, url_of(e, refs), json=body, **kw)


def without(text: str, refs: dict[str, str]) -> str:
    for value in refs.values():
        text = text.replace(value, "<ref>")
    return text


def own_refs(world: ConsoleWorld, prefix: str) -> dict[str, str]:
    """The refs of one user's own objects: ``prefix`` "north" → north-edge, north-pump, north-group."""
    tokens = token_ids(world)
    names = {
        "acme": ("plant-1", "pump-1", "acme-group", "admin"),
        "north": ("north-edge", "north-pump", "north-group", "north"),
        "south": ("south-edge", "south-pump", "south-group", "south"),
        "other": ("other-edge", "other-pump", "other-group", "other"),
    }[prefix]
    edge, device, group, token_of = names
    return {
        "edge": world.ids[edge],
        "device": world.ids[device],
        "group": world.ids[group],
        "token": tokens[token_of],
    }


def missing_refs() -> dict[str, str]:
    return {k: str(uuid.uuid4()) for k in ("edge", "device", "group", "token")}


# --------------------------------------------------------------------------------------------------
# 1. Who may call what
# --------------------------------------------------------------------------------------------------


def test_every_endpoint_refuses_a_missing_or_bad_token(seen_world: ConsoleWorld) -> None:
    """No credentials, a malformed, unknown or revoked token, a forged cookie: 401 with
    ``WWW-Authenticate: Bearer`` on every route, and nothing changed."""
    w = seen_world
    refs = own_refs(w, "acme")
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic YWRtaW5AYWNtZS50ZXN0OnBhc3N3b3Jk"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Bearer {auth.new_token()}"},  # well formed, never issued
        {"Authorization": f"Bearer {w.tokens['admin']}x"},
        {"Authorization": f"Bearer {w.tokens['admin'][:-1]}"},
        {"Authorization": f"Bearer {'wst_' + 'a' * 5000}"},
        {"Authorization": f"Bearer {w.ids['revoked']}"},
        {"Authorization": f"Token {w.tokens['admin']}"},
        {"Cookie": "winstar_session=forged.value.here"},
    ]
    before = snapshot(w.cloud)
    assert ENDPOINTS, "no endpoints?"
    with w.client() as client:
        for e in ENDPOINTS:
            for headers in bad_headers:
                r = request(client, e, refs, headers=headers)
                assert_one_line_error(r, 401)
                assert r.headers.get("www-authenticate") == "Bearer", (e.method, e.path, headers)
    assert snapshot(w.cloud) == before
    # the same token, not revoked, is let in (the 401s above were about the token)
    r = w.call("admin", "GET", f"{PREFIX}/me")
    assert r.status_code == 200 and r.json()["email"] == "admin@acme.test"


@pytest.mark.parametrize(
    ("who", "owner"),
    [("other", "acme"), ("admin", "other"), ("north", "south")],
    ids=["other-tenant-on-acme", "acme-on-other-tenant", "customer-on-other-customer"],
)
def test_ids_the_caller_may_not_see_answer_as_missing_ones(
    seen_world: ConsoleWorld, who: str, owner: str
) -> None:
    """On every route naming an edge, entity, group or token (in its path or body), the ids of
    another tenant (or, for a customer user, of another customer) get exactly the answer of ids
    that do not exist (the ids aside): 404 when the caller may write, and nothing changes. Also
    with the caller's own edge or group and a foreign device."""
    w = seen_world
    foreign = own_refs(w, owner)
    mine = own_refs(w, "acme" if who == "admin" else who)
    may_write = who != "north"
    before = snapshot(w.cloud)
    checked = 0
    with w.client(who) as client:
        for e in ENDPOINTS:
            used = refs_used(e)
            if not used:
                continue
            variants = [(foreign, missing_refs())]
            if "device" in used and used & {"edge", "group"}:  # own edge/group, foreign device
                variants.append(
                    ({**mine, "device": foreign["device"]}, {**mine, "device": str(uuid.uuid4())})
                )
            for real, missing in variants:
                seen, absent = request(client, e, real), request(client, e, missing)
                where = (e.method, e.path)
                assert seen.status_code == absent.status_code, (where, seen.text, absent.text)
                assert without(seen.text, real) == without(absent.text, missing), where
                if not e.write or may_write:
                    assert_one_line_error(seen, 404)
                else:  # a read-only user is refused the change whoever's it is
                    assert_one_line_error(seen, 403, 404)
                checked += 1
    assert checked >= 20, checked
    assert snapshot(w.cloud) == before


def test_a_ce_customer_user_reads_only_their_customer_and_writes_nothing(seen_world: ConsoleWorld) -> None:
    """north (a CE customer user) lists only north's edges, devices and customer; every write
    route on north's own edge, device and group is 403 and changes nothing, except their own
    API tokens."""
    w = seen_world
    north = own_refs(w, "north")

    edges = w.call("north", "GET", f"{PREFIX}/edges").json()
    assert [e["name"] for e in edges] == ["north-edge"]
    assert [d["name"] for d in w.call("north", "GET", f"{PREFIX}/entities/device").json()] == ["north-pump"]
    assert [g["name"] for g in w.call("north", "GET", f"{PREFIX}/entities/{GROUP}").json()] == ["north-group"]
    assert [c["name"] for c in w.call("north", "GET", f"{PREFIX}/customers").json()] == ["north"]
    assert w.call("north", "GET", f"{PREFIX}/edges/{w.ids['north-edge']}").json()["name"] == "north-edge"
    assert w.call("north", "GET", f"{PREFIX}/edges/north-edge").status_code == 200
    for path in (f"/edges/{w.ids['south-edge']}", "/edges/south-edge", f"/edges/{w.ids['plant-1']}",
                 f"/entities/device/{w.ids['south-pump']}", "/entities/device/pump-1"):  # fmt: skip
        assert_one_line_error(w.call("north", "GET", PREFIX + path), 404)
    assert_one_line_error(w.call("north", "GET", f"{PREFIX}/users"), 403)
    me = w.call("north", "GET", f"{PREFIX}/me").json()
    assert me["email"] == "north@acme.test" and me["may_write"] == []

    before = snapshot(w.cloud)
    refused = 0
    with w.client("north") as client:
        for e in ENDPOINTS:
            if not e.write or (e.method, e.path) in OWN_TOKEN_WRITES:
                continue
            assert_one_line_error(request(client, e, north), 403)
            refused += 1
    assert refused >= 14, refused
    assert snapshot(w.cloud) == before

    # what north may still do: revoke their own tokens (made by the CLI or a signed-in browser: a
    # token makes no token)
    refused_token = w.call("north", "POST", f"{PREFIX}/tokens", json={"name": "mine"})
    assert "cannot make tokens" in assert_one_line_error(refused_token, 403)
    made = _token_of(w, "north@acme.test", "mine")
    assert w.call("north", "DELETE", f"{PREFIX}/tokens/{made['id']}").json() == {
        "id": made["id"],
        "revoked": True,
    }


def _token_of(w: ConsoleWorld, email: str, name: str) -> dict[str, str]:
    """A token made as `winstar token create` makes it."""
    with w.cloud.db.begin() as s:
        issued = auth.create_token(s, auth.find_user(s, email), name)
    return {"id": str(issued.id), "name": issued.name, "token": issued.token}


def test_a_pe_role_lets_a_customer_user_write_within_their_customer(pe_console_world: ConsoleWorld) -> None:
    """PE: south's role grants DEVICE:WRITE and EDGE:WRITE: south creates a device (south's),
    assigns south-pump to south-edge and syncs it; north's edge is 404 to them, assets 403."""
    w = pe_console_world
    assert [e["name"] for e in w.call("south", "GET", f"{PREFIX}/edges").json()] == ["south-edge"]
    assert w.call("south", "GET", f"{PREFIX}/me").json()["may_write"] == ["DEVICE", "EDGE"]

    made = w.call(
        "south", "POST", f"{PREFIX}/entities/device", json={"name": "south-new", "data": {"label": "S"}}
    )
    assert made.status_code == 201, made.text
    assert made.json()["data"]["label"] == "S"
    assigned = w.call("south", "POST", f"{PREFIX}/edges/{w.ids['south-edge']}/assignments",
                      json={"type": "device", "ref": "south-pump"})  # fmt: skip
    assert assigned.status_code == 200, assigned.text
    assert assigned.json() == {
        "edge_id": w.ids["south-edge"],
        "entity_id": w.ids["south-pump"],
        "type": "device",
    }
    synced = w.call("south", "POST", f"{PREFIX}/edges/south-edge/sync")
    assert synced.status_code == 200 and synced.json()["requested"] is True
    with w.cloud.db.begin() as s:
        new = s.scalars(sa.select(Entity).where(Entity.name == "south-new")).one()
        assert str(new.customer_id) == w.ids["south"]
        assert s.get(Assignment, (uuid.UUID(w.ids["south-edge"]), uuid.UUID(w.ids["south-pump"]))) is not None
        assert s.get(Edge, uuid.UUID(w.ids["south-edge"])).sync_requested is True

    before = snapshot(w.cloud)
    north_edge = w.ids["north-edge"]
    for method, path, body in [
        ("POST", f"/edges/{north_edge}/sync", None),
        ("POST", f"/edges/{north_edge}/assignments", {"type": "device", "ref": "south-pump"}),
        ("DELETE", f"/edges/{north_edge}/assignments/device/south-pump", None),
        ("GET", f"/edges/{north_edge}", None),
        ("POST", f"/edges/{w.ids['south-edge']}/assignments", {"type": "device", "ref": "north-pump"}),
        ("PATCH", f"/entities/device/{w.ids['north-pump']}", {"data": {"label": "mine now"}}),
        ("POST", "/entities/device", {"name": "for-north", "customer": "north"}),
        ("POST", "/entities/device", {"name": "for-north", "customer": w.ids["north"]}),
    ]:
        assert_one_line_error(w.call("south", method, PREFIX + path, json=body), 404)
    for method, path, body in [
        ("POST", "/entities/asset", {"name": "south-asset"}),
        ("POST", "/users", {"email": "x@acme.test", "authority": "TENANT_ADMIN"}),
        ("POST", "/entities/device", {"name": "as-north"}),  # north has no such role
    ]:
        who = "north" if body.get("name") == "as-north" else "south"
        assert_one_line_error(w.call(who, method, PREFIX + path, json=body), 403)
    assert snapshot(w.cloud) == before


# --------------------------------------------------------------------------------------------------
# 2. What the routes do, in CLI.md's shapes
# --------------------------------------------------------------------------------------------------


def test_edges_and_edge_show_have_the_cli_shapes(seen_world: ConsoleWorld) -> None:
    w = seen_world
    edges = w.call("admin", "GET", f"{PREFIX}/edges").json()
    assert [e["name"] for e in edges] == ["north-edge", "plant-1", "south-edge"]  # by name, acme only
    for e in edges:
        assert set(e) >= EDGE_LIST_KEYS, set(e)
        assert e["id"] == w.ids[e["name"]] and e["tenant_id"] == w.ids["acme"]
        assert e["connected"] is False and e["node"] is None and e["pending"] == 0
        assert "secret" not in e
    shown = w.call("admin", "GET", f"{PREFIX}/edges/{w.ids['plant-1']}").json()
    assert set(shown) >= EDGE_SHOW_KEYS and set(shown["sync"]) >= SYNC_KEYS, shown
    assert shown["routing_key"] == w.ids["plant-1.routing_key"]
    assert shown["sync"]["state"] == "none" and shown["sync"]["requested"] is False
    assert w.call("admin", "GET", f"{PREFIX}/edges/plant-1").json()["id"] == w.ids["plant-1"]  # by name
    assert [e["name"] for e in w.call("other", "GET", f"{PREFIX}/edges").json()] == ["other-edge"]
    types = {t["type"]: t for t in w.call("admin", "GET", f"{PREFIX}/types").json()}
    assert {"device", "asset", GROUP} <= set(types)
    assert "label" in [f["name"] for f in types["device"]["fields"]]
    assert [c["name"] for c in w.call("admin", "GET", f"{PREFIX}/customers").json()] == ["north", "south"]


def test_downlinks_filter_limit_page_and_payload(console_world: ConsoleWorld) -> None:
    w = console_world
    plant = uuid.UUID(w.ids["plant-1"])
    with w.cloud.cloud() as c:
        edge = c.session.get(Edge, plant)
        acme = c.session.get(Tenant, uuid.UUID(w.ids["acme"]))
        for i in range(7):
            c.assign(edge, c.create_entity("device", f"d{i}", acme, {"label": f"L{i}"}))
    with w.cloud.db.begin() as s:
        seqs = list(
            s.scalars(
                sa.select(EdgeEvent.seq).where(EdgeEvent.edge_id == plant).order_by(EdgeEvent.seq.desc())
            )
        )
        assert len(seqs) >= 7
        failed, delivered = seqs[1::3], seqs[2::3]
        s.execute(
            sa.update(EdgeEvent)
            .where(EdgeEvent.edge_id == plant, EdgeEvent.seq.in_(failed))
            .values(status="FAILED", error="boom")
        )
        s.execute(
            sa.update(EdgeEvent)
            .where(EdgeEvent.edge_id == plant, EdgeEvent.seq.in_(delivered))
            .values(status="DELIVERED")
        )

    base = f"{PREFIX}/edges/{w.ids['plant-1']}/downlinks"
    everything = w.call("admin", "GET", base).json()
    assert [d["seq"] for d in everything] == seqs  # newest first
    assert all(set(d) >= DOWNLINK_KEYS for d in everything)
    assert {d["status"].upper() for d in everything} == {"PENDING", "FAILED", "DELIVERED"}
    only_failed = w.call("admin", "GET", base, params={"status": "failed"}).json()
    assert [d["seq"] for d in only_failed] == failed and all(d["error"] == "boom" for d in only_failed)
    assert [
        d["seq"] for d in w.call("admin", "GET", base, params={"status": "delivered", "limit": 1}).json()
    ] == delivered[:1]
    assert [d["seq"] for d in w.call("admin", "GET", base, params={"limit": 3}).json()] == seqs[:3]
    assert w.call("admin", "GET", base, params={"status": ""}).json() == everything
    pages, before = [], None
    while True:
        params = {"limit": 2, **({"before": before} if before else {})}
        page = [d["seq"] for d in w.call("admin", "GET", base, params=params).json()]
        if not page:
            break
        assert len(page) <= 2
        pages.append(page)
        before = page[-1]
    assert [s for p in pages for s in p] == seqs and len(pages) == -(-len(seqs) // 2)
    listed = w.call("admin", "GET", f"{PREFIX}/edges/plant-1").json()
    assert (listed["pending"], listed["failed"]) == (len(seqs) - len(failed) - len(delivered), len(failed))

    with w.cloud.db.begin() as s:
        d3 = s.scalars(sa.select(Entity).where(Entity.name == "d3")).one()
        seq = s.scalars(
            sa.select(EdgeEvent.seq).where(EdgeEvent.entity_id == d3.id, EdgeEvent.action == ADDED)
        ).one()
        data = d3.data
    one = w.call("admin", "GET", f"{base}/{seq}").json()
    assert set(one) >= DOWNLINK_KEYS and one["seq"] == seq and one["entity_id"] == str(d3.id)
    assert one["payload"]["data"] == data and data["label"] == "L3"
    assert_one_line_error(w.call("admin", "GET", f"{base}/{max(seqs) + 100}"), 404)


def test_sync_and_assignments(console_world: ConsoleWorld) -> None:
    w = console_world
    plant = w.ids["plant-1"]
    synced = w.call("admin", "POST", f"{PREFIX}/edges/{plant}/sync")
    assert synced.status_code == 200
    assert synced.json()["edge_id"] == plant and synced.json()["requested"] is True
    with w.cloud.db.begin() as s:
        assert s.get(Edge, uuid.UUID(plant)).sync_requested is True
    assert w.call("admin", "GET", f"{PREFIX}/edges/{plant}").json()["sync"]["requested"] is True

    def events() -> list[tuple[str, str]]:
        with w.cloud.db.begin() as s:
            rows = s.execute(
                sa.select(EdgeEvent.action, EdgeEvent.entity_id)
                .where(EdgeEvent.edge_id == uuid.UUID(plant))
                .order_by(EdgeEvent.seq)
            )
            return [(a, str(i)) for a, i in rows]

    def assigned() -> set[str]:
        with w.cloud.db.begin() as s:
            return {
                str(a.entity_id)
                for a in s.scalars(sa.select(Assignment).where(Assignment.edge_id == uuid.UUID(plant)))
            }

    pump = w.ids["pump-1"]
    r = w.call(
        "admin", "POST", f"{PREFIX}/edges/plant-1/assignments", json={"type": "device", "ref": "pump-1"}
    )
    assert r.status_code == 200 and r.json() == {"edge_id": plant, "entity_id": pump, "type": "device"}
    assert assigned() == {pump} and events()[-1] == (ADDED, pump)
    entities = w.call("admin", "GET", f"{PREFIX}/edges/{plant}/entities").json()
    # `edge entities`' keys (the API may add more)
    assert [{k: e[k] for k in ("id", "type", "name", "version")} for e in entities] == [
        {"id": pump, "type": "device", "name": "pump-1", "version": 1}
    ]
    queued = len(events())
    again = w.call(
        "admin", "POST", f"{PREFIX}/edges/{plant}/assignments", json={"type": "device", "ref": pump}
    )
    assert again.status_code == 200 and len(events()) == queued  # already assigned: nothing new

    r = w.call("admin", "DELETE", f"{PREFIX}/edges/{plant}/assignments/device/{pump}")
    assert r.status_code == 200 and r.json() == {"edge_id": plant, "entity_id": pump, "type": "device"}
    assert assigned() == set() and events()[-1] == (UNASSIGNED, pump)
    assert w.call("admin", "GET", f"{PREFIX}/edges/{plant}/entities").json() == []
    before = snapshot(w.cloud)
    assert_one_line_error(w.call("admin", "DELETE", f"{PREFIX}/edges/{plant}/assignments/device/pump-1"), 404)
    assert_one_line_error(
        w.call(
            "admin", "POST", f"{PREFIX}/edges/{plant}/assignments", json={"type": "gadget", "ref": "pump-1"}
        ),
        400,
        404,
    )
    assert snapshot(w.cloud) == before


def test_entities_crud_and_group_members(console_world: ConsoleWorld) -> None:
    w = console_world
    made = w.call(
        "admin", "POST", f"{PREFIX}/entities/device", json={"name": "valve-1", "data": {"label": "Valve"}}
    )
    assert made.status_code == 201, made.text
    valve = made.json()
    assert set(valve) >= ENTITY_KEYS and valve["type"] == "device" and valve["version"] == 1
    assert valve["data"]["label"] == "Valve" and valve["tenant_id"] == w.ids["acme"]
    assert w.call("admin", "GET", f"{PREFIX}/entities/device/valve-1").json() == valve
    assert w.call("admin", "GET", f"{PREFIX}/entities/device/{valve['id']}").json() == valve
    listed = [e["name"] for e in w.call("admin", "GET", f"{PREFIX}/entities/device").json()]
    assert listed == ["north-pump", "pump-1", "south-pump", "valve-1"]

    before = snapshot(w.cloud)
    assert_one_line_error(w.call("admin", "POST", f"{PREFIX}/entities/device", json={"name": "valve-1"}), 409)
    bad = w.call("admin", "POST", f"{PREFIX}/entities/device", json={"name": "v2", "data": {"label": 5}})
    assert_one_line_error(bad, 422)
    assert "label" in bad.json().get("fields", {}), bad.json()
    assert_one_line_error(
        w.call("admin", "POST", f"{PREFIX}/entities/device", json={"name": "v3", "data": {"nope": 1}}), 422
    )
    assert_one_line_error(w.call("admin", "POST", f"{PREFIX}/entities/gadget", json={"name": "g"}), 400, 404)
    assert snapshot(w.cloud) == before

    changed = w.call(
        "admin", "PATCH", f"{PREFIX}/entities/device/{valve['id']}", json={"data": {"label": "Valve 2"}}
    )
    assert (
        changed.status_code == 200
        and changed.json()["version"] == 2
        and changed.json()["data"]["label"] == "Valve 2"
    )
    renamed = w.call("admin", "PATCH", f"{PREFIX}/entities/device/valve-1", json={"name": "valve-2"}).json()
    assert renamed["name"] == "valve-2" and renamed["data"]["label"] == "Valve 2"
    with w.cloud.db.begin() as s:
        row = s.get(Entity, uuid.UUID(valve["id"]))
        assert (row.name, row.data["label"], row.version) == ("valve-2", "Valve 2", renamed["version"])

    group = w.call(
        "admin",
        "POST",
        f"{PREFIX}/entities/{GROUP}",
        json={"name": "pumps", "data": {"entity_type": "device"}},
    )
    assert group.status_code == 201, group.text
    gid = group.json()["id"]
    added = w.call(
        "admin", "POST", f"{PREFIX}/entities/{GROUP}/pumps/members", json={"type": "device", "ref": "pump-1"}
    )
    assert added.status_code == 200 and added.json() == {"group_id": gid, "entity_id": w.ids["pump-1"]}
    assert w.call("admin", "GET", f"{PREFIX}/entities/{GROUP}/{gid}/members").json() == [
        {"id": w.ids["pump-1"], "type": "device", "name": "pump-1"}
    ]
    with w.cloud.db.begin() as s:
        assert s.get(EntityMember, (uuid.UUID(gid), uuid.UUID(w.ids["pump-1"]))) is not None
    # a group assigned to an edge brings its members
    w.call("admin", "POST", f"{PREFIX}/edges/plant-1/assignments", json={"type": GROUP, "ref": "pumps"})
    on_edge = {e["name"] for e in w.call("admin", "GET", f"{PREFIX}/edges/plant-1/entities").json()}
    assert on_edge == {"pumps", "pump-1"}
    w.call("admin", "POST", f"{PREFIX}/entities/asset", json={"name": "tank"})
    before = snapshot(w.cloud)
    assert_one_line_error(
        w.call(
            "admin", "POST", f"{PREFIX}/entities/{GROUP}/pumps/members", json={"type": "asset", "ref": "tank"}
        ),
        400,
    )
    assert snapshot(w.cloud) == before
    removed = w.call("admin", "DELETE", f"{PREFIX}/entities/{GROUP}/pumps/members/device/pump-1")
    assert removed.status_code == 200 and removed.json() == {"group_id": gid, "entity_id": w.ids["pump-1"]}
    assert w.call("admin", "GET", f"{PREFIX}/entities/{GROUP}/pumps/members").json() == []
    with w.cloud.db.begin() as s:
        assert s.scalars(sa.select(EntityMember)).all() == []

    gone = w.call("admin", "DELETE", f"{PREFIX}/entities/device/{valve['id']}")
    assert gone.status_code == 200 and gone.json() == {"id": valve["id"], "deleted": True}
    assert_one_line_error(w.call("admin", "GET", f"{PREFIX}/entities/device/{valve['id']}"), 404)
    with w.cloud.db.begin() as s:
        assert s.get(Entity, uuid.UUID(valve["id"])) is None


def test_users_and_tokens(console_world: ConsoleWorld) -> None:
    w = console_world
    users = w.call("admin", "GET", f"{PREFIX}/users").json()
    assert sorted(u["email"] for u in users) == ["admin@acme.test", "north@acme.test", "south@acme.test"]
    made = w.call(
        "admin",
        "POST",
        f"{PREFIX}/users",
        json={"email": "east@acme.test", "authority": "CUSTOMER_USER", "customer": "south"},
    )
    assert made.status_code == 201, made.text
    assert {"id", "email", "authority"} <= set(made.json())
    assert made.json()["customer_id"] == w.ids["south"] and "password" not in made.json()
    with w.cloud.db.begin() as s:
        east = s.scalars(sa.select(User).where(User.email == "east@acme.test")).one()
        assert (
            east.authority == "CUSTOMER_USER"
            and str(east.tenant_id) == w.ids["acme"]
            and east.password is None
        )
    assert "east@acme.test" not in w.call("other", "GET", f"{PREFIX}/users").text
    assert_one_line_error(w.call("north", "GET", f"{PREFIX}/users"), 403)
    assert_one_line_error(
        w.call(
            "admin", "POST", f"{PREFIX}/users", json={"email": "east@acme.test", "authority": "TENANT_ADMIN"}
        ),
        409,
    )

    # a token makes no token (a stolen one would outlive its revocation): the CLI or a browser does
    refused = w.call("admin", "POST", f"{PREFIX}/tokens", json={"name": "ci"})
    assert "cannot make tokens" in assert_one_line_error(refused, 403)
    token = _token_of(w, "admin@acme.test", "ci")
    assert (
        set(token) == {"id", "name", "token"} and token["name"] == "ci" and token["token"].startswith("wst_")
    )
    listed = w.call("admin", "GET", f"{PREFIX}/tokens")
    assert token["token"] not in listed.text
    assert {"id": token["id"], "name": "ci", "revoked": False}.items() <= next(
        t for t in listed.json() if t["id"] == token["id"]
    ).items()
    assert {t["name"] for t in listed.json()} == {"admin token", "ci"}  # the caller's only

    def me(tok: str) -> httpx.Response:
        return httpx.get(f"{w.url}{PREFIX}/me", headers={"Authorization": f"Bearer {tok}"})

    assert me(token["token"]).json()["email"] == "admin@acme.test"
    assert_one_line_error(w.call("north", "DELETE", f"{PREFIX}/tokens/{token['id']}"), 404)  # not north's
    revoked = w.call("admin", "DELETE", f"{PREFIX}/tokens/{token['id']}")
    assert revoked.status_code == 200 and revoked.json() == {"id": token["id"], "revoked": True}
    assert_one_line_error(me(token["token"]), 401)
    assert (
        next(t for t in w.call("admin", "GET", f"{PREFIX}/tokens").json() if t["id"] == token["id"])[
            "revoked"
        ]
        is True
    )
    assert me(w.tokens["admin"]).status_code == 200  # the other token lives on


def test_edge_create_rotate_secret_and_delete(console_world: ConsoleWorld) -> None:
    w = console_world
    created = w.call("admin", "POST", f"{PREFIX}/edges", json={"name": "plant-2"})
    assert created.status_code == 201, created.text
    edge = created.json()
    assert {"id", "name", "routing_key", "secret"} <= set(edge) and edge["name"] == "plant-2"
    for_north = w.call(
        "admin", "POST", f"{PREFIX}/edges", json={"name": "plant-3", "customer": "north"}
    ).json()
    assert for_north["customer_id"] == w.ids["north"]
    assert "plant-3" in [e["name"] for e in w.call("north", "GET", f"{PREFIX}/edges").json()]
    before = snapshot(w.cloud)
    assert_one_line_error(w.call("admin", "POST", f"{PREFIX}/edges", json={"name": "plant-2"}), 409)
    assert_one_line_error(
        w.call("admin", "POST", f"{PREFIX}/edges", json={"name": "x", "customer": "nobody"}), 404
    )
    assert snapshot(w.cloud) == before

    # the secret is shown this once
    for path in ("/edges", f"/edges/{edge['id']}", f"/edges/{edge['id']}/downlinks", "/me"):
        assert edge["secret"] not in w.call("admin", "GET", PREFIX + path).text, path

    def stored() -> Edge:
        with w.cloud.db.begin() as s:
            row = s.get(Edge, uuid.UUID(edge["id"]))
            s.expunge(row)
            return row

    assert check_secret(stored(), edge["secret"])
    rotated = w.call("admin", "POST", f"{PREFIX}/edges/{edge['id']}/secret")
    assert rotated.status_code == 200
    new = rotated.json()
    assert (
        new["id"] == edge["id"]
        and new["routing_key"] == edge["routing_key"]
        and new["secret"] != edge["secret"]
    )
    assert not check_secret(stored(), edge["secret"]) and check_secret(stored(), new["secret"])
    assert new["secret"] not in w.call("admin", "GET", f"{PREFIX}/edges/{edge['id']}").text

    w.call("admin", "POST", f"{PREFIX}/edges/plant-2/assignments", json={"type": "device", "ref": "pump-1"})
    with w.cloud.db.begin() as s:
        assert s.scalar(
            sa.select(sa.func.count())
            .select_from(EdgeEvent)
            .where(EdgeEvent.edge_id == uuid.UUID(edge["id"]))
        )
    deleted = w.call("admin", "DELETE", f"{PREFIX}/edges/{edge['id']}")
    assert deleted.status_code == 200 and deleted.json() == {"id": edge["id"], "deleted": True}
    assert_one_line_error(w.call("admin", "GET", f"{PREFIX}/edges/{edge['id']}"), 404)
    assert "plant-2" not in [e["name"] for e in w.call("admin", "GET", f"{PREFIX}/edges").json()]
    with w.cloud.db.begin() as s:
        eid = uuid.UUID(edge["id"])
        assert s.get(Edge, eid) is None
        assert (
            s.scalar(sa.select(sa.func.count()).select_from(EdgeEvent).where(EdgeEvent.edge_id == eid)) == 0
        )
        assert (
            s.scalar(sa.select(sa.func.count()).select_from(Assignment).where(Assignment.edge_id == eid)) == 0
        )
        assert s.get(Entity, uuid.UUID(w.ids["pump-1"])) is not None  # the entity stays


# --------------------------------------------------------------------------------------------------
# 3. Bad input: 400 or 422, one line, nothing changed
# --------------------------------------------------------------------------------------------------

#: for each field of each body, values of the wrong type
WRONG: dict[str, list[Any]] = {
    "string": [1, 1.5, True, [], {}, ["x"], {"a": "b"}],
    "object": ["x", 1, True, [], [{}]],
    "boolean": ["yes", 1, 0, [], {}, "true"],
    "array": ["x", 1, {}, True, [{}], [1.5], [True], [None], [[1]]],
}


def kind_of(description: str) -> str:
    for kind in ("object", "boolean", "array"):
        if description.startswith(kind):
            return kind
    return "string"


def test_bad_bodies_change_nothing(seen_world: ConsoleWorld) -> None:
    """Every route with a body: not JSON, not UTF-8, not an object, each field with a wrong type,
    NaN and Infinity, nesting too deep, names with NUL or too long: 400 or 422 (a reference to
    nothing: 404), one line, and not a row changed."""
    w = seen_world
    refs = own_refs(w, "acme")
    refused = (400, 422)
    cases: list[tuple[Endpoint, Any, bytes, tuple[int, ...]]] = []  # (endpoint, label, raw body, statuses)
    # (a browser-only route refuses any token first: test_console_auth sends it bodies by cookie)
    with_body = [e for e in ENDPOINTS if e.body is not None and not e.browser_only]
    assert len(with_body) >= 8
    for e in with_body:
        good = body_of(e, refs)
        for raw in (b"{nope", b"{'name': 'x'}", b'{"name": "x",}', b"\xff\xfe{}", b'{"name": "\xc3\x28"}', b"[]",
                    b"1", b'"text"', b"true", b"[" * 100_000, b'{"a":' * 100_000, b"\x00", b"{}{}"):  # fmt: skip
            cases.append((e, raw[:20], raw, refused))
        if not all("optional" in d for d in e.body.values()):  # an optional body may be null
            cases.append((e, "null", b"null", refused))
        for field, description in e.body.items():
            for value in WRONG[kind_of(description)]:
                cases.append((e, (field, value), json.dumps({**good, field: value}).encode(), refused))
        for constant in ("NaN", "Infinity", "-Infinity"):
            raw = json.dumps(good)[:-1].encode() + f', "x": {constant}}}'.encode()
            cases.append((e, constant, raw, refused))
            field = next(iter(e.body))
            raw = json.dumps({**good, field: "@"}).replace('"@"', constant).encode()
            cases.append((e, (field, constant), raw, refused))
        for field in ("name", "email", "ref", "type"):
            if field in e.body:
                # a reference to nothing may be a 404; a name to store must be refused
                statuses = (400, 404, 422) if field in ("ref", "type") else refused
                for value in ("", "   ", "a\x00b", "\x00", "n" * 300, "\ud800", "a\udfffb"):
                    if value == "" and "optional" in e.body[field]:
                        continue  # an empty optional name is no name: a token gets one made up
                    cases.append(
                        (e, (field, value[:10]), json.dumps({**good, field: value}).encode(), statuses)
                    )
    # the entity data, in depth
    create = next(e for e in ENDPOINTS if (e.method, e.path) == ("POST", "/entities/{type}"))
    patch = next(e for e in ENDPOINTS if (e.method, e.path) == ("PATCH", "/entities/{type}/{ref}"))
    deep: Any = "leaf"
    for _ in range(200):
        deep = {"k": deep}
    for e in (create, patch):
        for i, data in enumerate([
            {"label": float("nan")}, {"additional_info": {"v": float("inf")}}, {"additional_info": deep},
            {"additional_info": {"\x00": 1}}, {"label": "a\x00b"}, {"label": "\ud800"},
            {"additional_info": {"\udc00": 1}}, {"label": 5},
            {"credentials": {"type": "nope"}}, {"unknown": 1},
        ]):  # fmt: skip
            body = json.dumps({"name": f"d-{i}", "data": data} if e is create else {"data": data}).encode()
            cases.append((e, ("data", str(data)[:30]), body, refused))
    cases.append(
        (create, "a name near MAX_BODY", json.dumps({"name": "x" * (MAX_BODY - 100)}).encode(), refused)
    )
    cases.append(
        (create, "customer with NUL", json.dumps({"name": "c", "customer": "a\x00"}).encode(), (400, 404))
    )
    users = next(e for e in ENDPOINTS if (e.method, e.path) == ("POST", "/users"))
    for roles in (["a\x00"], ["\ud800"], ["n" * 300]):
        body = json.dumps({**body_of(users, refs), "roles": roles}).encode()
        cases.append((users, ("roles", roles[0][:5]), body, (400, 404)))
    before = snapshot(w.cloud)
    failures = []
    with w.client("admin") as client:
        for e, label, raw, statuses in cases:
            r = client.request(
                e.method, url_of(e, refs), content=raw, headers={"Content-Type": "application/json"}
            )
            try:
                assert_one_line_error(r, *statuses)
            except AssertionError:
                failures.append((e.method, e.path, label, r.status_code, r.text[:200]))
    assert not failures, "\n".join(map(str, failures))
    assert snapshot(w.cloud) == before
    for raw in (b'{"name": "g"}', b"{nope"):  # a type that is not installed
        assert_one_line_error(w.call("admin", "POST", f"{PREFIX}/entities/gadget", content=raw), 400, 404)
    # a password refused after the user was made: the user is not made either
    r = w.call("admin", "POST", f"{PREFIX}/users",
               json={"email": "short@acme.test", "authority": "TENANT_ADMIN", "password": "short"})  # fmt: skip
    assert_one_line_error(r, 400, 422)
    assert snapshot(w.cloud) == before


def test_unknown_body_fields_and_bodies_where_none_is_taken_are_refused(seen_world: ConsoleWorld) -> None:
    """A field a route does not take is a mistake to say, not to ignore (a misspelt "customer"
    would silently make a tenant-wide entity); a route without a body takes none, or ``{}``."""
    w = seen_world
    plant = w.ids["plant-1"]
    before = snapshot(w.cloud)
    with w.client("admin") as client:
        for method, path, body, field in [
            ("POST", "/entities/device", {"name": "x", "custmer": "north"}, "custmer"),
            ("POST", "/edges", {"name": "e", "bogus": 1}, "bogus"),
            ("POST", f"/edges/{plant}/assignments", {"type": "device", "ref": "pump-1", "x": 1}, "x"),
            ("POST", "/users", {"email": "a@acme.test", "authority": "TENANT_ADMIN", "admin": True}, "admin"),
            ("POST", "/tokens", {"nam": "n"}, "nam"),
            ("PATCH", "/entities/device/pump-1", {"label": "x"}, "label"),
        ]:
            r = client.request(method, PREFIX + path, json=body)
            assert f"unknown field {field!r}" in assert_one_line_error(r, 400)
        r = client.post(f"{PREFIX}/edges/{plant}/sync", json={"now": True})
        assert "takes no body" in assert_one_line_error(r, 400)
    assert snapshot(w.cloud) == before
    # an empty object where no body is taken is fine (curl -d '{}'): this one is refused further on
    r = w.call("admin", "POST", f"{PREFIX}/edges/{w.ids['other-edge']}/sync", json={})
    assert r.status_code == 404 and "no edge" in r.json()["error"]


def test_bad_queries_and_seqs_change_nothing(seen_world: ConsoleWorld) -> None:
    w = seen_world
    plant = w.ids["plant-1"]
    base = f"{PREFIX}/edges/{plant}/downlinks"
    before = snapshot(w.cloud)
    calls: list[tuple[str, str, Any]] = []
    for query in ({"nope": "1"}, {"limit": "0"}, {"limit": "abc"}, {"limit": "99999999999999999999999"},
                  {"limit": "-1"}, {"limit": "1.5"}, {"limit": "501"}, {"limit": " "}, {"limit": "1e3"},
                  {"status": "nope"}, {"status": "PENDING\x00"}, {"before": "x"}, {"before": "0"},
                  {"before": "99999999999999999999"}, {"limit": "²"}, {"limit": "١"}):  # fmt: skip
        calls.append(("GET", base + "?" + httpx.QueryParams(query).__str__(), None))
    for path in ("/edges", "/me", f"/edges/{plant}", "/users", "/tokens", "/types"):
        calls.append(("GET", f"{PREFIX}{path}?limit=1", None))
    for query in ("nope=1", "limit=0", "limit=abc", "limit=99999999999999999999999", "offset=-1", "offset=x",
                  "limit=10001", "before=1"):  # fmt: skip
        calls.append(("GET", f"{PREFIX}/entities/device?{query}", None))
    calls.append(("POST", f"{PREFIX}/edges/{plant}/sync?now=1", None))
    for seq in ("abc", "0", "-1", "1.5", "99999999999999999999999", "9223372036854775808", "1e3", "%20", "١"):
        calls.append(("GET", f"{base}/{seq}", None))
    for kind in ("retry", "dismiss"):
        for seqs in (
            ["a"],
            [1.5],
            [True],
            [None],
            [0],
            [-1],
            [2**63],
            "1",
            1,
            {"1": 1},
            [[1]],
            ["1"],
            list(range(10_001)),
        ):
            calls.append(("POST", f"{base}/{kind}", {"seqs": seqs}))
    with w.client("admin") as client:
        for method, url, body in calls:
            r = client.request(method, url, json=body)
            assert_one_line_error(r, 400, 422)
        # references in the path that nothing can be called: no such thing (or bad input)
        for bad in ("a%00b", "%00", "%ff", "%ed%a0%80", "n" * 300, "%20"):
            for method, path in [("GET", f"/edges/{bad}"), ("GET", f"/edges/{bad}/downlinks"),
                                 ("GET", f"/entities/device/{bad}"), ("GET", f"/entities/{bad}"),
                                 ("DELETE", f"/edges/{plant}/assignments/device/{bad}"),
                                 ("DELETE", f"/edges/{plant}/assignments/{bad}/pump-1"),
                                 ("GET", f"/entities/{GROUP}/{bad}/members"), ("DELETE", f"/tokens/{bad}"),
                                 ("DELETE", f"/entities/{GROUP}/acme-group/members/device/{bad}")]:  # fmt: skip
                assert_one_line_error(client.request(method, PREFIX + path), 400, 404)
    assert snapshot(w.cloud) == before
    assert w.call("admin", "GET", base, params={"limit": "500", "status": "Pending"}).status_code == 200


def test_huge_bodies_are_refused_without_being_read(seen_world: ConsoleWorld) -> None:
    """A body declared larger than 2 MiB is refused at once (the server does not wait for it); a
    chunked body that never ends is refused once it passes 2 MiB."""
    w = seen_world
    before = snapshot(w.cloud)
    path = f"{PREFIX}/entities/device"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {w.tokens['admin']}\r\n"
        "Content-Type: application/json\r\n"
    )

    def answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < content_length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        status = int(data.split(b" ", 2)[1])
        return status, json.loads(data.split(b"\r\n\r\n", 1)[1])

    def content_length(data: bytes) -> int:
        m = re.search(rb"content-length: (\d+)", data.split(b"\r\n\r\n", 1)[0].lower())
        return int(m.group(1)) if m else 0

    # declared: 100 MB, 1 KiB sent
    with socket.create_connection(("127.0.0.1", w.server.port), timeout=10) as sock:
        sock.sendall((head + "Content-Length: 100000000\r\n\r\n").encode() + b"{" + b" " * 1023)
        status, body = answer(sock)
    assert status == 400 and "at most" in body["error"] and "\n" not in body["error"]
    # chunked, never ending: the server answers once it has read more than MAX_BODY
    stop = threading.Event()
    sent = [0]
    with socket.create_connection(("127.0.0.1", w.server.port), timeout=10) as sock:
        sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())

        def feed() -> None:
            chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
            try:
                while not stop.is_set() and sent[0] < 64 * MAX_BODY:
                    sock.sendall(chunk)
                    sent[0] += 0x10000
            except OSError:
                pass

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            status, body = answer(sock)
        finally:
            stop.set()
            sock.shutdown(socket.SHUT_RDWR)
            feeder.join(10)
    assert status == 400 and "at most" in body["error"]
    assert sent[0] < 64 * MAX_BODY
    assert snapshot(w.cloud) == before


# -- property: whatever the body ----------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_names = st.text(max_size=24) | st.sampled_from(
    ["pump-1", "north-pump", "other-pump", "south-pump", "", " x ", "n" * 300]
)
_device_data = st.fixed_dictionaries(
    {},
    optional={
        "label": st.text(max_size=20) | _json,
        "device_profile": st.text(max_size=20) | _json,
        "credentials": st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["ACCESS_TOKEN", "X509_CERTIFICATE", "MQTT_BASIC", "nope"]) | _json,
                "access_token": st.text(max_size=80) | _json,
            },
        )
        | _json,
        "additional_info": st.dictionaries(st.text(max_size=8), _json, max_size=4) | _json,
    },
)
_customers = st.sampled_from(["north", "south", "nobody", ""]) | _json
_requests = st.one_of(
    st.tuples(
        st.just("create"),
        _json
        | st.fixed_dictionaries(
            {"name": _names}, optional={"data": _device_data | _json, "customer": _customers}
        ),
    ),
    st.tuples(
        st.just("update"),
        _json
        | st.fixed_dictionaries(
            {},
            optional={"name": _names | _json, "data": _device_data | _json, "replace": st.booleans() | _json},
        ),
    ),
    st.tuples(
        st.just("assign"),
        _json
        | st.fixed_dictionaries(
            {"type": st.sampled_from(["device", "asset", GROUP, "nope", ""]) | _json, "ref": _names | _json}
        ),
    ),
)


@settings(
    max_examples=examples(30, thorough=300),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(who=st.sampled_from(["admin", "admin", "north"]), req=_requests)
def test_any_body_is_answered_or_refused_cleanly(
    console_world: ConsoleWorld, who: str, req: tuple[str, Any]
) -> None:
    """Entity create and update and assignments, whatever the JSON body, by an administrator or a
    read-only customer user: a known status (never 500), a refusal in one line that changes
    nothing, a success that the next read agrees with."""
    w = console_world
    kind, body = req
    method, path = {
        "create": ("POST", f"{PREFIX}/entities/device"),
        "update": (
            "PATCH",
            f"{PREFIX}/entities/device/{w.ids['pump-1' if who == 'admin' else 'north-pump']}",
        ),
        "assign": (
            "POST",
            f"{PREFIX}/edges/{w.ids['plant-1' if who == 'admin' else 'north-edge']}/assignments",
        ),
    }[kind]
    before = snapshot(w.cloud)
    r = w.call(who, method, path, json=body)
    assert r.status_code in {200, 201, 400, 403, 404, 409, 422}, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert_one_line_error(r, r.status_code)
        assert snapshot(w.cloud) == before
        return
    assert who == "admin"
    answer = r.json()
    if kind in ("create", "update"):
        assert w.call("admin", "GET", f"{PREFIX}/entities/device/{answer['id']}").json() == answer
    else:
        assert answer["entity_id"] in {
            e["id"] for e in w.call("admin", "GET", f"{PREFIX}/edges/plant-1/entities").json()
        }


# --------------------------------------------------------------------------------------------------
# 4. OpenAPI
# --------------------------------------------------------------------------------------------------


def test_openapi_describes_every_endpoint(seen_world: ConsoleWorld) -> None:
    r = httpx.get(f"{seen_world.url}{PREFIX}/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    operation_ids = []
    for e in ENDPOINTS:
        op = doc["paths"][PREFIX + e.path][e.method.lower()]
        assert op["summary"] == e.summary
        operation_ids.append(op["operationId"])
        assert {p["name"] for p in op["parameters"] if p["in"] == "path"} == set(placeholders(e.path))
        assert {p["name"] for p in op["parameters"] if p["in"] == "query"} == set(e.query)
        assert str(e.status) in op["responses"] and "401" in op["responses"]
        assert ("requestBody" in op) == (e.body is not None)
        if e.body:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert set(schema["properties"]) == set(e.body)
    assert len(set(operation_ids)) == len(ENDPOINTS)
    described = {(path, m) for path, ops in doc["paths"].items() for m in ops}
    assert described == {(PREFIX + e.path, e.method.lower()) for e in ENDPOINTS}

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in refs(v)]
        return [r for v in node for r in refs(v)] if isinstance(node, list) else []

    for ref in refs(doc):
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert isinstance(target, dict)
    # an unknown route under the API is a JSON 404, not a page
    assert_one_line_error(seen_world.call("admin", "GET", f"{PREFIX}/nope"), 404)
