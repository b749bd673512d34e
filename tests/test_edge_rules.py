"""Creating entities on an edge: the brief's edition rules, with users as the cloud sends them."""

from __future__ import annotations

import pytest
from helpers import make_tenant_and_edge, uplink_rows

from winstar_core.errors import PermissionDenied, WinstarError


def test_before_first_connect_creation_is_refused(edge_node):
    with pytest.raises(WinstarError, match="has not connected"), edge_node.edge() as e:
        e.create_entity("device", "d", None, user_email="a@acme.io")
    assert uplink_rows(edge_node) == []


def test_ce_rules(cloud_node, edge_node, seed_edge):
    make_tenant_and_edge(cloud_node)
    with cloud_node.cloud() as c:
        t = c.find_tenant("Acme")
        cust = c.create_customer("Cust", t)
        c.create_user("admin@acme.io", t, "TENANT_ADMIN")
        c.create_user("user@acme.io", t, "CUSTOMER_USER", cust)
    seed_edge(cloud_node, edge_node, "edge-1")

    with edge_node.edge() as e:
        dev = e.create_entity("device", "thermo", {"label": "T"}, user_email="admin@acme.io")
    rows = uplink_rows(edge_node)
    assert rows == [(1, "device", "ADDED", str(dev.id))]
    assert dev.data["credentials"]["access_token"]  # generated when not given

    with pytest.raises(PermissionDenied, match="tenant administrator"), edge_node.edge() as e:
        e.create_entity("device", "d2", None, user_email="user@acme.io")
    with pytest.raises(PermissionDenied, match="cannot be created on an edge"), edge_node.edge() as e:
        e.create_entity("dashboard", "D", None, user_email="admin@acme.io")
    with pytest.raises(WinstarError, match="no user"), edge_node.edge() as e:
        e.create_entity("device", "d3", None, user_email="nobody@acme.io")
    assert uplink_rows(edge_node) == rows  # nothing half-applied
    with edge_node.edge() as e:
        assert [d.name for d in e.entities.list_entities("device")] == ["thermo"]


def test_pe_rules(pe_cloud_node, edge_node, seed_edge):
    cloud = pe_cloud_node
    make_tenant_and_edge(cloud)
    with cloud.cloud() as c:
        t = c.find_tenant("Acme")
        cust = c.create_customer("Cust", t)
        writer = c.create_role("device-writer", t, ["device:write"])
        reader = c.create_role("device-reader", t, ["DEVICE:READ", "ASSET:WRITE"])
        c.create_user("w@acme.io", t, "CUSTOMER_USER", cust, [writer])
        c.create_user("r@acme.io", t, "CUSTOMER_USER", cust, [reader])
        c.create_user("admin@acme.io", t, "TENANT_ADMIN")
    seed_edge(cloud, edge_node, "edge-1")
    with edge_node.edge() as e:
        e.create_entity("device", "d1", None, user_email="w@acme.io")
    with pytest.raises(PermissionDenied, match="DEVICE:WRITE"), edge_node.edge() as e:
        e.create_entity("device", "d2", None, user_email="r@acme.io")
    with pytest.raises(PermissionDenied), edge_node.edge() as e:
        e.create_entity("device", "d3", None, user_email="admin@acme.io")  # no role grants it
    assert [r[1:3] for r in uplink_rows(edge_node)] == [("device", "ADDED")]


def test_cloud_applies_edge_created_device_ce_assigns_it(cloud_node, edge_node, seed_edge):
    _, edge, _ = make_tenant_and_edge(cloud_node)
    with cloud_node.cloud() as c:
        c.create_user("admin@acme.io", c.find_tenant("Acme"), "TENANT_ADMIN")
    seed_edge(cloud_node, edge_node, "edge-1")
    with edge_node.edge() as e:
        dev = e.create_entity("device", "thermo", None, user_email="admin@acme.io")
    with edge_node.edge() as e:
        event = _as_pb(e.uplinks()[0])
    with cloud_node.cloud() as c:
        c.apply_uplink(c.find_edge(edge.id), event)
    with cloud_node.cloud() as c:
        cdev = c.entities.find_entity("device", str(dev.id))
        assert cdev.origin_edge_id == edge.id and cdev.name == "thermo"
        assert [x.id for x in c.effective_entities(c.find_edge(edge.id))] == [dev.id]


def test_pe_edge_created_device_goes_into_edge_all_group(pe_cloud_node, edge_node, seed_edge):
    cloud = pe_cloud_node
    _, edge, _ = make_tenant_and_edge(cloud, edge="Plant 7")
    with cloud.cloud() as c:
        t = c.find_tenant("Acme")
        c.create_user("w@acme.io", t, "TENANT_ADMIN", roles=[c.create_role("w", t, ["DEVICE:WRITE"])])
    seed_edge(cloud, edge_node, "Plant 7")
    for name in ("d1", "d2"):
        with edge_node.edge() as e:
            e.create_entity("device", name, None, user_email="w@acme.io")
    with edge_node.edge() as e:
        events = [_as_pb(ev) for ev in reversed(e.uplinks())]
    for ev in events:
        with cloud.cloud() as c:
            c.apply_uplink(c.find_edge(edge.id), ev)
    with cloud.cloud() as c:
        groups = c.entities.list_entities("entity_group")
        assert [g.name for g in groups] == ["[Edge] Plant 7 All"]  # created once
        assert [m.name for m in c.members(groups[0])] == ["d1", "d2"]
        assert {e.name for e in c.effective_entities(c.find_edge(edge.id))} == {
            "[Edge] Plant 7 All",
            "d1",
            "d2",
        }


def test_edge_created_name_collision_is_resolved_deterministically(cloud_node, edge_node, seed_edge):
    _, edge, _ = make_tenant_and_edge(cloud_node)
    with cloud_node.cloud() as c:
        t = c.find_tenant("Acme")
        c.create_user("admin@acme.io", t, "TENANT_ADMIN")
        c.create_entity("device", "pump", t)
    seed_edge(cloud_node, edge_node, "edge-1")
    with edge_node.edge() as e:
        e.create_entity("device", "pump", None, user_email="admin@acme.io")
    _apply_first_uplink_twice(cloud_node, edge_node, edge.id)
    with cloud_node.cloud() as c:
        names = sorted(d.name for d in c.entities.list_entities("device"))
    assert names == ["pump", "pump (edge-1)"]


def test_renamed_long_names_still_fit_and_stay_distinct(cloud_node, edge_node, seed_edge):
    edge_name, long = "E" * 255, "p" * 255
    first = f"{long[: 255 - 203]} ({'E' * 200})"  # NAME (EDGE_NAME), both cut to fit 255
    _, edge, _ = make_tenant_and_edge(cloud_node, edge=edge_name)
    with cloud_node.cloud() as c:
        t = c.find_tenant("Acme")
        c.create_user("admin@acme.io", t, "TENANT_ADMIN")
        c.create_entity("device", long, t)
        c.create_entity("device", first, t)  # the first way out is taken too
    seed_edge(cloud_node, edge_node, edge_name)
    with edge_node.edge() as e:
        dev = e.create_entity("device", long, None, user_email="admin@acme.io")
    _apply_first_uplink_twice(cloud_node, edge_node, edge.id)
    with cloud_node.cloud() as c:
        names = sorted(d.name for d in c.entities.list_entities("device"))
        got = c.entities.find_entity("device", str(dev.id)).name
    second = f" ({'E' * 200} {str(dev.id)[:8]})"
    assert got == long[: 255 - len(second)] + second and len(got) == 255
    assert len(names) == 3 and len(set(names)) == 3 and all(len(n) <= 255 for n in names)


def _apply_first_uplink_twice(cloud_node, edge_node, edge_id):
    """The edge's first uplink applied in the cloud twice: a redelivery must change nothing."""
    with edge_node.edge() as e:
        ev = _as_pb(e.uplinks()[0])
    for _ in range(2):
        with cloud_node.cloud() as c:
            c.apply_uplink(c.find_edge(edge_id), ev)


def _as_pb(row):
    from winstar_core.transport.pb import sync_pb2 as pb

    return pb.Event(
        seq=row.seq, type=row.type, action=row.action, entity_id=str(row.entity_id), body=row.body
    )
