import pytest
from marshmallow import RAISE, Schema, fields

from winstar_core import EntityType, hookimpl
from winstar_core.errors import WinstarError
from winstar_core.testing import assert_loaded_through_entry_point

ALL = "[Edge] North All"


def test_loaded_through_its_entry_point(platform):
    assert_loaded_through_entry_point(platform, "groups", "winstar-groups", ["entity_group"])


def test_group_type(platform):
    group = platform.types.get("entity_group")
    assert group.container
    data = group.validate({"entity_type": "device"})
    assert group.accepts_member(data, "device") and not group.accepts_member(data, "asset")
    assert group.name_scope(data) == "device"  # "[Edge] NAME All" exists once per member type
    with pytest.raises(WinstarError, match="entity_type"):
        group.validate({})
    with pytest.raises(WinstarError, match="cannot change"):
        group.merge(data, {"entity_type": "asset"})


def test_group_members_follow_to_the_edge(kit, cloud_node):
    kit.tenant(cloud_node, "Acme")
    edge = kit.edge(cloud_node, "e")
    g = kit.create(cloud_node, "entity_group", "G", {"entity_type": "asset"})
    kit.assign(cloud_node, edge, "entity_group", g)
    kit.create(cloud_node, "asset", "late")
    kit.cli(cloud_node, "group", "add", "G", "asset", "late")  # added after the assignment

    assert {x.name for x in kit.edge_entities(cloud_node, edge)} == {"G", "late"}
    box = kit.edge_node(cloud_node, edge)
    assert kit.deliver_downlinks(cloud_node, box).ok
    assert [m["name"] for m in kit.json(box, "group", "members", "G")] == ["late"]

    kit.cli(cloud_node, "group", "remove", "G", "asset", "late")
    assert kit.deliver_downlinks(cloud_node, box).ok
    assert kit.json(box, "group", "members", "G") == []
    assert kit.entities(box, "asset") == []  # no longer assigned through the group


# -- the PE rule ------------------------------------------------------------------------------------


class ProbeSchema(Schema):
    class Meta:
        unknown = RAISE

    unit = fields.String(load_default="C")


class ProbeType(EntityType):
    """A second type an edge may create, from a plugin of the test's own."""

    name = "probe"
    schema = ProbeSchema
    creatable_on_edge = True


class ProbePlugin:
    @staticmethod
    @hookimpl
    def winstar_register_entity_types(register):
        register.add(ProbeType)


def _pe_world(kit, platform, db_url):
    cloud = kit.cloud("pe", platform=platform, url=db_url)
    kit.tenant(cloud, "Acme")
    writer = kit.user(
        cloud,
        "w@acme.io",
        authority="CUSTOMER_USER",
        customer=kit.customer(cloud, "C"),
        permissions=["DEVICE:WRITE", "PROBE:WRITE"],
    )
    edge = kit.edge(cloud, "North")
    return cloud, edge, kit.edge_node(cloud, edge), writer


def _groups(kit, node):
    """{member type: sorted member names} of each group, and the groups' names."""
    groups = kit.entities(node, "entity_group")
    members = {
        g.data["entity_type"]: sorted(m["name"] for m in kit.json(node, "group", "members", str(g.id)))
        for g in groups
    }
    return members, sorted(g.name for g in groups)


@pytest.mark.parametrize("order", [("device", "probe"), ("probe", "device")])
@pytest.mark.parametrize("batched", [True, False], ids=["one-batch", "one-by-one"])
def test_pe_rule_puts_each_type_in_its_own_edge_all_group(kit, make_platform, db_url, order, batched):
    cloud, edge, box, writer = _pe_world(kit, make_platform(ProbePlugin), db_url)
    first, second = order
    verdicts = []
    for type_name, name in [(first, f"{first}-1"), (second, f"{second}-1"), (first, f"{first}-2")]:
        kit.create(box, type_name, name, user=writer)  # the first type twice: its group is made once
        if not batched:
            verdicts += kit.deliver_uplinks(box, cloud).verdicts
    if batched:
        verdicts = kit.deliver_uplinks(box, cloud).verdicts

    assert len(verdicts) == 3 and all(v.ok for v in verdicts), verdicts
    members, names = _groups(kit, cloud)
    assert members == {first: [f"{first}-1", f"{first}-2"], second: [f"{second}-1"]}
    assert names == [ALL, ALL]
    assigned = {(x.type, x.name) for x in kit.edge_entities(cloud, edge)}
    assert {("entity_group", ALL), (first, f"{first}-1"), (second, f"{second}-1")} <= assigned

    # and the edge receives both groups, with their members
    assert kit.deliver_downlinks(cloud, box).ok
    assert _groups(kit, box) == (members, names)


class DirectProbes:
    """A third party's rule: probes are assigned to their edge directly, no group. A plain
    ``@hookimpl`` runs before the groups plugin's (``trylast``) and, by answering, overrides it."""

    @staticmethod
    @hookimpl
    def winstar_edge_entity_created(created):
        if created.entity.type != "probe":
            return None  # not ours: the next rule decides
        created.assign()
        return "direct"


def test_a_third_party_rule_overrides_the_groups_rule(kit, make_platform, db_url):
    cloud, edge, box, writer = _pe_world(kit, make_platform(ProbePlugin, DirectProbes), db_url)
    kit.create(box, "probe", "p1", user=writer)
    kit.create(box, "device", "d1", user=writer)

    assert kit.deliver_uplinks(box, cloud).ok
    members, _ = _groups(kit, cloud)
    assert members == {"device": ["d1"]}  # devices still follow the groups rule; probes do not
    assigned = {(x.type, x.name) for x in kit.edge_entities(cloud, edge)}
    assert assigned == {("probe", "p1"), ("device", "d1"), ("entity_group", ALL)}


def test_ce_creates_no_group(kit, cloud_node):
    kit.tenant(cloud_node, "Acme")
    admin = kit.user(cloud_node, "a@acme.io")
    edge = kit.edge(cloud_node, "North")
    box = kit.edge_node(cloud_node, edge)
    kit.create(box, "device", "d1", user=admin)

    assert kit.deliver_uplinks(box, cloud_node).ok
    assert kit.entities(cloud_node, "entity_group") == []
    assert [(x.type, x.name) for x in kit.edge_entities(cloud_node, edge)] == [("device", "d1")]
