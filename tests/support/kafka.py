"""Reading Kafka topics in tests: partitions, end offsets, every message up to the current end, headers."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


async def topic_partitions(bootstrap: str, topic: str) -> int:
    """How many partitions the topic has; 0 if it does not exist (asking never creates it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            return 0
        for described in await admin.describe_topics([topic]):
            if described.get("topic") == topic:
                return len(described.get("partitions") or ())
        return 0
    finally:
        await admin.close()


async def topic_exists(bootstrap: str, topic: str) -> bool:
    return await topic_partitions(bootstrap, topic) > 0


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every message of the topic up to its current end ([] if it does not exist)."""
    count = await topic_partitions(bootstrap, topic)
    if not count:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, n) for n in range(count)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        return sorted(await consume_to_end(consumer, parts), key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


async def consume_to_end(consumer: AIOKafkaConsumer, parts: list[TopicPartition]) -> list[Any]:
    """The records of ``parts`` from the consumer's positions up to the ends they have now."""
    end = await consumer.end_offsets(parts)
    out: list[Any] = []
    while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
        batch = await consumer.getmany(timeout_ms=500)
        for records in batch.values():
            out.extend(records)
    return out


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The next offset of each partition of ``topic`` ({} if it does not exist)."""
    count = await topic_partitions(bootstrap, topic)
    if not count:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, n) for n in range(count)])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


def header(record: Any, name: str) -> str:
    return dict(record.headers)[name].decode()  # type: ignore[no-any-return]
