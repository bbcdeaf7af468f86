"""A worker stopped and restarted mid-stream loses nothing and its counts stay exact."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from core.ids import notification_id
from tests.integration.test_pipeline import request_record, sink_states
from tests.support.pipeline import Pipeline, wait_until
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration

TOTAL = 300


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "kill"])
def test_worker_restart_mid_stream_loses_nothing_and_counts_stay_exact(
    pipeline: Pipeline, smtp: SmtpCapture, stop_signal: int
) -> None:
    batch_id = f"batch-{stop_signal.name}-{time.time_ns()}"
    ids = []
    for i in range(TOTAL):
        user = f"{stop_signal.name.lower()}{i}"
        # The first request carries an idempotency key, reused after the restart below.
        key = f"key-{batch_id}" if i == 0 else None
        record = request_record(user, batch_id=batch_id, idempotency_key=key)
        pipeline.produce_record("notifications.requests", f"acme:{user}", record)
        ids.append(notification_id(record["tenant_id"], record["request_id"], user, "email"))
    pipeline.flush()

    def ours_sent() -> int:
        received = smtp.by_notification_id()
        return sum(1 for nid in ids if nid in received)

    wait_until(
        lambda: pipeline.assert_alive() or ours_sent() >= 40, 120, "the first emails of the batch"
    )
    pipeline.worker.stop(stop_signal)
    sent_before_restart = ours_sent()
    assert sent_before_restart < TOTAL, "the worker finished before it was stopped"
    pipeline.worker.start()

    pipeline.wait_for_status(ids, {"sent"}, timeout=240)
    received = smtp.by_notification_id()
    missing = [nid for nid in ids if nid not in received]
    assert not missing, f"{len(missing)} notifications never reached SMTP"
    duplicates = sum(len(received[nid]) - 1 for nid in ids)
    print(
        f"\n{stop_signal.name}: {sent_before_restart} sent before the restart, "
        f"{duplicates} duplicate emails after it"
    )
    if stop_signal == signal.SIGTERM:
        assert duplicates == 0, "a graceful stop must not resend anything"

    last: dict[str, int] = {}

    def batch_counts_exact() -> bool:
        try:
            counts = pipeline.worker_json(f"/batches/{batch_id}/")["counts"]
        except httpx.HTTPError:
            return False  # the restarted worker's web server is not up yet
        last.clear()
        last.update(counts)
        return last == {"sent": TOTAL}

    try:
        wait_until(batch_counts_exact, 60, "exact batch counts")
    except AssertionError:
        raise AssertionError(f"batch counts {last}, expected {{'sent': {TOTAL}}}") from None
    wait_until(
        lambda: sink_states(pipeline, ids) == dict.fromkeys(ids, "sent"),
        60,
        "the sink to show every notification as sent once",
    )
