"""Small synchronous helpers around aiokafka's admin client: health checks and topic creation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from services.infra.errors import InfraError

log = logging.getLogger(__name__)


async def _metadata(bootstrap: str, timeout_s: float) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=max(1000, int(timeout_s * 1000)))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        return list(await asyncio.wait_for(admin.list_topics(), timeout_s))
    finally:
        await admin.close()


def _run(coro: object) -> object:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]


def wait_for_kafka(bootstrap: str, timeout_s: float) -> None:
    """Return once the broker answers a metadata request; InfraError naming the address otherwise."""
    try:
        _run(_metadata(bootstrap, timeout_s))
    except Exception as exc:
        raise InfraError(f"kafka: no metadata answer from {bootstrap} within {timeout_s:.0f}s ({exc!r})") from exc


MAX_REPLICATION = 3
"""Replicas per topic on a cluster of three brokers or more (with min.insync.replicas 2 on the brokers)."""


def default_replication(brokers: int) -> int:
    """Replicas for a topic we create: every broker up to three (1 on the embedded broker, 3 on a cluster)."""
    return max(1, min(brokers, MAX_REPLICATION))


async def ensure_topics_async(bootstrap: str, names: Iterable[str], partitions: int,
                              replication: int | None = None) -> None:
    """Create the topics that do not exist yet; ``replication`` None = ``default_replication`` of the cluster."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [n for n in dict.fromkeys(names) if n not in existing]
        if not wanted:
            return
        if replication is None:
            replication = default_replication(len((await admin.describe_cluster())["brokers"]))
        try:
            resp = await admin.create_topics(
                [NewTopic(n, num_partitions=partitions, replication_factor=replication) for n in wanted]
            )
        except TopicAlreadyExistsError:
            return
        for topic_error in getattr(resp, "topic_errors", []) or []:
            name, code = topic_error[0], topic_error[1]
            if code not in (0, 36):  # 36 = TOPIC_ALREADY_EXISTS
                raise InfraError(f"kafka: could not create topic {name}: error code {code}")
    finally:
        await admin.close()


def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int, replication: int | None = None) -> None:
    _run(ensure_topics_async(bootstrap, list(names), partitions, replication))


async def delete_topics_async(bootstrap: str, names: Iterable[str]) -> None:
    """Delete the topics (a test's or a bench's own; the embedded Tansu keeps every record in memory)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(list(dict.fromkeys(names)))
    finally:
        await admin.close()
