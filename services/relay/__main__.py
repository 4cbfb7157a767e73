"""``python -m services.relay``: run one relay until SIGINT/SIGTERM (the stack supervises it as a child)."""

from __future__ import annotations

import argparse
import logging
import sys

from services.infra.settings import Settings
from services.relay.core import DEFAULT_TOPIC, RelayConfig, run_relay_blocking


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m services.relay", description=__doc__)
    parser.add_argument("--database-url", default=settings.database_url)
    parser.add_argument("--bootstrap", default=settings.kafka_bootstrap)
    parser.add_argument("--topic", default=DEFAULT_TOPIC)
    parser.add_argument("--name", default="relay")
    parser.add_argument("--partitions", type=int, default=settings.partitions)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--check-interval", type=float, default=15.0)
    parser.add_argument("--max-backoff", type=float, default=10.0)
    parser.add_argument("--log", action="append", default=[], help="event table (repeatable); default: all")
    parser.add_argument("--commit-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.database_url or not args.bootstrap:
        parser.error("--database-url and --bootstrap (or RXTRAIL_DATABASE_URL / RXTRAIL_KAFKA_BOOTSTRAP) are needed")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    config = RelayConfig(
        database_url=args.database_url, bootstrap=args.bootstrap, topic=args.topic, name=args.name,
        partitions=args.partitions, batch_size=args.batch_size, poll_interval_s=args.poll_interval,
        check_interval_s=args.check_interval, max_backoff_s=args.max_backoff, logs=tuple(args.log),
        commit_delay_s=args.commit_delay,
    )
    return run_relay_blocking(config)


if __name__ == "__main__":
    sys.exit(main())
