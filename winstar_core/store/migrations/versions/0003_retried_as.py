"""retried_as: a FAILED event is sent again at most once

`winstar edge retry` / `winstar retry` queued every FAILED event again each time, including those
already retried; the seq of the copy is now recorded and an event with one is not retried again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("edge_event", "cloud_event")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("retried_as", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("retried_as")
