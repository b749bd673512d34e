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


def test_asset_assigned_to_edge_is_queued(cloud_node):
    with cloud_node.cloud() as c:
        t = c.create_tenant("Acme")
        edge, _ = c.create_edge("e", t)
        c.assign(edge, c.create_entity("asset", "Building", t, {"label": "B"}))
    with cloud_node.cloud() as c:
        downs = c.downlinks(c.find_edge("e"))
        assert [(d.type, d.action, d.status) for d in downs] == [("asset", "ADDED", "PENDING")]
