"""cloud nodes: several `winstar run` processes on one cloud database

Each node registers a row; an edge's row names the node and session that serve it (the newest
connection wins), so whether an edge is connected is derived from a live node, never from a flag
that a crash leaves behind (see ``winstar_core/services/nodes.py``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 19:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cloud_node",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("started", sa.BigInteger(), nullable=False),
        sa.Column("last_seen", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cloud_node")),
        sa.UniqueConstraint("name", name=op.f("uq_cloud_node_name")),
    )
    with op.batch_alter_table("edge", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("session_id", sa.Uuid(), nullable=True))
        batch_op.create_index(batch_op.f("ix_edge_node_id"), ["node_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_edge_node_id_cloud_node"), "cloud_node", ["node_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("edge", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_edge_node_id_cloud_node"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_edge_node_id"))
        batch_op.drop_column("session_id")
        batch_op.drop_column("node_id")
    op.drop_table("cloud_node")
