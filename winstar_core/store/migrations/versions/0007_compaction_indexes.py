"""compaction: partial indexes on the pending and the held events of an entity in an edge's stream

When a change to an entity is queued for an edge whose stream still holds older PENDING events of
that entity, the older ones are superseded (store/outbox.py, docs/protocol.md "Compaction"). These
indexes find them, and whether the entity has a HELD event in the stream (then nothing is
superseded), without reading the stream. ``cloud_event`` has both already
(``ix_cloud_event_pending_entity``, ``ix_cloud_event_held_entity``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for status in ("pending", "held"):
        where = sa.text(f"status = '{status.upper()}'")
        op.create_index(
            f"ix_edge_event_{status}_entity",
            "edge_event",
            ["edge_id", "entity_id"],
            postgresql_where=where,
            sqlite_where=where,
        )


def downgrade() -> None:
    for status in ("pending", "held"):
        op.drop_index(f"ix_edge_event_{status}_entity", table_name="edge_event")
