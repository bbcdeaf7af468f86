"""Which agents a worker process runs (WORKER_LANE): the pipeline split into parts.

A Faust worker has one consumer, one fetch loop and one event loop, so whatever shares a
process shares a queue. Three parts keep the transactional lane clear of bulk traffic:

- transactional: the stages' transactional lane, and the flows that feed stages
  (scheduler, retry release, triggers);
- bulk: the stages' bulk lane (its own group and tables);
- status: everything that reads every status event (status and batch tracking, the batch
  stage, receipts, status webhooks). A 20k marketing blast writes ~60k status events in
  the first seconds; in the transactional worker they delayed a password reset by 1.4 s.

"all" runs every part in one process: fine for development, no isolation under load.
"""

from __future__ import annotations

from core.lanes import LANES, Lane
from core.settings import Settings


def served_lanes(settings: Settings) -> tuple[Lane, ...]:
    """The lanes whose stage agents this worker runs."""
    if settings.worker_lane == "all":
        return LANES
    if settings.worker_lane == "status":
        return ()
    return (settings.worker_lane,)


def runs_stage_feeders(settings: Settings) -> bool:
    """Scheduler, retry release and triggers: once per deployment, with the transactional lane."""
    return settings.worker_lane in ("all", "transactional")


def runs_status_flows(settings: Settings) -> bool:
    """Status and batch tracking, the batch stage, receipts, status webhooks."""
    return settings.worker_lane in ("all", "status")
