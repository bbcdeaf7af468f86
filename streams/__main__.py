"""Start a worker: `python -m streams worker -l info`.

Refuses to start while any topic of topics.yaml is missing (run `python -m core.provision`).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from core.logs import log_format
from core.provision import provision
from core.settings import Settings, get_settings
from streams.runtime.parts import runs_stage_feeders, runs_status_flows, served_lanes

if TYPE_CHECKING:
    import faust


def serve_health(app: faust.App, settings: Settings) -> None:
    """/metrics, /health and /ready on METRICS_PORT (core/health.py). The loop is the one
    Faust's worker will run (mode's get_event_loop, as mode.Service.loop uses)."""
    from mode.utils.loops import get_event_loop

    from core.health import Health, LoopHeartbeat, serve
    from core.lag import register as register_lag

    def group() -> str | None:
        if app.rebalancing_count == 0:
            return "not yet joined its consumer group"
        return "rebalancing (recovering its tables)" if app.rebalancing else None

    health = Health(
        LoopHeartbeat(get_event_loop()).alive,
        stall_seconds=settings.health_stall_seconds,
        checks={"group": group},
    )
    groups = [app.conf.id]  # Faust's consumer group is the app id
    if runs_status_flows(settings):
        from streams.stages.status_loop import GROUP

        groups.append(GROUP)  # the status stage's batched loop
    register_lag(settings, *groups)
    serve(health, settings.metrics_port or 0, settings.metrics_host)


def main() -> None:
    missing = provision(get_settings(), create=False).missing
    if missing:
        sys.exit(
            "refusing to start: these topics are missing: "
            + ", ".join(missing)
            + "\ncreate them with: python -m core.provision"
        )
    settings = get_settings()

    # Importing a module registers its agents (and declares its tables), so a worker
    # imports only the modules of the parts it runs (streams/runtime/parts.py).
    if served_lanes(settings):
        from streams.stages import (
            deliver,  # noqa: F401
            enrich,  # noqa: F401
            render,  # noqa: F401
            request,  # noqa: F401
            route,  # noqa: F401
        )
    if runs_stage_feeders(settings):
        from streams.delivery import retry  # noqa: F401
        from streams.state import scheduler  # noqa: F401
        from streams.triggers import agents as triggers  # noqa: F401
    if runs_status_flows(settings):
        from streams.stages import status_loop  # noqa: F401  (status, receipts)
        from streams.state import batches  # noqa: F401
        from streams.webhooks import agents as status_webhooks  # noqa: F401

    if settings.worker_lane == "bulk" and settings.bulk_worker_niceness:
        # Measured: sharing two cores with a bulk worker busy on a 20k backlog, a
        # transactional notification took up to 1.4 s; with the bulk worker niced, under 1 s.
        os.nice(settings.bulk_worker_niceness)
    from streams.runtime.app import app

    if settings.metrics_port:
        serve_health(app, settings)

    # Faust's CLI starts its web server on 0.0.0.0:6066 unless told otherwise, whatever
    # the app's configuration says: loopback on WORKER_WEB_PORT, or not at all.
    if settings.worker_web_port is None:
        sys.argv.append("--without-web")
    else:
        sys.argv += ["--web-bind", "127.0.0.1", "--web-port", str(settings.worker_web_port)]

    if log_format() == "json":
        sys.argv.insert(1, "--quiet")  # no start-up banner among the JSON lines

    app.main()


if __name__ == "__main__":
    main()
