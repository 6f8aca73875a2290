"""Metadata database: SQLAlchemy 2 engine/session helpers and schema migrations.

PostgreSQL in production, SQLite as the embedded default; every query here and in the
services must work on both. This package owns connection handling and the migration
runner, never a service's tables (those live with their owner, registered as migrations).
"""

from posttrain.db.engine import Base, create_db_engine, session_scope, utcnow
from posttrain.db.migrations import Migration, applied_migrations, apply_migrations

__all__ = [
    "Base",
    "Migration",
    "applied_migrations",
    "apply_migrations",
    "create_db_engine",
    "session_scope",
    "utcnow",
]
