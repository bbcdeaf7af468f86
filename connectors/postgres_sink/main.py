"""Command line entry point: run the sink until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from prometheus_client import start_http_server

from connectors.postgres_sink.runner import SinkRunner
from streams.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m connectors.postgres_sink",
        description="Write notifications.status, notifications.inbox and webhooks.delivery-log "
        "to DATABASE_URL.",
    )
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    args = parser.parse_args(argv)
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.metrics_port:
        start_http_server(args.metrics_port)

    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("%s: finishing the batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    SinkRunner(settings).run(stop)
    return 0
