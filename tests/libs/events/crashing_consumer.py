"""A consumer process whose handler dies (os._exit) after writing its effect but before
the transaction commits: what a kill -9 at the worst moment looks like."""

import os
import sys

import sqlalchemy as sa

from posttrain.db import create_db_engine
from posttrain.events import EventConsumer, EventProducer

sys.path.insert(0, os.path.dirname(__file__))
from conftest import effects, kafka_settings_for  # noqa: E402


def main() -> None:
    bootstrap, topic, group, db_url = sys.argv[1:5]
    kafka = kafka_settings_for(bootstrap)
    engine = create_db_engine(db_url)

    def handler(event, ctx):
        ctx.session.execute(sa.insert(effects).values(event_key=event.dedupe_key(), note="crash"))
        ctx.session.flush()
        os._exit(17)

    consumer = EventConsumer(
        kafka,
        group_id=group,
        handlers={topic: handler},
        engine=engine,
        producer=EventProducer(kafka, producer_name="crasher"),
    )
    while True:
        consumer.poll_once()


if __name__ == "__main__":
    main()
