"""The back-off schedules: X's documented one and the exponential one, reset after a healthy run."""

from __future__ import annotations

import pytest

from bridge.backoff import ExponentialBackoff, XBackoff


def test_backoff_follows_x_schedule():
    b = XBackoff()
    assert [b.network() for _ in range(3)] == [0.25, 0.5, 0.75]
    assert [b.network() for _ in range(70)][-1] == 16.0
    assert [b.http() for _ in range(8)] == [5, 10, 20, 40, 80, 160, 320, 320]
    assert [b.too_many() for _ in range(3)] == [60, 120, 240]
    b.connected()
    assert b.http() == 5 and b.too_many() == 60 and b.network() == 16.0  # network waits for a healthy run


def test_established_drop_reconnects_at_once_but_a_flapping_server_gets_backed_off():
    b = XBackoff(scale=0.01, healthy_after=30)
    assert b.dropped(lasted=100) == 0
    assert b.dropped(lasted=1) == 0
    assert b.dropped(lasted=1) == pytest.approx(0.0025)
    assert b.dropped(lasted=31) == 0 and b.dropped(lasted=1) == 0


def test_exponential_backoff_doubles_to_a_minute_with_jitter_and_resets_after_a_healthy_run():
    b = ExponentialBackoff(healthy_after=30)
    delays = [b.failed() for _ in range(9)]
    for delay, step in zip(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60], strict=True):
        assert step / 2 <= delay <= step
    assert len(set(delays[-3:])) > 1  # jittered, not in step with other clients
    assert b.dropped(lasted=31) == 0 and b.dropped(lasted=1) == 0
    assert 0.5 <= b.dropped(lasted=1) <= 1  # a second quick drop: back-off from the start again
