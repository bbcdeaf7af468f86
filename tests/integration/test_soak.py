"""The soak of `make soak` (bench/soak.py), short (400 notifications): exact counts through
two kill -9s of a worker, a second worker joining and leaving, and a sink restart.

Fails when a notification is lost, a status is double-counted, a final status or a delivery
is not the expected one, or a poison message is not dead-lettered. docs/reliability.md has
the full-size run and its figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import Plan, run

pytestmark = pytest.mark.integration


def test_a_short_soak_ends_with_exactly_one_final_status_per_notification(
    kafka_bootstrap: str, postgres_url: str, tmp_path: Path
) -> None:
    plan = Plan(count=400, kills=2, users=200, poison_every=150, stall_timeout=120)
    report = run(plan, bootstrap=kafka_bootstrap, admin_database_url=postgres_url, log_dir=tmp_path)
    report.print()
    assert not report.failures, report.failures
