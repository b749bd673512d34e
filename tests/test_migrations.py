"""The Alembic migrations and the models describe the same schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from winstar_core.store import migrate
from winstar_core.store.db import make_engine
from winstar_core.store.models import Base


def test_models_and_migrations_agree(db_url):
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"


def test_upgrade_is_repeatable(sqlite_url):
    engine = make_engine(sqlite_url)
    migrate.upgrade(engine)
    migrate.upgrade(engine)
    engine.dispose()
