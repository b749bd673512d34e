import pytest

from winstar_core.errors import InvalidData
from winstar_core.testing import assert_loaded_through_entry_point


def test_loaded_through_its_entry_point(platform):
    assert_loaded_through_entry_point(platform, "devices", "winstar-devices", ["device"])


def test_device_type_rules(platform):
    device = platform.types.get("device")
    assert device.creatable_on_edge and device.resource() == "DEVICE"
    data = device.validate({"label": "pump"})
    token = data["credentials"]["access_token"]
    assert data["credentials"]["type"] == "ACCESS_TOKEN" and len(token) >= 16
    assert device.validate({})["credentials"]["access_token"] != token  # generated per device
    given = device.validate({"credentials": {"access_token": "my-token"}})
    assert given["credentials"]["access_token"] == "my-token"
    with pytest.raises(InvalidData, match="credentials"):
        device.validate({"credentials": {"type": "CARRIER_PIGEON"}})
    with pytest.raises(InvalidData, match="color"):
        device.validate({"color": "red"})
    assert device.deserialize(device.serialize(given)) == given


def test_ce_rule_assigns_an_edge_created_device(cloud_node, edge_node, seed_edge):
    from winstar_core.transport.pb import sync_pb2 as pb

    with cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        edge, _ = c.create_edge("e", t)
        c.create_user("a@acme.io", t, "TENANT_ADMIN")
    seed_edge(cloud_node, edge_node, "e")
    with edge_node.edge() as e:
        dev = e.create_entity("device", "d", None, user_email="a@acme.io")
    with edge_node.edge() as e:
        row = e.uplinks()[0]
        ev = pb.Event(
            seq=row.seq, type=row.type, action=row.action, entity_id=str(row.entity_id), body=row.body
        )
    with cloud_node.cloud() as c:
        c.apply_uplink(c.find_edge("e"), ev)
    with cloud_node.cloud() as c:
        assert [x.id for x in c.effective_entities(c.find_edge("e"))] == [dev.id]
