"""A tenant's rate limit holds across the lane processes (issue 19, item 4).

Buckets live in each worker process. With the lanes split (make run, compose), each lane's
deliver stage used to spend the whole limit, so a tenant sending on both lanes got up to
twice its rate. Now each lane spends its share (BULK_RATE_SHARE,
streams.stages.deliver.lane_budget).
Measured through the deliver stage of two real lane processes, from the times the deliver
stage handed each notification over.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.ids import notification_id
from tests.support.pipeline import Pipeline
from tests.support.requests import request_record
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration

RATE = 4.0  # notifications/s for the tenant
PER_LANE = 24
BURSTS = 2 + 2  # each process's bucket starts full: max(2, its rate x 1 s)


@pytest.fixture(scope="module")
def pipeline(
    kafka_bootstrap: str, fresh_database: str, smtp: SmtpCapture, log_dir: Path
) -> Iterator[Pipeline]:
    pipe = Pipeline(
        bootstrap=kafka_bootstrap,
        database_url=fresh_database,
        smtp_port=smtp.port,
        log_dir=log_dir,
        split_lanes=True,
        extra_env={"TENANT_RATE_LIMIT_PER_SECOND": str(RATE)},
    )
    pipe.start()
    try:
        yield pipe
    finally:
        pipe.stop()


def test_a_tenant_sending_on_both_lanes_gets_its_rate_not_twice_it(pipeline: Pipeline) -> None:
    ids = []
    for i in range(PER_LANE):
        for lane, priority in (("t", "high"), ("b", "low")):
            user = f"rate-{lane}{i}"
            record = request_record(user, channels=["in_app"], priority=priority)
            topic = "notifications.requests" + (".bulk" if priority == "low" else "")
            pipeline.produce_record(topic, f"acme:{user}", record)
            ids.append(notification_id("acme", str(record["request_id"]), user, "in_app"))
    pipeline.flush()
    handed_over = {"sent", "delivered"}
    pipeline.wait_for_status(ids, handed_over, timeout=180)

    times = sorted(
        min(e["occurred_at"] for e in pipeline.statuses[nid] if e["status"] in handed_over)
        for nid in ids
    )
    span = (times[-1] - times[0]) / 1000
    observed = (len(times) - BURSTS) / span
    print(
        f"\n{len(times)} notifications over {span:.1f}s: {observed:.2f}/s for a limit of {RATE}/s"
    )
    assert observed <= RATE * 1.1, f"{observed:.2f}/s over a {RATE}/s limit"
    # Both lanes were served all along, not one after the other.
    assert observed >= RATE * 0.5
    # The waits are on the transactional worker's /metrics (issue 15).
    text = httpx.get(f"http://127.0.0.1:{pipeline.metrics_port}/metrics", timeout=10).text
    waits = re.search(
        r'^notifications_rate_limit_waits_total\{provider="",scope="tenant"\} (\S+)$', text, re.M
    )
    assert waits and float(waits.group(1)) > 0, "no tenant rate-limit wait counted"
    assert re.search(
        r'^notifications_rate_limit_wait_seconds_count\{scope="tenant"\} [1-9]', text, re.M
    )
