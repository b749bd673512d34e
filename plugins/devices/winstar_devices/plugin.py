"""The ``device`` entity type: a type an edge may create locally.

The CE rule of the brief (a device created on an edge is assigned to that edge) is the core's
default rule for every type, so this plugin needs none.
"""

from __future__ import annotations

import secrets
from typing import Any

from marshmallow import RAISE, Schema, fields, post_load, validate

from winstar_core import EntityType, EntityTypeRegister, hookimpl

CREDENTIAL_TYPES = ("ACCESS_TOKEN", "X509_CERTIFICATE", "MQTT_BASIC")


class CredentialsSchema(Schema):
    class Meta:
        unknown = RAISE

    type = fields.String(load_default="ACCESS_TOKEN", validate=validate.OneOf(CREDENTIAL_TYPES))
    access_token = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64))
    certificate = fields.String(load_default=None, allow_none=True)
    username = fields.String(load_default=None, allow_none=True)
    password = fields.String(load_default=None, allow_none=True)

    @post_load
    def generate_token(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if data["type"] == "ACCESS_TOKEN" and not data.get("access_token"):
            data["access_token"] = secrets.token_urlsafe(15)
        return data


#: one instance for every device: building a schema costs more than loading with it (an import
#: of 20,000 devices spent half its check here)
_CREDENTIALS = CredentialsSchema()


class DeviceSchema(Schema):
    class Meta:
        unknown = RAISE

    label = fields.String(load_default=None, allow_none=True)
    device_profile = fields.String(load_default="default")
    credentials = fields.Nested(CredentialsSchema, load_default=lambda: {"type": "ACCESS_TOKEN"})
    additional_info = fields.Dict(load_default=dict)

    @post_load
    def fill_credentials(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        creds = data["credentials"]
        if (
            isinstance(creds, dict)
            and creds.get("type", "ACCESS_TOKEN") == "ACCESS_TOKEN"
            and not creds.get("access_token")
        ):
            data["credentials"] = _CREDENTIALS.load(dict(creds))
        return data


class DeviceType(EntityType):
    name = "device"
    schema = DeviceSchema
    schema_version = 1
    creatable_on_edge = True
    permission_resource = "DEVICE"


@hookimpl
def winstar_register_entity_types(register: EntityTypeRegister) -> None:
    register.add(DeviceType)
