"""The template's tests: only the test kit (``winstar_core.testing``) and the public API."""

import pytest
from marshmallow import RAISE, Schema, fields

from winstar_core import EntityType, hookimpl
from winstar_core.errors import InvalidData
from winstar_core.testing import assert_loaded_through_entry_point

RULE = {"key": "temperature", "condition": {"op": ">", "value": 30}, "severity": "MAJOR"}
STORED = {**RULE, "condition": {"op": ">", "value": 30.0}, "enabled": True}


def test_loaded_through_its_entry_point(platform):
    assert_loaded_through_entry_point(platform, "alarms", "winstar-plugin-template", ["alarm_rule"])


def test_alarm_rule_type(platform):
    rule = platform.types.get("alarm_rule")
    assert rule.creatable_on_edge and rule.resource() == "ALARM_RULE" and rule.schema_version == 2
    data = rule.validate(RULE)
    assert data == STORED
    assert rule.deserialize(rule.serialize(data)) == data
    with pytest.raises(InvalidData, match="op"):
        rule.validate({**RULE, "condition": {"op": "~", "value": 1}})
    with pytest.raises(InvalidData, match="threshold"):  # version 1's field is no longer accepted
        rule.validate({**RULE, "threshold": 30})


# -- schema versions ------------------------------------------------------------------------------


def test_a_version_1_rule_from_an_older_edge_is_upgraded(kit, cloud_node):
    kit.tenant(cloud_node, "Acme")
    edge = kit.edge(cloud_node, "North")
    events = kit.events(edge)  # what an edge with the previous release of the plugin sends
    old = events.added("alarm_rule", "hot", {"key": "temperature", "threshold": 30}, schema_version=1)
    no_threshold = events.added("alarm_rule", "cold", {"key": "temperature"}, schema_version=1)
    future = events.added("alarm_rule", "new", RULE, schema_version=3)

    delivery = kit.apply_uplinks(cloud_node, edge, [old, no_threshold, future])

    assert [v.ok for v in delivery.verdicts] == [True, False, False]
    assert "condition" in delivery.errors[0]  # upgraded, then refused by the schema
    assert "schema version 3" in delivery.errors[1]  # newer than this plugin: never guessed at
    assert kit.show(cloud_node, "alarm_rule", "hot").data == STORED


class OldAlarmRuleSchema(Schema):
    class Meta:
        unknown = RAISE

    key = fields.String(required=True)
    threshold = fields.Float(required=True)
    severity = fields.String(load_default="MAJOR")


class OldAlarmRuleType(EntityType):
    """The previous release of the plugin: schema version 1."""

    name = "alarm_rule"
    schema = OldAlarmRuleSchema
    schema_version = 1
    creatable_on_edge = True
    permission_resource = "ALARM_RULE"


class OldRelease:
    @staticmethod
    @hookimpl
    def winstar_register_entity_types(register):
        register.add(OldAlarmRuleType)


def test_an_edge_ahead_holds_its_rules_until_the_cloud_upgrades(kit, make_platform, platform, monkeypatch):
    monkeypatch.setenv("WINSTAR_DISABLE_PLUGINS", "alarms")  # this release out, the old one in
    cloud = kit.cloud("ce", platform=make_platform(OldRelease))
    monkeypatch.delenv("WINSTAR_DISABLE_PLUGINS")
    kit.tenant(cloud, "Acme")
    admin = kit.user(cloud, "a@acme.io")
    edge = kit.edge(cloud, "North")
    box = kit.edge_node(cloud, edge, platform=platform)  # the edge runs this release
    kit.create(box, "alarm_rule", "hot", RULE, user=admin)

    delivery = kit.deliver_uplinks(box, cloud)
    assert delivery.verdicts == []  # nothing sent the cloud could not read...
    assert [(h.type, h.action) for h in delivery.held] == [("alarm_rule", "ADDED")]
    assert "the cloud knows version 1" in delivery.held[0].reason
    assert [u.status for u in kit.uplinks(box)] == ["held"]  # ...and the edge shows why

    upgraded = kit.cloud("ce", platform=platform, url=cloud.url)  # same database, new plugin
    delivery = kit.deliver_uplinks(box, upgraded)
    assert delivery.released == 1 and delivery.ok and len(delivery.verdicts) == 1
    assert kit.show(upgraded, "alarm_rule", "hot").data == STORED


# -- where an edge's new rule goes ------------------------------------------------------------------


def test_ce_rules_go_to_their_edge(kit, cloud_node):
    kit.tenant(cloud_node, "Acme")
    admin = kit.user(cloud_node, "a@acme.io")
    edge = kit.edge(cloud_node, "North")
    box = kit.edge_node(cloud_node, edge)
    kit.create(box, "alarm_rule", "hot", RULE, user=admin)

    assert kit.deliver_uplinks(box, cloud_node).ok
    assert [(x.type, x.name) for x in kit.edge_entities(cloud_node, edge)] == [("alarm_rule", "hot")]


def test_pe_rules_join_the_edges_alarm_rules_group(kit, platform, db_url):
    if "entity_group" not in platform.types:
        pytest.skip("needs the groups plugin (winstar-groups) for its entity_group type")
    cloud = kit.cloud("pe", url=db_url)
    kit.tenant(cloud, "Acme")
    writer = kit.user(cloud, "w@acme.io", permissions=["ALARM_RULE:WRITE"])
    edge = kit.edge(cloud, "North")
    box = kit.edge_node(cloud, edge)
    kit.create(box, "alarm_rule", "hot", RULE, user=writer)
    kit.create(box, "alarm_rule", "cold", {**RULE, "condition": {"op": "<", "value": 5}}, user=writer)

    assert kit.deliver_uplinks(box, cloud).ok
    (group,) = kit.entities(cloud, "entity_group")  # ours, not the groups plugin's "[Edge] North All"
    assert (group.name, group.data["entity_type"]) == ("[Edge] North Alarm rules", "alarm_rule")
    assert sorted(m["name"] for m in kit.json(cloud, "group", "members", str(group.id))) == ["cold", "hot"]
    assert ("entity_group", group.name) in {(x.type, x.name) for x in kit.edge_entities(cloud, edge)}

    assert kit.deliver_downlinks(cloud, box).ok  # the edge receives the group and its members
    assert sorted(m["name"] for m in kit.json(box, "group", "members", str(group.id))) == ["cold", "hot"]


# -- winstar alarms check --------------------------------------------------------------------------


def test_alarms_check(kit, cloud_node):
    kit.tenant(cloud_node, "Acme")
    hot = kit.create(cloud_node, "alarm_rule", "hot", RULE)
    freezing = {"key": "temperature", "condition": {"op": "<", "value": 0}, "severity": "CRITICAL"}
    kit.create(cloud_node, "alarm_rule", "freezing", freezing)
    kit.create(cloud_node, "alarm_rule", "off", {**RULE, "enabled": False})

    assert kit.json(cloud_node, "alarms", "check", "temperature", "35") == [
        {"name": "hot", "severity": "MAJOR"}
    ]
    below = kit.cli(cloud_node, "alarms", "check", "--json", "--", "temperature", "-5")
    assert below.json == [{"name": "freezing", "severity": "CRITICAL"}]
    assert kit.json(cloud_node, "alarms", "check", "humidity", "99") == []
    assert "hot" in kit.cli(cloud_node, "alarms", "check", "temperature", "35").stdout  # a table
    assert kit.cli(cloud_node, "alarms", "check", "temperature", "warm", ok=False).exit_code == 2

    # on an edge, the rules assigned to it
    edge = kit.edge(cloud_node, "North")
    kit.assign(cloud_node, edge, "alarm_rule", hot)
    box = kit.edge_node(cloud_node, edge)
    assert kit.deliver_downlinks(cloud_node, box).ok
    assert kit.json(box, "alarms", "check", "temperature", "35") == [{"name": "hot", "severity": "MAJOR"}]
