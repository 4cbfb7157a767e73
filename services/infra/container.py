"""What a container deployment (``deploy/compose.yaml``) needs besides ``rxtrail run <service>``.

``python -m services.infra.container prepare`` creates the shared tables once, before the services start (the
same step ``rxtrail up`` runs: concurrent CREATE TABLE IF NOT EXISTS from several processes can collide in
PostgreSQL's catalog); the services then run with ``CREATE_TABLE=false``.

``python -m services.infra.container health [--api]`` is a container health check: exit 0 when PostgreSQL answers a
query and Kafka a metadata request within ``--timeout`` seconds (and, with ``--api``, ``GET /health`` on
``api_port`` answers 200); exit 1 naming what did not answer. A stage whose own loop fails exits and is restarted
by the engine's restart policy; the health check says whether the parts it needs answer.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request

from services.infra.settings import Settings


def prepare() -> int:
    from services.infra.stack import prepare_database

    prepare_database(Settings())
    print("rxtrail: database prepared", flush=True)
    return 0


def health(*, api: bool, timeout_s: float) -> int:
    import psycopg

    from services.infra.kafka_admin import wait_for_kafka

    settings = Settings()
    problems: list[str] = []
    try:
        with psycopg.connect(settings.resolved_database_url(), connect_timeout=max(1, int(timeout_s))) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        problems.append(f"postgres: {type(exc).__name__}")
    try:
        wait_for_kafka(settings.resolved_kafka_bootstrap(), timeout_s)
    except Exception as exc:
        problems.append(f"kafka: {exc}")
    if api:
        host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::") else settings.api_host
        try:
            with urllib.request.urlopen(f"http://{host}:{settings.api_port}/health", timeout=timeout_s) as r:
                if r.status != 200:
                    problems.append(f"api: /health {r.status}")
        except OSError as exc:
            problems.append(f"api: {exc}")
    if problems:
        print("unhealthy: " + "; ".join(problems), file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.infra.container", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="create the shared tables once (an init job)")
    h = sub.add_parser("health", help="exit 0 when PostgreSQL and Kafka (and with --api the API) answer")
    h.add_argument("--api", action="store_true")
    h.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args(argv)
    if args.command == "prepare":
        return prepare()
    return health(api=args.api, timeout_s=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
