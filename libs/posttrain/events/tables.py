"""The event bus's own tables: processed event ids (idempotent consumers) and the outbox.

They live in each service's database, next to the service's own tables, so that a
handler's effect, its processed marker and the events it emits commit together.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic.operations import Operations
from sqlalchemy.orm import Mapped, mapped_column

from posttrain.db import Base, Migration


class ProcessedEvent(Base):
    __tablename__ = "processed_events"

    consumer_group: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    event_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    topic: Mapped[str] = mapped_column(sa.String(249))
    partition: Mapped[int] = mapped_column(sa.Integer)
    offset: Mapped[int] = mapped_column(sa.BigInteger)
    outcome: Mapped[str] = mapped_column(sa.String(20))  # handled | dead_lettered
    processed_at: Mapped[sa.DateTime] = mapped_column(sa.DateTime(timezone=True))


class OutboxEvent(Base):
    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(sa.String(200), unique=True)
    topic: Mapped[str] = mapped_column(sa.String(249))
    key: Mapped[bytes] = mapped_column(sa.LargeBinary)
    value: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[sa.DateTime] = mapped_column(sa.DateTime(timezone=True))
    published_at: Mapped[sa.DateTime | None] = mapped_column(
        sa.DateTime(timezone=True), nullable=True, index=True
    )


def _m0001(op: Operations) -> None:
    op.create_table(
        "processed_events",
        sa.Column("consumer_group", sa.String(200), primary_key=True),
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "outbox_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("event_id", sa.String(200), nullable=False, unique=True),
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("key", sa.LargeBinary, nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_outbox_events_published_at", "outbox_events", ["published_at"])


EVENTS_MIGRATIONS = [Migration("0001_processed_events_and_outbox", _m0001)]
