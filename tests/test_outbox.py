"""The transactional outbox rules, row by row, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from helpers import downlink_rows, make_tenant_and_edge

from winstar_core.errors import NotFound, WinstarError


def _entity(node, type_name, name, data=None, tenant="Acme"):
    with node.cloud() as c:
        return c.create_entity(type_name, name, c.find_tenant(tenant), data)


def _do(node, fn):
    with node.cloud() as c:
        return fn(c)


def test_create_writes_no_event_until_assigned(cloud_node):
    _, edge, _ = make_tenant_and_edge(cloud_node)
    dev = _entity(cloud_node, "device", "d1")
    assert downlink_rows(cloud_node) == []
    _do(cloud_node, lambda c: c.assign(c.find_edge(edge.id), c.entities.find_entity("device", "d1")))
    assert downlink_rows(cloud_node) == [(1, "device", "ADDED", str(dev.id))]


def test_update_and_delete_write_one_row_per_effective_edge(cloud_node):
    _, e1, _ = make_tenant_and_edge(cloud_node)
    with cloud_node.cloud() as c:
        e2, _ = c.create_edge("edge-2", c.find_tenant("Acme"))
        c.create_edge("edge-3", c.find_tenant("Acme"))  # not assigned: hears nothing
        d = c.create_entity("dashboard", "D", c.find_tenant("Acme"), {"title": "a"})
        c.assign(c.find_edge(e1.id), d)
        c.assign(c.find_edge(e2.id), d)
    _do(cloud_node, lambda c: c.update_entity(c.entities.find_entity("dashboard", "D"), data={"title": "b"}))
    # the pending ADDED is superseded (compaction): the update, written as an ADDED, replaces it
    assert [r[1:3] for r in downlink_rows(cloud_node, e1.id)] == [
        ("dashboard", "ADDED"),
        ("dashboard", "ADDED"),
    ]
    assert [r[1:3] for r in downlink_rows(cloud_node, e2.id)] == [
        ("dashboard", "ADDED"),
        ("dashboard", "ADDED"),
    ]
    # an update that changes nothing writes nothing and keeps the version
    _do(cloud_node, lambda c: c.update_entity(c.entities.find_entity("dashboard", "D"), data={"title": "b"}))
    assert len(downlink_rows(cloud_node)) == 4
    _do(cloud_node, lambda c: c.delete_entity(c.entities.find_entity("dashboard", "D")))
    rows = downlink_rows(cloud_node)
    assert sorted(r[2] for r in rows) == ["ADDED", "ADDED", "ADDED", "ADDED", "DELETED", "DELETED"]
    assert [r[0] for r in downlink_rows(cloud_node, e1.id)] == [1, 2, 3]


def test_rolled_back_change_leaves_no_event(cloud_node):
    _, edge, _ = make_tenant_and_edge(cloud_node)
    with cloud_node.cloud() as c:
        d = c.create_entity("asset", "A", c.find_tenant("Acme"))
        c.assign(c.find_edge(edge.id), d)
    before = downlink_rows(cloud_node)
    with pytest.raises(RuntimeError), cloud_node.cloud() as c:
        c.update_entity(c.entities.find_entity("asset", "A"), data={"label": "x"})
        raise RuntimeError("crash before commit")
    with pytest.raises(WinstarError), cloud_node.cloud() as c:
        c.update_entity(c.entities.find_entity("asset", "A"), data={"label": "y"})
        c.update_entity(c.entities.find_entity("asset", "A"), data={"no_such_field": 1})
    assert downlink_rows(cloud_node) == before
    with cloud_node.cloud() as c:
        a = c.entities.find_entity("asset", "A")
        assert (a.version, a.data["label"]) == (1, None)
    # and the stream goes on without a hole
    _do(cloud_node, lambda c: c.update_entity(c.entities.find_entity("asset", "A"), data={"label": "z"}))
    assert [r[0] for r in downlink_rows(cloud_node)] == [1, 2]


def test_unassign_and_tenant_isolation(cloud_node):
    _, edge, _ = make_tenant_and_edge(cloud_node)
    with cloud_node.cloud() as c:
        other = c.create_tenant("Other")
        foreign = c.create_entity("asset", "theirs", other)
        with pytest.raises(WinstarError, match="another tenant"):
            c.assign(c.find_edge(edge.id), foreign)
    with cloud_node.cloud() as c:
        a = c.create_entity("asset", "A", c.find_tenant("Acme"))
        c.assign(c.find_edge(edge.id), a)
        assert c.assign(c.find_edge(edge.id), a) is False  # idempotent, no second event
    _do(cloud_node, lambda c: c.unassign(c.find_edge(edge.id), c.entities.find_entity("asset", "A")))
    assert [r[2] for r in downlink_rows(cloud_node)] == ["ADDED", "UNASSIGNED"]
    with pytest.raises(NotFound):
        _do(cloud_node, lambda c: c.unassign(c.find_edge(edge.id), c.entities.find_entity("asset", "A")))


def test_group_assignment_members_now_and_later(cloud_node):
    _, edge, _ = make_tenant_and_edge(cloud_node)
    with cloud_node.cloud() as c:
        t = c.find_tenant("Acme")
        g = c.create_entity("entity_group", "G", t, {"entity_type": "device"})
        d1 = c.create_entity("device", "d1", t)
        c.add_member(g, d1)
        c.assign(c.find_edge(edge.id), g)
    rows = downlink_rows(cloud_node)
    assert [(r[1], r[2]) for r in rows] == [
        ("device", "ADDED"),
        ("entity_group", "ADDED"),
        ("entity_group", "MEMBER_ADDED"),
    ]
    with cloud_node.cloud() as c:
        t = c.find_tenant("Acme")
        d2 = c.create_entity("device", "d2", t)
        c.add_member(c.entities.find_entity("entity_group", "G"), d2)
    assert [(r[1], r[2], r[3]) for r in downlink_rows(cloud_node)[3:]] == [
        ("device", "ADDED", str(d2.id)),
        ("entity_group", "MEMBER_ADDED", str(g.id)),
    ]
    with cloud_node.cloud() as c, pytest.raises(WinstarError, match="does not hold"):
        c.add_member(
            c.entities.find_entity("entity_group", "G"),
            c.create_entity("asset", "a", c.find_tenant("Acme")),
        )
    # d1 also assigned directly: removing it from the group must not remove it from the edge
    _do(cloud_node, lambda c: c.assign(c.find_edge(edge.id), c.entities.find_entity("device", "d1")))
    assert len(downlink_rows(cloud_node)) == 5  # already effective: no second ADDED
    _do(
        cloud_node,
        lambda c: c.remove_member(
            c.entities.find_entity("entity_group", "G"), c.entities.find_entity("device", "d1")
        ),
    )
    assert [r[2] for r in downlink_rows(cloud_node)[5:]] == ["MEMBER_REMOVED"]
    # unassigning the group removes the members that only it brought (d2), not d1
    _do(cloud_node, lambda c: c.unassign(c.find_edge(edge.id), c.entities.find_entity("entity_group", "G")))
    tail = downlink_rows(cloud_node)[6:]
    assert sorted((r[2], r[3]) for r in tail) == sorted(
        [("UNASSIGNED", str(g.id)), ("UNASSIGNED", str(d2.id))]
    )
    with cloud_node.cloud() as c:
        assert {e.name for e in c.effective_entities(c.find_edge(edge.id))} == {"d1"}


def test_deleting_assigned_group_removes_its_members_from_the_edge(cloud_node):
    _, edge, _ = make_tenant_and_edge(cloud_node)
    with cloud_node.cloud() as c:
        t = c.find_tenant("Acme")
        g = c.create_entity("entity_group", "G", t, {"entity_type": "asset"})
        a = c.create_entity("asset", "a", t)
        c.add_member(g, a)
        c.assign(c.find_edge(edge.id), g)
    n = len(downlink_rows(cloud_node))
    _do(cloud_node, lambda c: c.delete_entity(c.entities.find_entity("entity_group", "G")))
    assert sorted((r[2], r[3]) for r in downlink_rows(cloud_node)[n:]) == sorted(
        [("DELETED", str(g.id)), ("UNASSIGNED", str(a.id))]
    )


def test_dependencies_sent_first(cloud_node):
    _, edge, _ = make_tenant_and_edge(cloud_node)
    with cloud_node.cloud() as c:
        t = c.find_tenant("Acme")
        g = c.create_entity("entity_group", "G", t, {"entity_type": "dashboard"})
        c.add_member(g, c.create_entity("dashboard", "D", t))
        c.assign(c.find_edge(edge.id), g)
    types = [r[1] for r in downlink_rows(cloud_node) if r[2] == "ADDED"]
    assert types == ["entity_group", "dashboard"]


def test_user_changes_reach_every_edge_of_the_tenant(cloud_node):
    _, edge, _ = make_tenant_and_edge(cloud_node)
    with cloud_node.cloud() as c:
        c.create_user("admin@acme.io", c.find_tenant("Acme"), "TENANT_ADMIN")
    assert [(r[1], r[2]) for r in downlink_rows(cloud_node)] == [("_user", "UPDATED")]


def test_a_failed_event_is_retried_at_most_once_and_its_copy_may_be_retried_in_turn(edge_node):
    import uuid as _uuid

    import sqlalchemy as sa

    from winstar_core.store.models import CloudEvent, StreamCounter
    from winstar_core.store.outbox import UPLINK_STREAM

    tenant = _uuid.uuid4()
    with edge_node.db.begin() as s:  # three uplinks the cloud refused
        s.execute(sa.update(StreamCounter).where(StreamCounter.stream == UPLINK_STREAM).values(last_seq=3))
        for seq in range(1, 4):
            s.add(
                CloudEvent(
                    seq=seq, tenant_id=tenant, type="t", action="ADDED", body=b"", status="FAILED", error="no"
                )
            )
    with edge_node.edge() as e:
        first = e.retry_failed(list(range(1, 1_200)))  # SEQs beyond one statement's worth are fine
        assert e.retry_failed() == []  # nothing is sent twice
    with edge_node.db.begin() as s:
        s.execute(
            sa.update(CloudEvent).where(CloudEvent.seq.in_(first)).values(status="FAILED", error="again")
        )
    with edge_node.edge() as e:
        second = e.retry_failed()
    with edge_node.db.read() as conn:
        rows = {
            seq: retried for seq, retried in conn.execute(sa.select(CloudEvent.seq, CloudEvent.retried_as))
        }
    assert first == [4, 5, 6] and second == [7, 8, 9]
    assert rows == {1: 4, 2: 5, 3: 6, 4: 7, 5: 8, 6: 9, 7: None, 8: None, 9: None}
