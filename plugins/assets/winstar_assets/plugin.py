"""The ``asset`` entity type (buildings, machines, ...): assigned to edges from the cloud."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields

from winstar_core import EntityType, EntityTypeRegister, hookimpl


class AssetSchema(Schema):
    class Meta:
        unknown = RAISE

    label = fields.String(load_default=None, allow_none=True)
    asset_profile = fields.String(load_default="default")
    additional_info = fields.Dict(load_default=dict)


class AssetType(EntityType):
    name = "asset"
    schema = AssetSchema
    schema_version = 1


@hookimpl
def winstar_register_entity_types(register: EntityTypeRegister) -> None:
    register.add(AssetType)
