"""Prometheus metrics of the Postgres sink."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

WRITTEN = Counter(
    "notifications_sink_messages_total", "Messages the sink wrote to the database.", ["topic"]
)
SKIPPED = Counter(
    "notifications_sink_skipped_total",
    "Messages the sink skipped: undecodable (bad bytes, unknown status) or rejected by the "
    "database.",
    ["topic", "reason"],
)
WRITE_FAILURES = Counter(
    "notifications_sink_write_failures_total", "Batch writes that failed and were retried."
)
BATCH_SECONDS = Histogram(
    "notifications_sink_batch_seconds",
    "Time to write one batch to the database.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "notifications_sink_batch_messages",
    "Messages in one batch written to the database (up to SINK_BATCH_SIZE).",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
)
