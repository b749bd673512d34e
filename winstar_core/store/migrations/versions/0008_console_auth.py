"""console: users' passwords, API tokens, one-time sign-in links, the sign-in throttle

The console (winstar_core/console) signs users in with a password (``app_user.password``: the
scrypt hash, salt and parameters in one text, never the password; ``session_generation``: a session
cookie is good while it names the current one, Sign out moves it on), scripts with API tokens
(``api_token``: a SHA-256 of a 256-bit random token, revocable), a newcomer with a one-time link
(``sign_in_link``, as `winstar demo --console` prints). ``sign_in_throttle`` counts the recent
failed sign-ins of an email (the key is a hash of it), shared by every console process.
``ix_edge_event_failed`` finds each edge's FAILED downlinks (the edges list counts them).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # the console's edges list counts each edge's FAILED downlinks: few rows, a small index
    where = sa.text("status = 'FAILED'")
    op.create_index(
        "ix_edge_event_failed", "edge_event", ["edge_id"], postgresql_where=where, sqlite_where=where
    )
    with op.batch_alter_table("app_user") as batch:
        batch.add_column(sa.Column("password", sa.String(255), nullable=True))
        batch.add_column(sa.Column("session_generation", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "api_token",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("created_time", sa.BigInteger(), nullable=False),
        sa.Column("last_used", sa.BigInteger(), nullable=True),
        sa.Column("revoked_time", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["app_user.id"], name="fk_api_token_user_id_app_user", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_api_token"),
        sa.UniqueConstraint("token_hash", name="uq_api_token_token_hash"),
    )
    op.create_index("ix_api_token_user_id", "api_token", ["user_id"])
    op.create_table(
        "sign_in_link",
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("expires_time", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["app_user.id"], name="fk_sign_in_link_user_id_app_user", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_hash", name="pk_sign_in_link"),
    )
    op.create_table(
        "sign_in_throttle",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_sign_in_throttle"),
    )


def downgrade() -> None:
    op.drop_index("ix_edge_event_failed", table_name="edge_event")
    op.drop_table("sign_in_throttle")
    op.drop_table("sign_in_link")
    op.drop_index("ix_api_token_user_id", table_name="api_token")
    op.drop_table("api_token")
    with op.batch_alter_table("app_user") as batch:
        batch.drop_column("session_generation")
        batch.drop_column("password")
