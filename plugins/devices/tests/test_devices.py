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


def test_ce_rule_assigns_an_edge_created_device(kit, cloud_node):
    kit.tenant(cloud_node, "Acme")
    admin = kit.user(cloud_node, "a@acme.io")
    edge = kit.edge(cloud_node, "e")
    box = kit.edge_node(cloud_node, edge)
    dev = kit.create(box, "device", "d", {"label": "pump"}, user=admin)

    delivery = kit.deliver_uplinks(box, cloud_node)

    assert [(v.type, v.action, v.ok) for v in delivery.verdicts] == [("device", "ADDED", True)]
    assert [x.id for x in kit.edge_entities(cloud_node, edge)] == [dev.id]
    assert kit.show(cloud_node, "device", dev).data == dev.data  # the token travelled too
    assert kit.downlinks(cloud_node, edge) == []  # the edge has it already: nothing echoed
    assert [u.status for u in kit.uplinks(box)] == ["delivered"]


def test_a_customer_user_may_not_create_a_device_on_a_ce_edge(kit, cloud_node):
    kit.tenant(cloud_node, "Acme")
    kit.user(cloud_node, "u@acme.io", authority="CUSTOMER_USER", customer=kit.customer(cloud_node, "C"))
    box = kit.edge_node(cloud_node, kit.edge(cloud_node, "e"))

    refused = kit.cli(box, "entity", "create", "device", "d", "--user", "u@acme.io", ok=False)

    assert refused.exit_code == 1 and "tenant administrator" in refused.stderr
    assert kit.uplinks(box) == []


def test_an_edge_cannot_take_a_device_of_another_tenant(kit, cloud_node):
    kit.tenant(cloud_node, "Acme")
    edge = kit.edge(cloud_node, "e", "Acme")
    other = kit.tenant(cloud_node, "Other")
    forged = kit.events(edge)
    forged.tenant_id = other.id  # a hostile edge claims another tenant's device

    delivery = kit.apply_uplinks(cloud_node, edge, [forged.added("device", "stolen", {})])

    assert not delivery.ok and "own tenant" in delivery.errors[0]
    assert kit.entities(cloud_node, "device") == []
