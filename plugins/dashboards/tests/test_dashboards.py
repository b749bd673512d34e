import pytest

from winstar_core.errors import InvalidData
from winstar_core.testing import assert_loaded_through_entry_point


def test_loaded_through_its_entry_point(platform):
    assert_loaded_through_entry_point(platform, "dashboards", "winstar-dashboards", ["dashboard"])


def test_dashboard_is_a_configuration_document(platform):
    dash = platform.types.get("dashboard")
    assert not dash.creatable_on_edge
    conf = {"widgets": [{"type": "chart", "keys": ["temperature"]}], "layout": {"cols": 24}}
    data = dash.validate({"title": "Plant", "configuration": conf})
    assert dash.deserialize(dash.serialize(data))["configuration"] == conf
    with pytest.raises(InvalidData, match="configuration"):
        dash.validate({"configuration": "not a document"})


def test_dashboards_reach_an_edge_after_what_they_show(platform):
    assert platform.types.rank("dashboard") > platform.types.rank("device")
    assert platform.types.rank("dashboard") > platform.types.rank("asset")


def test_a_dashboard_reaches_the_edge_whole(kit, cloud_node):
    kit.tenant(cloud_node, "Acme")
    edge = kit.edge(cloud_node, "e")
    conf = {"widgets": [{"type": "chart", "keys": ["temperature"]}], "layout": {"cols": 24}}
    dash = kit.create(cloud_node, "dashboard", "Plant", {"title": "Plant", "configuration": conf})
    kit.assign(cloud_node, edge, "dashboard", dash)
    box = kit.edge_node(cloud_node, edge)

    assert kit.deliver_downlinks(cloud_node, box).ok
    assert kit.show(box, "dashboard", "Plant").data == {"title": "Plant", "configuration": conf}

    # a change in the cloud follows; the edge may read it but not change it
    kit.update(cloud_node, "dashboard", dash, {"title": "Plant 7"})
    assert kit.deliver_downlinks(cloud_node, box).ok
    assert kit.show(box, "dashboard", "Plant").data["title"] == "Plant 7"
    refused = kit.cli(box, "entity", "update", "dashboard", "Plant", "--data", '{"title": "x"}', ok=False)
    assert "managed by the cloud" in refused.stderr
