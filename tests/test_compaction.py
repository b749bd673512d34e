"""Compaction (issue 9, docs/protocol.md "Compaction"): a change queued for a stream that still
holds older PENDING events of the same entity supersedes them; the receiver gets the final state,
never an older state after a newer one, and the order between entities holds."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from winstar_core.node import Node
from winstar_core.store.models import CloudEvent, EdgeEvent, Entity, EntityMember
from winstar_core.transport.link import OutboxStream
from winstar_core.transport.pb import sync_pb2 as pb


def _world(kit, db_url):
    cloud = kit.cloud(url=db_url)
    tenant = kit.tenant(cloud)
    kit.user(cloud, "admin@acme.io", tenant)
    edge = kit.edge(cloud, "edge-1")
    return cloud, tenant, edge


def _rows(node: Node, model, edge_id=None) -> list:
    with node.db.read() as conn:
        stmt = sa.select(
            model.seq, model.action, model.entity_id, model.status, model.error, model.delivered_time
        ).order_by(model.seq)
        if edge_id is not None:
            stmt = stmt.where(model.edge_id == edge_id)
        return list(conn.execute(stmt))


def _state(node: Node, type_name: str = "device") -> dict[uuid.UUID, tuple[str, int, dict]]:
    with node.db.read() as conn:
        rows = conn.execute(
            sa.select(Entity.id, Entity.name, Entity.version, Entity.data).where(Entity.type == type_name)
        )
        return {uuid.UUID(str(i)): (n, v, d) for i, n, v, d in rows}


def _check_superseded(rows) -> None:
    """Every SUPERSEDED row names a later row of the same entity, and has a delivered_time."""
    by_seq = {r.seq: r for r in rows}
    for r in rows:
        if r.status == "SUPERSEDED":
            assert r.error.startswith("superseded by seq "), r
            n = int(r.error.rsplit(" ", 1)[1])
            assert n > r.seq and by_seq[n].entity_id == r.entity_id, (r, by_seq.get(n))
            assert r.delivered_time is not None


def test_an_offline_edge_receives_each_entity_once_at_its_final_state(kit, db_url):
    cloud, tenant, edge = _world(kit, db_url)
    edge_node = kit.edge_node(cloud, edge)
    with cloud.cloud() as c:
        e = c.find_edge(edge.id)
        t = c.find_tenant(tenant.id)
        ids = [c.create_entity("device", f"dev-{i}", t, {"label": "v0"}).id for i in range(50)]
        for i in ids:
            c.assign(e, c.session.get(Entity, i))
    for k in range(1, 101):  # 100 changes of each, one transaction per round
        with cloud.cloud() as c:
            for n, i in enumerate(ids):
                c.update_entity(c.session.get(Entity, i), data={"label": f"v{k}"}, name=f"dev-{n}-{k}")
    rows = _rows(cloud, EdgeEvent, edge.id)
    assert len(rows) == 50 * 101
    assert sum(r.status == "PENDING" for r in rows) == 50
    assert sum(r.status == "SUPERSEDED" for r in rows) == 50 * 100
    _check_superseded(rows)
    delivery = kit.deliver_downlinks(cloud, edge_node)
    assert delivery.ok
    assert len(delivery.verdicts) == 50  # one event per entity
    assert {v.action for v in delivery.verdicts} == {"ADDED"}  # its ADDED was superseded: it creates
    assert sorted(uuid.UUID(v.entity_id) for v in delivery.verdicts) == sorted(ids)
    final = _state(cloud)
    assert _state(edge_node) == final
    assert {v[0] for v in final.values()} == {f"dev-{n}-100" for n in range(50)}


def test_an_update_then_a_delete_sends_the_delete_only(kit, db_url):
    cloud, tenant, edge = _world(kit, db_url)
    edge_node = kit.edge_node(cloud, edge)
    dev = kit.create(cloud, "device", "D", {"label": "a"})
    never = kit.create(cloud, "device", "N", {"label": "a"})
    kit.assign(cloud, edge, "device", dev)
    assert kit.deliver_downlinks(cloud, edge_node).ok  # D reached the edge
    kit.assign(cloud, edge, "device", never)  # N never will
    for k in range(3):
        kit.update(cloud, "device", dev, {"label": f"b{k}"})
        kit.update(cloud, "device", never, {"label": f"b{k}"})
    kit.delete(cloud, "device", dev)
    kit.delete(cloud, "device", never)
    delivery = kit.deliver_downlinks(cloud, edge_node)
    assert delivery.ok, delivery.errors
    assert [(v.action, v.entity_id) for v in delivery.verdicts] == [
        ("DELETED", str(dev.id)),
        ("DELETED", str(never.id)),  # of an entity the edge never saw: harmless
    ]
    assert _state(edge_node) == {}
    _check_superseded(_rows(cloud, EdgeEvent, edge.id))


def test_a_removal_then_a_re_create_keeps_both_and_ends_at_the_final_state(kit, db_url):
    cloud, tenant, edge = _world(kit, db_url)
    edge_node = kit.edge_node(cloud, edge)
    dev = kit.create(cloud, "device", "D", {"label": "a"})
    kit.assign(cloud, edge, "device", dev)
    assert kit.deliver_downlinks(cloud, edge_node).ok
    kit.update(cloud, "device", dev, {"label": "b"})
    kit.unassign(cloud, edge, "device", dev)  # supersedes the UPDATED
    kit.update(cloud, "device", dev, {"label": "c"})  # not assigned: nothing sent
    kit.assign(cloud, edge, "device", dev)  # the re-create: the removal stays before it
    kit.update(cloud, "device", dev, {"label": "d"})  # supersedes the ADDED, not the UNASSIGNED
    delivery = kit.deliver_downlinks(cloud, edge_node)
    assert delivery.ok, delivery.errors
    assert [v.action for v in delivery.verdicts] == ["UNASSIGNED", "ADDED"]
    assert _state(edge_node) == _state(cloud)
    assert _state(edge_node)[dev.id][2]["label"] == "d"
    statuses = [(r.action, r.status) for r in _rows(cloud, EdgeEvent, edge.id)]
    assert statuses == [
        ("ADDED", "DELIVERED"),
        ("UPDATED", "SUPERSEDED"),
        ("UNASSIGNED", "DELIVERED"),
        ("ADDED", "SUPERSEDED"),
        ("ADDED", "DELIVERED"),  # the UPDATED that replaced an ADDED is sent as one
    ]


def test_a_membership_never_arrives_before_its_member(kit, db_url):
    cloud, tenant, edge = _world(kit, db_url)
    edge_node = kit.edge_node(cloud, edge)
    with cloud.cloud() as c:
        t = c.find_tenant(tenant.id)
        group = c.create_entity("entity_group", "G", t, {"entity_type": "device"})
        c.assign(c.find_edge(edge.id), group)
    with cloud.cloud() as c:  # X's ADDED, then G's MEMBER_ADDED naming X
        x = c.create_entity("device", "X", c.find_tenant(tenant.id), {"label": "v0"})
        c.add_member(c.session.get(Entity, group.id), x)
        x_id = x.id
    for k in range(1, 6):
        with cloud.cloud() as c:
            c.update_entity(c.session.get(Entity, x_id), data={"label": f"v{k}"})
    rows = [r for r in _rows(cloud, EdgeEvent, edge.id) if r.entity_id == x_id]
    # the ADDED stays (the membership behind it needs it); the updates after it compact
    assert [(r.action, r.status) for r in rows] == [
        ("ADDED", "PENDING"),
        *[("UPDATED", "SUPERSEDED")] * 4,
        ("UPDATED", "PENDING"),
    ]
    delivery = kit.deliver_downlinks(cloud, edge_node)
    assert delivery.ok, delivery.errors
    order = [(v.action, v.entity_id) for v in delivery.verdicts]
    assert order.index(("ADDED", str(x_id))) < order.index(("MEMBER_ADDED", str(group.id)))
    with edge_node.db.read() as conn:
        members = list(conn.execute(sa.select(EntityMember.container_id, EntityMember.member_id)))
    assert [(uuid.UUID(str(a)), uuid.UUID(str(b))) for a, b in members] == [(group.id, x_id)]
    assert _state(edge_node) == _state(cloud)


def test_a_dependency_is_not_moved_behind_its_dependant(kit, db_url):
    cloud, tenant, edge = _world(kit, db_url)
    edge_node = kit.edge_node(cloud, edge)
    dev = kit.create(cloud, "device", "D", {"label": "a"})
    board = kit.create(cloud, "dashboard", "B", {"title": "t"})
    kit.assign(cloud, edge, "device", dev)
    kit.assign(cloud, edge, "dashboard", board)  # dashboards depend on devices
    kit.update(cloud, "device", dev, {"label": "b"})
    kit.update(cloud, "dashboard", board, {"title": "u"})  # a dependant may move later
    delivery = kit.deliver_downlinks(cloud, edge_node)
    assert delivery.ok
    assert [(v.type, v.action) for v in delivery.verdicts] == [
        ("device", "ADDED"),  # kept: the dashboard's ADDED behind it needs it
        ("device", "UPDATED"),
        ("dashboard", "ADDED"),  # its UPDATED, written as an ADDED
    ]
    assert _state(edge_node, "dashboard") == _state(cloud, "dashboard")
    assert _state(edge_node) == _state(cloud)


def test_uplinks_of_an_offline_edge_compact(kit, db_url):
    cloud, tenant, edge = _world(kit, db_url)
    edge_node = kit.edge_node(cloud, edge)
    ids = []
    with edge_node.edge() as e:
        for i in range(20):
            ids.append(e.create_entity("device", f"dev-{i}", {"label": "v0"}, user_email="admin@acme.io").id)
    for k in range(1, 11):
        with edge_node.edge() as e:
            for i in ids:
                e.update_entity(e.session.get(Entity, i), data={"label": f"v{k}"})
    gone = ids[:5]
    with edge_node.edge() as e:
        for i in gone:
            e.delete_entity(e.session.get(Entity, i))
    rows = _rows(edge_node, CloudEvent)
    _check_superseded(rows)
    pending = [r for r in rows if r.status == "PENDING"]
    assert len(pending) == 20
    assert {(r.action, r.entity_id in gone) for r in pending} == {("ADDED", False), ("DELETED", True)}
    delivery = kit.deliver_uplinks(edge_node, cloud)
    assert delivery.ok, delivery.errors
    assert len(delivery.verdicts) == 20  # one event per device
    cloud_state = _state(cloud)
    assert set(cloud_state) == set(ids[5:])
    assert {i: (s[0], s[2]["label"]) for i, s in cloud_state.items()} == {
        i: (s[0], s[2]["label"]) for i, s in _state(edge_node).items()
    }
    assert {s[2]["label"] for s in cloud_state.values()} == {"v10"}


def test_the_downlinks_and_uplinks_views_show_superseded_events(kit, db_url):
    cloud, tenant, edge = _world(kit, db_url)
    edge_node = kit.edge_node(cloud, edge)
    dev = kit.create(cloud, "device", "D", {"label": "a"})
    kit.assign(cloud, edge, "device", dev)
    kit.update(cloud, "device", dev, {"label": "b"})
    kit.update(cloud, "device", dev, {"label": "c"})
    shown = kit.json(cloud, "edge", "downlinks", edge.name, "--status", "superseded")
    assert sorted((r["seq"], r["status"], r["error"]) for r in shown) == [
        (1, "superseded", "superseded by seq 2"),
        (2, "superseded", "superseded by seq 3"),
    ]
    pending = kit.json(cloud, "edge", "downlinks", edge.name, "--status", "pending")
    assert [(r["seq"], r["action"]) for r in pending] == [(3, "ADDED")]
    with edge_node.edge() as e:
        own = e.create_entity("device", "mine", None, user_email="admin@acme.io")
        own_id = own.id
    with edge_node.edge() as e:
        e.update_entity(e.session.get(Entity, own_id), data={"label": "x"})
    up = kit.json(edge_node, "uplinks", "--status", "superseded")
    assert [(r["status"], r["error"]) for r in up] == [
        ("superseded", f"superseded by seq {up[0]['seq'] + 1}")
    ]


@pytest.mark.postgres
def test_race_between_compaction_and_a_sender(kit, pg_url):
    """A writer updates a few entities (and grows a group) while a sender fetches and acknowledges
    the stream and applies what it gets to a model of the receiver: the model ends at the cloud's
    state, never takes an older state after a newer one, never a membership before its member."""
    cloud, tenant, edge = _world(kit, pg_url)
    with cloud.cloud() as c:
        t = c.find_tenant(tenant.id)
        e = c.find_edge(edge.id)
        group = c.create_entity("entity_group", "G", t, {"entity_type": "device"})
        c.assign(e, group)
        ids = [c.create_entity("device", f"dev-{i}", t, {"label": "v0"}).id for i in range(5)]
        for i in ids:
            c.assign(e, c.session.get(Entity, i))
        group_id = group.id
    with cloud.cloud() as c:  # before the race, nothing sent yet: this one surely compacts
        c.update_entity(c.session.get(Entity, ids[0]), data={"label": "before the race"})
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for k in range(1, 301):
                with cloud.cloud() as c:
                    entity = c.session.get(Entity, ids[k % len(ids)])
                    c.update_entity(entity, data={"label": f"v{k}"})
                if k % 30 == 0:  # a new member: its ADDED, then the membership, then updates
                    with cloud.cloud() as c:
                        x = c.create_entity("device", f"m-{k}", c.find_tenant(tenant.id), {"label": "v0"})
                        c.add_member(c.session.get(Entity, group_id), x)
                        ids.append(x.id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    model: dict[str, tuple[int, str]] = {}
    members: set[str] = set()
    mark = 0
    stream = OutboxStream(cloud.db, edge.id)

    def apply(events: list[pb.Event]) -> list[pb.EventResult]:
        nonlocal mark
        results = []
        for ev in events:
            if ev.seq > mark:  # a duplicate is answered, not applied
                if ev.action in ("ADDED", "UPDATED"):
                    state = pb.EntityState.FromString(ev.body)
                    before = model.get(ev.entity_id)
                    assert before is None or before[0] < state.version, (ev.seq, before, state.version)
                    model[ev.entity_id] = (state.version, state.name)
                elif ev.action == "MEMBER_ADDED":
                    m = pb.Membership.FromString(ev.body)
                    assert m.member_id in model, f"membership of {m.member_id} before its member"
                    members.add(m.member_id)
                mark = ev.seq
            results.append(pb.EventResult(seq=ev.seq, ok=True))
        return results

    def sender() -> None:
        try:
            cursor = 0
            while True:
                finished = done.is_set()
                events, _ = stream.fetch(cursor, 7)
                if events:
                    cursor = events[-1].seq
                    results = apply(events)
                    time.sleep(0.002)  # the batch is "in flight" while the writer goes on
                    stream.acknowledge(results)
                elif finished:
                    return
                else:
                    time.sleep(0.001)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=sender)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    assert stream.pending() == 0
    final = _state(cloud)
    assert {uuid.UUID(k): v for k, v in model.items() if uuid.UUID(k) in final} == {
        i: (v, n) for i, (n, v, _) in final.items()
    }
    assert len(members) == 10
    rows = _rows(cloud, EdgeEvent, edge.id)
    # compaction happened (surely before the race; during it, as the two threads interleave)
    assert any(r.status == "SUPERSEDED" for r in rows)
    assert {r.status for r in rows} <= {"DELIVERED", "SUPERSEDED"}
    _check_superseded(rows)
