"""The migration runner on SQLite and PostgreSQL."""

import sqlalchemy as sa
from alembic.operations import Operations

from posttrain.db import Migration, applied_migrations, apply_migrations, create_db_engine


def _create_widgets(op: Operations) -> None:
    op.create_table("widgets", sa.Column("id", sa.Integer, primary_key=True))


def _add_name(op: Operations) -> None:
    with op.batch_alter_table("widgets") as batch:
        batch.add_column(sa.Column("name", sa.String(50), nullable=True))


def test_applies_in_order_once_and_records(db_url):
    engine = create_db_engine(db_url)
    migrations = [Migration("0002_name", _add_name), Migration("0001_widgets", _create_widgets)]
    assert apply_migrations(engine, "widgets", migrations) == ["0001_widgets", "0002_name"]
    assert apply_migrations(engine, "widgets", migrations) == []
    assert applied_migrations(engine, "widgets") == ["0001_widgets", "0002_name"]
    cols = {c["name"] for c in sa.inspect(engine).get_columns("widgets")}
    assert cols == {"id", "name"}
    engine.dispose()


def test_failed_migration_is_not_recorded(db_url):
    engine = create_db_engine(db_url)

    def broken(op: Operations) -> None:
        op.create_table("half", sa.Column("id", sa.Integer, primary_key=True))
        raise RuntimeError("boom")

    try:
        apply_migrations(engine, "broken", [Migration("0001_broken", broken)])
    except RuntimeError:
        pass
    assert applied_migrations(engine, "broken") == []
    engine.dispose()


def test_duplicate_ids_are_refused(db_url):
    engine = create_db_engine(db_url)
    try:
        apply_migrations(
            engine, "dup", [Migration("0001", _create_widgets), Migration("0001", _add_name)]
        )
    except ValueError as exc:
        assert "duplicate migration ids" in str(exc)
    else:
        raise AssertionError("duplicate ids accepted")
    engine.dispose()
