import pytest

from winstar_core.errors import WinstarError
from winstar_core.testing import assert_loaded_through_entry_point


def test_loaded_through_its_entry_point(platform):
    assert_loaded_through_entry_point(platform, "groups", "winstar-groups", ["entity_group"])


def test_group_type(platform):
    group = platform.types.get("entity_group")
    assert group.container
    data = group.validate({"entity_type": "device"})
    assert group.accepts_member(data, "device") and not group.accepts_member(data, "asset")
    with pytest.raises(WinstarError, match="entity_type"):
        group.validate({})
    with pytest.raises(WinstarError, match="cannot change"):
        group.merge(data, {"entity_type": "asset"})


def test_group_members_follow_to_the_edge(cloud_node):
    with cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        edge, _ = c.create_edge("e", t)
        g = c.create_entity("entity_group", "G", t, {"entity_type": "asset"})
        c.assign(edge, g)
        c.add_member(g, c.create_entity("asset", "late", t))  # added after the assignment
    with cloud_node.cloud() as c:
        assert {x.name for x in c.effective_entities(c.find_edge("e"))} == {"G", "late"}


def test_pe_rule_creates_the_edge_all_group_once(pe_cloud_node, edge_node, seed_edge):
    from winstar_core.transport.pb import sync_pb2 as pb

    with pe_cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        c.create_edge("North", t)
        c.create_user(
            "w@acme.io",
            t,
            "CUSTOMER_USER",
            c.create_customer("C", t),
            [c.create_role("w", t, ["DEVICE:WRITE"])],
        )
    seed_edge(pe_cloud_node, edge_node, "North")
    for name in ("a", "b"):
        with edge_node.edge() as e:
            e.create_entity("device", name, None, user_email="w@acme.io")
    with edge_node.edge() as e:
        rows = list(reversed(e.uplinks()))
        events = [
            pb.Event(seq=r.seq, type=r.type, action=r.action, entity_id=str(r.entity_id), body=r.body)
            for r in rows
        ]
    for ev in events:
        with pe_cloud_node.cloud() as c:
            c.apply_uplink(c.find_edge("North"), ev)
    with pe_cloud_node.cloud() as c:
        groups = c.entities.list_entities("entity_group")
        assert [(g.name, g.data["entity_type"]) for g in groups] == [("[Edge] North All", "device")]
        assert [m.name for m in c.members(groups[0])] == ["a", "b"]
        assert "[Edge] North All" in {x.name for x in c.effective_entities(c.find_edge("North"))}
