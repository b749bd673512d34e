"""name scopes and held events

Entity names are unique per tenant, type and *scope* (``EntityType.name_scope``): an entity group
per member type may be called ``[Edge] Plant 7 All``. Rows already stored get the empty scope.
Uplinks held by an edge (the cloud lacks their type or schema version) are found per entity by an
index, like the pending ones.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("entity", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name_scope", sa.String(length=64), server_default="", nullable=False))
        batch_op.drop_constraint("uq_entity_tenant_id_type_name", type_="unique")
        batch_op.create_unique_constraint(
            "uq_entity_tenant_id_type_name_scope_name", ["tenant_id", "type", "name_scope", "name"]
        )
    op.create_index(
        "ix_cloud_event_held_entity",
        "cloud_event",
        ["entity_id"],
        postgresql_where=sa.text("status = 'HELD'"),
        sqlite_where=sa.text("status = 'HELD'"),
    )


def downgrade() -> None:
    op.drop_index("ix_cloud_event_held_entity", table_name="cloud_event")
    with op.batch_alter_table("entity", schema=None) as batch_op:
        batch_op.drop_constraint("uq_entity_tenant_id_type_name_scope_name", type_="unique")
        batch_op.create_unique_constraint("uq_entity_tenant_id_type_name", ["tenant_id", "type", "name"])
        batch_op.drop_column("name_scope")
