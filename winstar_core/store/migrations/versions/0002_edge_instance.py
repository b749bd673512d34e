"""edge instance: the edge database (box) the cloud serves for an edge

A copied edge database connects with the same credentials as the original; these columns let the
cloud serve one of them and refuse the other clearly (see ``winstar_core/services/instances.py``).
An edge finds the pending uplinks of an entity by an index (a downlink that removes an entity with
unsent changes is refused, and a Sync Edge keeps it).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 15:16:49.976899
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("edge", schema=None) as batch_op:
        batch_op.add_column(sa.Column("instance_id", sa.String(length=36), nullable=True))
        # a server default, so that the edges already there get False (no reset asked)
        batch_op.add_column(
            sa.Column("instance_reset", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("instance_since", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("conflict", sa.Text(), nullable=True))
    op.create_index(
        "ix_cloud_event_pending_entity",
        "cloud_event",
        ["entity_id"],
        postgresql_where=sa.text("status = 'PENDING'"),
        sqlite_where=sa.text("status = 'PENDING'"),
    )


def downgrade() -> None:
    op.drop_index("ix_cloud_event_pending_entity", table_name="cloud_event")
    with op.batch_alter_table("edge", schema=None) as batch_op:
        batch_op.drop_column("conflict")
        batch_op.drop_column("instance_since")
        batch_op.drop_column("instance_reset")
        batch_op.drop_column("instance_id")
