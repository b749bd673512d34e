"""The ``alarm_rule`` entity type, where an edge's new alarm rules go, and ``winstar alarms``.

An alarm rule watches one telemetry key: ``{"key": "temperature", "condition": {"op": ">",
"value": 30}, "severity": "MAJOR", "enabled": true}``. Edges may create their own.

Everything the core needs is declared here and registered by the hooks at the bottom; the
distribution's entry point (``pyproject.toml``, group ``winstar``) is how the core finds this
module.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import click
from marshmallow import RAISE, Schema, fields, validate

from winstar_core import EntityType, EntityTypeRegister, hookimpl
from winstar_core.cli.api import current_node, emit, node_options
from winstar_core.errors import NotFound
from winstar_core.plugin.api import EdgeCreation

TYPE_NAME = "alarm_rule"
SEVERITIES = ("CRITICAL", "MAJOR", "MINOR", "WARNING")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
}


# -- the type -----------------------------------------------------------------------------------


class ConditionSchema(Schema):
    class Meta:
        unknown = RAISE  # a typo is an error, not silently kept

    op = fields.String(required=True, validate=validate.OneOf(list(OPERATORS)))
    value = fields.Float(required=True, allow_nan=False)


class AlarmRuleSchema(Schema):
    class Meta:
        unknown = RAISE

    key = fields.String(required=True, validate=validate.Length(min=1, max=255))
    # by class, never by name: another plugin may have a schema called ConditionSchema too
    condition = fields.Nested(ConditionSchema, required=True)
    severity = fields.String(load_default="MAJOR", validate=validate.OneOf(SEVERITIES))
    enabled = fields.Boolean(load_default=True)


class AlarmRuleType(EntityType):
    name = TYPE_NAME  # the wire name: CLI, database, protocol; never change it
    schema = AlarmRuleSchema
    # version 1 was {"key", "threshold", "severity"}: an alarm when the value exceeds threshold.
    # Version 2 says how to compare ("condition") and may be switched off ("enabled").
    schema_version = 2
    creatable_on_edge = True  # edges may create alarm rules of their own
    permission_resource = "ALARM_RULE"  # PE: a role needs ALARM_RULE:WRITE to create one

    @classmethod
    def upgrade(cls, data: dict[str, Any], from_version: int) -> dict[str, Any]:
        """Read a rule of version 1 (a peer with the older plugin sent it) as version 2. What this
        returns is validated by the schema next, so a version-1 rule without a threshold is
        refused with the schema's message."""
        if from_version == 1:
            old = dict(data)
            threshold = old.pop("threshold", None)
            return {**old, "condition": {"op": ">", "value": threshold}}
        return data


def fires(rule: Mapping[str, Any], key: str, value: float) -> bool:
    """Whether the rule (its validated data) raises an alarm for ``key`` = ``value``."""
    condition = rule["condition"]
    return bool(
        rule["enabled"] and rule["key"] == key and OPERATORS[condition["op"]](value, condition["value"])
    )


@hookimpl
def winstar_register_entity_types(register: EntityTypeRegister) -> None:
    register.add(AlarmRuleType)


# -- where an alarm rule created on an edge goes ---------------------------------------------------


def edge_rules_group(edge_name: str) -> str:
    return f"[Edge] {edge_name} Alarm rules"


@hookimpl
def winstar_edge_entity_created(created: EdgeCreation) -> str | None:
    """PE: an alarm rule an edge creates joins the group ``[Edge] EDGE_NAME Alarm rules`` (made
    once per edge), and that group is assigned to the edge, so the cloud's operators see each
    edge's rules together. Anything else (CE, other types, a cloud without the groups plugin):
    None, and the next rule decides; if none does, the core assigns it to the edge."""
    if created.edition != "pe" or created.entity.type != TYPE_NAME:
        return None
    name = edge_rules_group(created.edge.name)
    try:
        group = created.find_entity("entity_group", name, scope=TYPE_NAME)
    except NotFound:  # no entity_group type: the groups plugin is not installed
        return None
    if group is None:
        group = created.create_entity("entity_group", name, {"entity_type": TYPE_NAME})
    created.add_member(group)
    created.assign(group)
    return "alarm rules group"


# -- winstar alarms ... ---------------------------------------------------------------------------


@click.group("alarms")
def alarms_cli() -> None:
    """Alarm rules (from the alarms plugin)."""


@alarms_cli.command("check")
@click.argument("key")
@click.argument("value", type=float)
@node_options
def alarms_check(key: str, value: float, as_json: bool) -> None:
    """The alarm rules of this node (cloud or edge) that fire for KEY = VALUE."""
    node = current_node()
    with node.cloud() if node.role() == "cloud" else node.edge() as svc:
        rules = [(r.name, dict(r.data)) for r in svc.entities.list_entities(TYPE_NAME)]
    fired = [{"name": name, "severity": data["severity"]} for name, data in rules if fires(data, key, value)]
    emit(fired, as_json, ["name", "severity"])


@hookimpl
def winstar_add_commands(cli: click.Group) -> None:
    cli.add_command(alarms_cli)
