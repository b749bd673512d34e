import pytest

from winstar_core.errors import InvalidData
from winstar_core.testing import assert_loaded_through_entry_point


def test_loaded_through_its_entry_point(platform):
    assert_loaded_through_entry_point(platform, "assets", "winstar-assets", ["asset"])


def test_asset_type(platform):
    asset = platform.types.get("asset")
    assert not asset.creatable_on_edge and not asset.container
    data = asset.validate({"label": "Building 1", "additional_info": {"floor": 3}})
    assert data == {"label": "Building 1", "asset_profile": "default", "additional_info": {"floor": 3}}
    with pytest.raises(InvalidData):
        asset.validate({"label": 12})


def test_asset_assigned_to_edge_is_queued_then_delivered(kit, cloud_node):
    kit.tenant(cloud_node, "Acme")
    edge = kit.edge(cloud_node, "e")
    asset = kit.create(cloud_node, "asset", "Building", {"label": "B"})
    kit.assign(cloud_node, edge, "asset", asset)

    downs = kit.downlinks(cloud_node, edge)
    assert [(d.type, d.action, d.status) for d in downs] == [("asset", "ADDED", "pending")]

    box = kit.edge_node(cloud_node, edge)
    assert kit.deliver_downlinks(cloud_node, box).ok
    assert kit.show(box, "asset", "Building").data == asset.data
    assert [d.status for d in kit.downlinks(cloud_node, edge)] == ["delivered"]


def test_an_edge_may_not_create_an_asset(kit, cloud_node):
    kit.tenant(cloud_node, "Acme")
    kit.user(cloud_node, "a@acme.io")
    edge = kit.edge(cloud_node, "e")
    box = kit.edge_node(cloud_node, edge)

    refused = kit.cli(box, "entity", "create", "asset", "A", "--user", "a@acme.io", ok=False)
    assert "cannot be created on an edge" in refused.stderr

    # nor make the cloud take one: a forged uplink is refused with the reason
    delivery = kit.apply_uplinks(cloud_node, edge, [kit.events(edge).added("asset", "A", {})])
    assert delivery.errors == ["entities of type asset cannot be created or changed on an edge"]
    assert kit.entities(cloud_node, "asset") == []
