"""The ``dashboard`` entity type: a configuration document (widgets, layouts, entity aliases).

Dashboards refer to devices and assets, so they reach an edge after those types.
"""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields

from winstar_core import EntityType, EntityTypeRegister, hookimpl


class DashboardSchema(Schema):
    class Meta:
        unknown = RAISE

    title = fields.String(load_default=None, allow_none=True)
    configuration = fields.Dict(load_default=dict)


class DashboardType(EntityType):
    name = "dashboard"
    schema = DashboardSchema
    schema_version = 1
    depends_on = ("device", "asset")


@hookimpl
def winstar_register_entity_types(register: EntityTypeRegister) -> None:
    register.add(DashboardType)
