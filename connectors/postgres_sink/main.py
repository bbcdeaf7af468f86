"""Command line entry point: run the sink until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from connectors.postgres_sink.runner import SinkRunner
from core.health import Health, serve
from core.lag import register as register_lag
from core.logs import configure
from core.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m connectors.postgres_sink",
        description="Write notifications.status, notifications.inbox and webhooks.delivery-log "
        "to DATABASE_URL.",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve /metrics, /health and /ready on this port (default: METRICS_PORT)",
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    configure(settings.log_level)  # LOG_FORMAT=json: one JSON object per line
    runner = SinkRunner(settings)
    port = args.metrics_port or settings.metrics_port
    if port:
        register_lag(settings, runner.group_id)
        health = Health(
            runner.heartbeat.alive,
            stall_seconds=settings.health_stall_seconds,
            checks=runner.checks(),
        )
        serve(health, port, settings.metrics_host)

    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("%s: finishing the batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    runner.run(stop)
    return 0
