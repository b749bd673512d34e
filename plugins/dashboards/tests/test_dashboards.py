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
