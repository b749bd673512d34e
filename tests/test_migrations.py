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


def test_upgrading_keeps_every_row_of_the_tables_it_rebuilds(db_url):
    """0004 rebuilds `entity` and 0005 `edge` on SQLite (copy, drop, rename): the rows pointing at
    them (memberships, assignments, the outbox) must all be there afterwards."""
    import uuid

    import sqlalchemy as sa

    engine = make_engine(db_url)
    migrate.upgrade(engine, "0003")
    t, e, g, d = (str(uuid.uuid4()) for _ in range(4))
    with engine.begin() as conn:
        run = conn.execute
        run(sa.text("INSERT INTO tenant (id, name, created_time) VALUES (:t, 'Acme', 1)"), {"t": t})
        run(
            sa.text(
                "INSERT INTO edge (id, tenant_id, name, routing_key, secret_salt, secret_hash, connected,"
                " sync_requested, created_time) VALUES (:e, :t, 'e', 'rk', :b, :b, false, false, 1)"
            ),
            {"e": e, "t": t, "b": b"x"},
        )
        for entity, type_ in ((g, "entity_group"), (d, "device")):
            run(
                sa.text(
                    "INSERT INTO entity (id, tenant_id, type, name, data, version, created_time, updated_time)"
                    " VALUES (:i, :t, :ty, :ty, '{}', 1, 1, 1)"
                ),
                {"i": entity, "t": t, "ty": type_},
            )
        run(sa.text("INSERT INTO entity_member VALUES (:g, :d, 1)"), {"g": g, "d": d})
        run(sa.text("INSERT INTO assignment VALUES (:e, :g, 1)"), {"e": e, "g": g})
        run(
            sa.text(
                "INSERT INTO edge_event (id, edge_id, seq, created_time, tenant_id, type, action, body, status)"
                " VALUES (:i, :e, 1, 1, :t, 'device', 'ADDED', :b, 'PENDING')"
            ),
            {"i": str(uuid.uuid4()), "e": e, "t": t, "b": b""},
        )
    migrate.upgrade(engine)
    with engine.connect() as conn:
        counts = {
            table: conn.scalar(sa.text(f"SELECT count(*) FROM {table}"))
            for table in ("tenant", "edge", "entity", "entity_member", "assignment", "edge_event")
        }
    engine.dispose()
    assert counts == dict.fromkeys(counts, 1) | {"entity": 2}
