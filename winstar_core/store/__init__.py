"""Storage: SQLAlchemy 2 models, the engine factory, Alembic migrations, the outboxes."""
