"""Capabilities compared at connect: events the receiver cannot read are held by the sender and
sent once it can; payloads of an older schema version are upgraded on receipt, both ways; retry
re-reads the entity; an entity no rule claims stays on the edge that created it."""

from __future__ import annotations

import types
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from marshmallow import RAISE, Schema, fields

from winstar_core import EntityType, hookimpl
from winstar_core.errors import WinstarError
from winstar_core.node import Node
from winstar_core.store.models import CloudEvent, EdgeEvent, Entity
from winstar_core.transport.holding import Capabilities, release_held
from winstar_core.transport.inprocess import wait_for
from winstar_core.transport.pb import sync_pb2 as pb

# -- an inline type in two schema versions: v2 renamed "unit" to "unit_name" ------------------------


class GaugeV1Schema(Schema):
    class Meta:
        unknown = RAISE

    unit = fields.String(load_default="C")


class GaugeV2Schema(Schema):
    class Meta:
        unknown = RAISE

    unit_name = fields.String(required=True)


class GaugeV1(EntityType):
    name = "gauge"
    schema = GaugeV1Schema
    schema_version = 1
    creatable_on_edge = True


class GaugeV2(EntityType):
    name = "gauge"
    schema = GaugeV2Schema
    schema_version = 2
    creatable_on_edge = True

    @classmethod
    def upgrade(cls, data: dict[str, Any], from_version: int) -> dict[str, Any]:
        if from_version == 1:
            return {"unit_name": data.get("unit", "C")}
        return data


def gauge_plugin(version: int) -> Any:
    etype = GaugeV1 if version == 1 else GaugeV2

    @hookimpl
    def winstar_register_entity_types(register: Any) -> None:
        register.add(etype)

    return types.SimpleNamespace(
        __name__=f"gauge_v{version}", winstar_register_entity_types=winstar_register_entity_types
    )


def _world(make_platform, db_url, tmp_path, link_runner, cloud_v: int, edge_v: int):
    cloud = Node(db_url, platform=make_platform(gauge_plugin(cloud_v)))
    cloud.init_cloud("ce")
    with cloud.cloud() as c:
        t = c.create_tenant("Acme")
        c.create_user("admin@acme.io", t, "TENANT_ADMIN")
        edge, secret = c.create_edge("edge", t)
    server = link_runner.start_cloud(cloud, 0)
    edge_node = Node(f"sqlite:///{tmp_path / 'edge.db'}", platform=make_platform(gauge_plugin(edge_v)))
    edge_node.init_edge(f"127.0.0.1:{server.port}", edge.routing_key, secret)
    handle = link_runner.start_edge(edge_node)
    link_runner.wait_connected(handle)
    return cloud, edge_node, server, handle, edge.id


def _statuses(node: Node, model: Any) -> list[tuple[str, str, str, str | None]]:
    with node.db.read() as conn:
        return [
            (t, a, s, e)
            for t, a, s, e in conn.execute(
                sa.select(model.type, model.action, model.status, model.error).order_by(model.seq)
            )
        ]


def _entity(node: Node, name: str) -> Entity | None:
    with node.db.read() as conn:
        row = conn.execute(sa.select(Entity.data, Entity.version).where(Entity.name == name)).first()
    return row


def test_cloud_ahead_upgrades_uplinks_and_holds_newer_downlinks(make_platform, db_url, tmp_path, link_runner):
    cloud, edge, server, handle, edge_id = _world(make_platform, db_url, tmp_path, link_runner, 2, 1)
    with edge.edge() as e:
        e.create_entity("gauge", "g1", {"unit": "K"}, user_email="admin@acme.io")
    # the cloud reads the edge's version-1 payload through the plugin's upgrade
    wait_for(lambda: _entity(cloud, "g1"), what="the gauge in the cloud")
    assert _entity(cloud, "g1").data == {"unit_name": "K"}
    # a version-2 state is held for the edge (it knows version 1), and holds up nothing behind it
    with cloud.cloud() as c:
        c.update_entity(c.entities.find_entity("gauge", "g1"), data={"unit_name": "F"})
        c.assign(c.find_edge("edge"), c.create_entity("asset", "a1", c.find_tenant("Acme")))
    wait_for(lambda: _entity(edge, "a1"), what="the asset behind the held gauge")
    held = [row for row in _statuses(cloud, EdgeEvent) if row[2] == "HELD"]
    assert [(t, a) for t, a, _, _ in held] == [("gauge", "UPDATED")]
    assert "schema version 2" in held[0][3] and "knows version 1" in held[0][3]
    assert _entity(edge, "g1").data == {"unit": "K"}  # unchanged, not failed
    with cloud.cloud() as c:
        assert c.downlinks(c.find_edge("edge"), status="FAILED") == []
    link_runner.stop_edge(handle)
    link_runner.stop_cloud(server, grace=0.2)
    edge.close()
    cloud.close()


def test_edge_ahead_upgrades_downlinks_holds_uplinks_until_the_cloud_upgrades(
    make_platform, db_url, tmp_path, link_runner
):
    cloud, edge, server, handle, edge_id = _world(make_platform, db_url, tmp_path, link_runner, 1, 2)
    with cloud.cloud() as c:
        g = c.create_entity("gauge", "from-cloud", c.find_tenant("Acme"), {"unit": "C"})
        c.assign(c.find_edge("edge"), g)
    wait_for(lambda: _entity(edge, "from-cloud"), what="the gauge on the edge")
    assert _entity(edge, "from-cloud").data == {"unit_name": "C"}  # upgraded on receipt
    with edge.edge() as e:
        e.create_entity("gauge", "from-edge", {"unit_name": "K"}, user_email="admin@acme.io")
    wait_for(lambda: [r for r in _statuses(edge, CloudEvent) if r[2] == "HELD"], what="the uplink to be held")
    assert _entity(cloud, "from-edge") is None
    (held,) = [r for r in _statuses(edge, CloudEvent) if r[2] == "HELD"]
    assert held[:2] == ("gauge", "ADDED") and "the cloud knows version 1" in held[3]
    # the cloud's plugin is upgraded and it restarts: the edge reconnects and sends what it held
    port = server.port
    link_runner.stop_cloud(server, grace=0.2)
    cloud.close()
    upgraded = Node(db_url, platform=make_platform(gauge_plugin(2)))
    server2 = link_runner.start_cloud(upgraded, port)
    wait_for(lambda: _entity(upgraded, "from-edge"), timeout=60, what="the held uplink after the upgrade")
    assert _entity(upgraded, "from-edge").data == {"unit_name": "K"}
    wait_for(lambda: [r[2] for r in _statuses(edge, CloudEvent)] == ["DELIVERED"], what="the ack")
    link_runner.stop_edge(handle)
    link_runner.stop_cloud(server2, grace=0.2)
    edge.close()
    upgraded.close()


# -- the holding rules, on a real database -----------------------------------------------------------


def _state(entity_id: uuid.UUID, version: int) -> bytes:
    return pb.EntityState(
        id=str(entity_id), type="gauge", name="g", schema_version=version
    ).SerializeToString()


def test_why_held_keeps_an_entity_in_order_and_core_events_flow():
    caps = Capabilities({"gauge": 1, "entity_group": 1}, {"gauge": 2, "entity_group": 1}, "the edge")
    a, b = uuid.uuid4(), uuid.uuid4()
    assert caps.why_held(1, "_user", "UPDATED", "", b"") is None
    assert caps.why_held(2, "gauge", "ADDED", str(b), _state(b, 1)) is None  # an old state is fine
    assert "schema version 2" in caps.why_held(3, "gauge", "ADDED", str(a), _state(a, 2))
    assert caps.why_held(4, "gauge", "DELETED", str(a), b"") == "behind held seq 3 of the same entity"
    member = pb.Membership(container_id=str(uuid.uuid4()), member_id=str(a)).SerializeToString()
    assert "behind held seq 3" in caps.why_held(5, "entity_group", "MEMBER_ADDED", str(uuid.uuid4()), member)
    assert "no plugin for entity type 'dashboard'" in caps.why_held(6, "dashboard", "ADDED", "", b"")
    assert caps.why_held(7, "gauge", "UPDATED", str(b), b"garbage") is None  # the receiver refuses it


def test_release_renumbers_what_became_readable_with_its_entity_behind_it(cloud_node):
    with cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        edge, _ = c.create_edge("edge", t)
    a, b = uuid.uuid4(), uuid.uuid4()
    rows = [  # seq, type, action, entity, status
        (1, "dashboard", "ADDED", a, "HELD"),
        (2, "asset", "ADDED", b, "DELIVERED"),
        (3, "dashboard", "UPDATED", a, "HELD"),
        (4, "dashboard", "DELETED", a, "PENDING"),  # written while the edge was away
        (5, "asset", "UPDATED", b, "PENDING"),
    ]
    with cloud_node.db.begin() as s:
        for seq, type_, action, entity, status in rows:
            s.add(
                EdgeEvent(
                    edge_id=edge.id,
                    seq=seq,
                    tenant_id=t.id,
                    type=type_,
                    action=action,
                    entity_id=entity,
                    body=b"",
                    status=status,
                    error="held" if status == "HELD" else None,
                )
            )
        s.execute(
            sa.text("UPDATE stream_counter SET last_seq = 5 WHERE stream = :s"), {"s": f"downlink:{edge.id}"}
        )
    still = Capabilities({"asset": 1}, {"asset": 1, "dashboard": 1}, "the edge")
    with cloud_node.db.begin() as s:
        assert release_held(s, EdgeEvent, still, edge.id) == 0
    assert still.held_entities == {str(a): 1}
    now = Capabilities({"asset": 1, "dashboard": 1}, {"asset": 1, "dashboard": 1}, "the edge")
    with cloud_node.db.begin() as s:
        assert release_held(s, EdgeEvent, now, edge.id) == 2
    with cloud_node.db.read() as conn:
        got = conn.execute(
            sa.select(
                EdgeEvent.seq, EdgeEvent.action, EdgeEvent.type, EdgeEvent.status, EdgeEvent.error
            ).order_by(EdgeEvent.seq)
        ).all()
    assert [tuple(r) for r in got] == [
        (2, "ADDED", "asset", "DELIVERED", None),
        (5, "UPDATED", "asset", "PENDING", None),
        (6, "ADDED", "dashboard", "PENDING", None),  # in their order, the later delete behind them
        (7, "UPDATED", "dashboard", "PENDING", None),
        (8, "DELETED", "dashboard", "PENDING", None),
    ]


# -- retry re-reads the entity; an entity no rule claims stays on its edge ---------------------------


class Refuser:
    """A rule that refuses entities named bad-*: their creation FAILS in the cloud."""

    __name__ = "refuser"

    @staticmethod
    @hookimpl
    def winstar_edge_entity_created(created: Any) -> Any:
        if created.entity.name.startswith("bad-"):
            raise WinstarError("this cloud refuses bad-* names")
        return None


def test_retry_sends_the_entity_as_it_is_now(make_platform, db_url, tmp_path, link_runner):
    platform = make_platform(Refuser())
    cloud = Node(db_url, platform=platform)
    cloud.init_cloud("ce")
    with cloud.cloud() as c:
        t = c.create_tenant("Acme")
        c.create_user("admin@acme.io", t, "TENANT_ADMIN")
        edge, secret = c.create_edge("edge", t)
    server = link_runner.start_cloud(cloud, 0)
    edge_node = Node(f"sqlite:///{tmp_path / 'edge.db'}", platform=platform)
    edge_node.init_edge(f"127.0.0.1:{server.port}", edge.routing_key, secret)
    handle = link_runner.start_edge(edge_node)
    link_runner.wait_connected(handle)
    with edge_node.edge() as e:
        dev = e.create_entity("device", "bad-1", None, user_email="admin@acme.io")

    def failed() -> list[int]:
        with edge_node.edge() as e:
            return [r.seq for r in e.uplinks("FAILED")]

    # the ADDED fails before the update is queued (a pending ADDED would be superseded by it)
    wait_for(lambda: len(failed()) == 1, what="the ADDED to fail")
    with edge_node.edge() as e:
        e.update_entity(e.session.get(Entity, dev.id), name="good-1")
    wait_for(lambda: len(failed()) == 2, what="both uplinks to fail")
    with edge_node.edge() as e:
        first = e.retry_failed()
    with edge_node.edge() as e:
        assert e.retry_failed() == []  # each failure is queued once
    assert len(first) == 2
    wait_for(lambda: _entity(cloud, "good-1"), what="the retried device in the cloud")
    assert _entity(cloud, "bad-1") is None  # the retry sent what the device is now, not the old body
    link_runner.stop_edge(handle)
    link_runner.stop_cloud(server, grace=0.2)
    edge_node.close()
    cloud.close()


class Note(EntityType):
    """A creatable type whose plugin has no rule."""

    name = "note"
    schema = type("NoteSchema", (Schema,), {"text": fields.String(load_default="")})
    creatable_on_edge = True


class NotePlugin:
    __name__ = "notes"

    @staticmethod
    @hookimpl
    def winstar_register_entity_types(register: Any) -> None:
        register.add(Note)


@pytest.mark.parametrize("edition", ["ce", "pe"])
def test_an_entity_no_rule_claims_stays_on_its_edge_after_sync(
    make_platform, db_url, tmp_path, link_runner, edition
):
    platform = make_platform(NotePlugin(), entrypoints=edition == "pe")  # CE: no groups plugin at all
    cloud = Node(db_url, platform=platform)
    cloud.init_cloud(edition)
    with cloud.cloud() as c:
        t = c.create_tenant("Acme")
        role = [c.create_role("w", t, ["NOTE:WRITE"])] if edition == "pe" else []
        c.create_user("admin@acme.io", t, "TENANT_ADMIN", roles=role)
        edge, secret = c.create_edge("edge", t)
    server = link_runner.start_cloud(cloud, 0)
    edge_node = Node(f"sqlite:///{tmp_path / 'edge.db'}", platform=platform)
    edge_node.init_edge(f"127.0.0.1:{server.port}", edge.routing_key, secret)
    handle = link_runner.start_edge(edge_node)
    link_runner.wait_connected(handle)
    with edge_node.edge() as e:
        note = e.create_entity("note", "n1", {"text": "hi"}, user_email="admin@acme.io")
    wait_for(lambda: _entity(cloud, "n1"), what="the note in the cloud")
    with cloud.cloud() as c:
        assert note.id in c.effective_entity_ids(edge.id)
        c.request_sync(c.find_edge("edge"))
    wait_for(lambda: cloud_sync_state(cloud) == "done", timeout=60, what="the sync to finish")
    assert _entity(edge_node, "n1") is not None  # Sync Edge did not remove it
    link_runner.stop_edge(handle)
    link_runner.stop_cloud(server, grace=0.2)
    edge_node.close()
    cloud.close()


def cloud_sync_state(cloud: Node) -> str:
    with cloud.cloud() as c:
        return str(c.sync_outcome(c.find_edge("edge"))["state"])


# -- what a peer's schema version and a plugin's upgrade can do wrong --------------------------------


class Brittle(GaugeV2):
    @classmethod
    def upgrade(cls, data: dict[str, Any], from_version: int) -> Any:
        if data.get("unit") == "boom":
            raise KeyError("unit")
        if data.get("unit") == "list":
            return ["not", "an", "object"]
        if data.get("unit") == "nan":
            return {"unit_name": float("nan")}
        return {"unit_name": data.get("unit", "C")}


@pytest.mark.parametrize(
    ("payload", "version", "message"),
    [
        (b'{"unit_name": "K"}', 3, "schema version 3; this side's plugin knows version 2"),
        (b'{"unit_name": "K"}', 2**32 - 1, "schema version 4294967295"),
        (b'{"unit": "boom"}', 1, "could not be upgraded to 2: KeyError"),
        (b'{"unit": "list"}', 1, "upgrade returned list, not an object"),
        (b'{"unit": "nan"}', 1, "a number JSON cannot write"),
        (b'{"unit": "K", "extra": 1}', 1, None),  # upgrade drops it: valid
        (b'{"unit": 5}', 1, "invalid gauge data"),  # upgraded, then validated
        (b"\xff", 1, "not UTF-8"),
    ],
)
def test_a_peers_version_and_a_broken_upgrade_are_refusals(payload, version, message):
    from winstar_core.errors import InvalidData

    if message is None:
        assert Brittle.load_payload(payload, version) == {"unit_name": "K"}
        return
    with pytest.raises(InvalidData, match=message.replace("(", r"\(")):
        Brittle.load_payload(payload, version)


def test_the_current_version_and_version_0_skip_upgrade():
    assert Brittle.load_payload(b'{"unit_name": "K"}', 2) == {"unit_name": "K"}
    assert Brittle.load_payload(b'{"unit_name": "K"}', 0) == {"unit_name": "K"}  # not said


def test_a_merge_that_builds_invalid_data_is_refused_not_stored(make_platform, cloud_node):
    class Sloppy(EntityType):
        name = "sloppy"
        schema = GaugeV2Schema

        @classmethod
        def merge(cls, current: Any, changes: Any) -> dict[str, Any]:
            return {**current, **changes, "junk": True}  # does not validate

    plugin = types.SimpleNamespace(
        __name__="sloppy",
        winstar_register_entity_types=hookimpl(lambda register: register.add(Sloppy)),
    )
    node = Node(cloud_node.url, platform=make_platform(plugin))
    from winstar_core.errors import InvalidData

    with node.cloud() as c:
        e = c.create_entity("sloppy", "s", c.create_tenant("Acme"), {"unit_name": "K"})
    with pytest.raises(InvalidData, match="junk"), node.cloud() as c:
        c.update_entity(c.entities.find_entity("sloppy", "s"), data={"unit_name": "F"})
    assert _entity(node, "s").data == {"unit_name": "K"}
    assert e.name == "s"
    node.close()


class JournalSchema(Schema):
    entries = fields.List(fields.String(), load_default=list)


class Journal(EntityType):
    """Its merge appends: the edge's whole new state, merged again in the cloud, would double."""

    name = "journal"
    schema = JournalSchema
    creatable_on_edge = True

    @classmethod
    def merge(cls, current: Any, changes: Any) -> dict[str, Any]:
        return {"entries": [*current.get("entries", []), *changes.get("entries", [])]}


def test_an_edges_update_replaces_the_data_whatever_merge_does(kit, make_platform):
    """The cloud holds what the owning edge says, not its merge with what the cloud had."""
    plugin = types.SimpleNamespace(
        __name__="journals", winstar_register_entity_types=hookimpl(lambda register: register.add(Journal))
    )
    platform = make_platform(plugin)
    cloud = kit.cloud("ce", platform=platform)
    kit.tenant(cloud, "Acme")
    kit.user(cloud, "admin@acme.io", tenant="Acme")
    edge = kit.edge_node(cloud, kit.edge(cloud, "e", tenant="Acme"), platform=platform)
    data = '{"entries": ["x"]}'
    made = kit.json(edge, "entity", "create", "journal", "j", "--user", "admin@acme.io", "--data", data)
    assert kit.deliver_uplinks(edge, cloud).ok
    kit.json(edge, "entity", "update", "journal", made["id"], "--data", '{"entries": ["y"]}')
    assert kit.json(edge, "entity", "show", "journal", made["id"])["data"] == {"entries": ["x", "y"]}
    assert kit.deliver_uplinks(edge, cloud).ok
    assert kit.json(cloud, "entity", "show", "journal", made["id"])["data"] == {"entries": ["x", "y"]}


def test_release_keeps_a_membership_behind_its_released_member_and_none_releases_all(cloud_node):
    with cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        edge, _ = c.create_edge("edge", t)
    member, group = uuid.uuid4(), uuid.uuid4()
    join = pb.Membership(container_id=str(group), member_id=str(member)).SerializeToString()
    rows = [  # seq, type, action, entity, body, status
        (1, "dashboard", "ADDED", member, b"", "HELD"),
        (2, "entity_group", "MEMBER_ADDED", group, join, "PENDING"),  # written while the edge was away
        (3, "gauge", "ADDED", uuid.uuid4(), b"", "HELD"),
    ]
    with cloud_node.db.begin() as s:
        for seq, type_, action, entity, body, status in rows:
            s.add(
                EdgeEvent(
                    edge_id=edge.id,
                    seq=seq,
                    tenant_id=t.id,
                    type=type_,
                    action=action,
                    entity_id=entity,
                    body=body,
                    status=status,
                )
            )
        s.execute(
            sa.text("UPDATE stream_counter SET last_seq = 3 WHERE stream = :s"), {"s": f"downlink:{edge.id}"}
        )
    caps = Capabilities({"dashboard": 1, "entity_group": 1}, {"dashboard": 1, "entity_group": 1}, "the edge")
    with cloud_node.db.begin() as s:
        assert release_held(s, EdgeEvent, caps, edge.id) == 1

    def order() -> list[tuple[str, str]]:
        with cloud_node.db.read() as conn:
            return [
                tuple(r)
                for r in conn.execute(sa.select(EdgeEvent.action, EdgeEvent.status).order_by(EdgeEvent.seq))
            ]

    assert order() == [("ADDED", "HELD"), ("ADDED", "PENDING"), ("MEMBER_ADDED", "PENDING")]
    with cloud_node.db.begin() as s:  # a peer that announces nothing is sent everything
        assert release_held(s, EdgeEvent, None, edge.id) == 1
    assert [st for _, st in order()] == ["PENDING"] * 3


def test_retry_does_not_bring_back_a_deleted_or_unassigned_entity(cloud_node):
    with cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        edge, _ = c.create_edge("edge", t)
        gone, moved, kept = (c.create_entity("asset", n, t) for n in ("gone", "moved", "kept"))
        for a in (gone, moved, kept):
            c.assign(edge, a)
    with cloud_node.db.begin() as s:  # the three ADDED failed on the edge
        s.execute(sa.update(EdgeEvent).values(status="FAILED", error="refused"))
    with cloud_node.cloud() as c:
        c.delete_entity(c.entities.find_entity("asset", "gone"))
        c.unassign(c.find_edge("edge"), c.entities.find_entity("asset", "moved"))
    with cloud_node.cloud() as c:
        again = c.retry_failed(c.find_edge("edge"))
    assert len(again) == 1  # only the asset still on the edge is sent again
    with cloud_node.cloud() as c:
        rows = {r.entity_id: r for r in c.downlinks(c.find_edge("edge"), status="FAILED")}
        assert rows[gone.id].error.endswith("(not retried: the entity no longer exists)")
        assert rows[moved.id].error.endswith("(not retried: the entity is no longer assigned to this edge)")
        assert c.retry_failed(c.find_edge("edge")) == []  # and asking again changes nothing
        assert rows[gone.id].error.count("not retried") == 1
