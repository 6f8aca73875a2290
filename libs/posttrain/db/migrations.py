"""A small schema migration runner over Alembic's operations API.

Each owner (a library package or a service) registers an ordered list of Migration
objects under its component name; `apply_migrations` runs the ones not yet recorded in
`posttrain_schema_migrations`, each in its own transaction. Migrations use alembic's
`Operations` (create_table, add_column, batch_alter_table for SQLite...), so they are
plain Python with no env.py or script folder to keep in sync.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Column, DateTime, Engine, MetaData, String, Table, select

from posttrain.db.engine import utcnow

_meta = MetaData()
schema_migrations = Table(
    "posttrain_schema_migrations",
    _meta,
    Column("component", String(100), primary_key=True),
    Column("migration_id", String(200), primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Migration:
    id: str  # sortable, e.g. "0001_outbox"; never renamed once released
    upgrade: Callable[[Operations], None]


def applied_migrations(engine: Engine, component: str) -> list[str]:
    _meta.create_all(engine, tables=[schema_migrations])
    with engine.connect() as conn:
        rows = conn.execute(
            select(schema_migrations.c.migration_id).where(
                schema_migrations.c.component == component
            )
        )
        return sorted(r[0] for r in rows)


def apply_migrations(engine: Engine, component: str, migrations: Sequence[Migration]) -> list[str]:
    """Apply pending migrations of `component` in id order; returns the ids applied now.

    Safe to call from several processes at start-up: a migration that another process
    recorded first is skipped (its insert collides on the primary key and rolls back).
    """
    ids = [m.id for m in migrations]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate migration ids in component {component!r}: {ids}")
    done = set(applied_migrations(engine, component))
    applied: list[str] = []
    for migration in sorted(migrations, key=lambda m: m.id):
        if migration.id in done:
            continue
        with engine.begin() as conn:
            # Record first: on PostgreSQL a concurrent runner blocks here on the same key.
            conn.execute(
                schema_migrations.insert().values(
                    component=component, migration_id=migration.id, applied_at=utcnow()
                )
            )
            migration.upgrade(Operations(MigrationContext.configure(conn)))
        applied.append(migration.id)
    return applied
