"""Start a worker: `python -m streams worker -l info`.

Refuses to start while any topic of topics.yaml is missing (run `python -m streams.provision`).
"""

from __future__ import annotations

import sys

from confluent_kafka.admin import AdminClient

from streams.kafka_clients import admin_config
from streams.provision import existing_partitions
from streams.settings import get_settings


def missing_topics() -> list[str]:
    from streams.catalog import TopicCatalog

    settings = get_settings()
    existing = existing_partitions(AdminClient(admin_config(settings)))
    return [
        spec.physical_name
        for spec in TopicCatalog.load(settings)
        if spec.physical_name not in existing
    ]


def main() -> None:
    missing = missing_topics()
    if missing:
        sys.exit(
            "refusing to start: these topics are missing: "
            + ", ".join(missing)
            + "\ncreate them with: python -m streams.provision"
        )
    settings = get_settings()
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr="127.0.0.1")

    from streams import deliver, enrich, render, request, route, status  # noqa: F401  (agents)
    from streams.app import app

    app.main()


if __name__ == "__main__":
    main()
