"""Topic administration through the standard Kafka admin API."""

from __future__ import annotations

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from posttrain.config import KafkaSettings


def ensure_topics(
    settings: KafkaSettings, topics: list[str], *, partitions: int = 2, replication: int = 1
) -> list[str]:
    """Create the topics that don't exist yet; returns the ones created now."""
    admin = KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        security_protocol=settings.security_protocol,
        client_id="posttrain-admin",
    )
    try:
        existing = set(admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        created = []
        for topic in missing:
            try:
                admin.create_topics(
                    [NewTopic(topic, num_partitions=partitions, replication_factor=replication)]
                )
                created.append(topic)
            except TopicAlreadyExistsError:
                pass  # another process won the race
        return created
    finally:
        admin.close()
