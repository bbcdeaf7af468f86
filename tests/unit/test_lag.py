"""Dating the committed offset from high-watermark reads (core/lag.py, lag in seconds)."""

from __future__ import annotations

import pytest

from core.lag import Position, WatermarkHistory


def history(*reads: tuple[float, int], keep: int = 100) -> WatermarkHistory:
    h = WatermarkHistory(keep)
    for at, high in reads:
        h.add(at, high)
    return h


def test_a_group_at_the_watermark_is_not_behind() -> None:
    assert history((0, 10), (5, 20)).lag_seconds(committed=20, now=30) == 0.0


def test_nothing_read_yet_says_zero() -> None:
    assert WatermarkHistory(10).lag_seconds(committed=0, now=5) == 0.0


def test_the_waiting_message_is_dated_between_the_reads_around_it() -> None:
    # The watermark went from 100 (read at 10) to 200 (read at 20): offset 149 arrived
    # about halfway, at ~15 s.
    h = history((10, 100), (20, 200))
    assert h.lag_seconds(committed=149, now=25) == pytest.approx(10.0)
    # The next message after a read at the watermark arrived just after that read.
    assert h.lag_seconds(committed=100, now=25) == pytest.approx(14.9)


def test_a_long_quiet_watermark_dates_from_its_last_read() -> None:
    # 100 for a minute (read at 0 and at 60), then 101 at 65: the message at offset 100
    # came between 60 and 65, not at 0.
    h = history((0, 100), (60, 100), (65, 101))
    assert 60 <= 70 - h.lag_seconds(committed=100, now=70) <= 65


def test_an_offset_older_than_the_history_is_at_least_its_age() -> None:
    h = history((10, 100), (20, 200))
    assert h.lag_seconds(committed=3, now=50) == 40.0


def test_the_history_keeps_only_its_last_reads() -> None:
    h = history((0, 10), (10, 20), (20, 30), keep=2)
    # The read at 0 is gone: offset 12 now predates the history (oldest read at 10).
    assert h.lag_seconds(committed=12, now=30) == 20.0


def test_position_behind_is_never_negative() -> None:
    assert Position(committed=7, high=5).behind == 0
    assert Position(committed=5, high=9).behind == 4
