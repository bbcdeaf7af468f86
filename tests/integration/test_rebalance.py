"""A second worker joining mid-stream (a rebalance) loses nothing and keeps counts exact."""

from __future__ import annotations

import sys
import time

import httpx
import pytest

from core.ids import notification_id
from tests.integration.test_pipeline import request_record, sink_states
from tests.support.pipeline import Pipeline, Process, wait_until
from tests.support.ports import free_port
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration

TOTAL = 1000


def test_worker_joining_mid_stream_loses_nothing(pipeline: Pipeline, smtp: SmtpCapture) -> None:
    second_port = free_port()
    second = Process(
        "worker-2",
        [sys.executable, "-m", "streams", "worker", "-l", "info"],
        {**pipeline.env, "WORKER_WEB_PORT": str(second_port), "METRICS_PORT": str(free_port())},
        pipeline.worker.log_path.parent,
    )
    batch_id = f"batch-rebalance-{time.time_ns()}"
    ids = []
    for i in range(TOTAL):
        record = request_record(f"rb{i}", batch_id=batch_id)
        pipeline.produce_record("notifications.requests", f"acme:rb{i}", record)
        ids.append(notification_id(record["tenant_id"], record["request_id"], f"rb{i}", "email"))
    pipeline.flush()

    def ours_sent() -> int:
        received = smtp.by_notification_id()
        return sum(1 for nid in ids if nid in received)

    wait_until(lambda: pipeline.assert_alive() or ours_sent() >= 40, 120, "the first emails")
    second.start()
    try:
        wait_until(
            lambda: b"Worker]: Ready" in second.log_path.read_bytes(),
            120,
            "the second worker to join",
        )
        sent_at_join = ours_sent()
        assert sent_at_join < TOTAL, "the stream was over before the rebalance"
        pipeline.wait_for_status(ids, {"sent"}, timeout=240)
        received = smtp.by_notification_id()
        assert all(nid in received for nid in ids)
        duplicates = sum(len(received[nid]) - 1 for nid in ids)
        print(
            f"\nrebalance: {sent_at_join} sent when the second worker joined, "
            f"{duplicates} duplicate emails"
        )

        answers: list[dict[str, int]] = []

        def one_worker_has_exact_counts() -> bool:
            # Each worker answers from its own tables: the active owner of the batch's
            # partition, and a standby replica that may lag behind it.
            answers.clear()
            for port in (pipeline.web_port, second_port):
                try:
                    url = f"http://127.0.0.1:{port}/batches/{batch_id}/"
                    answers.append(httpx.get(url, timeout=5).json()["counts"])
                except httpx.HTTPError:
                    continue
            return {"sent": TOTAL} in answers

        try:
            wait_until(one_worker_has_exact_counts, 60, "exact batch counts")
        except AssertionError:
            raise AssertionError(f"batch counts per worker: {answers}") from None
        wait_until(
            lambda: sink_states(pipeline, ids) == dict.fromkeys(ids, "sent"),
            60,
            "the sink to show every notification as sent",
        )
    finally:
        second.stop()
