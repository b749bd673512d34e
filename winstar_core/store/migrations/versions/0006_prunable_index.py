"""retention: partial indexes on the events retention may delete

``winstar prune`` and the pruning of `winstar run` delete delivered, superseded and dismissed
events older than the retention, oldest first, a batch at a time. These indexes hold only those
events, ordered by ``delivered_time``, so a batch costs the rows it deletes, not a scan of an outbox
of millions of rows (services/retention.py). The predicate is the prune query's text exactly
(``models.PRUNABLE_WHERE``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: written out, not imported: a migration stays what it was when the models move on
PRUNABLE_WHERE = "status IN ('DELIVERED', 'SUPERSEDED', 'DISMISSED')"


def upgrade() -> None:
    for table in ("edge_event", "cloud_event"):
        op.create_index(
            f"ix_{table}_prunable",
            table,
            ["delivered_time"],
            postgresql_where=sa.text(PRUNABLE_WHERE),
            sqlite_where=sa.text(PRUNABLE_WHERE),
        )


def downgrade() -> None:
    for table in ("edge_event", "cloud_event"):
        op.drop_index(f"ix_{table}_prunable", table_name=table)
