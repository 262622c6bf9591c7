"""The sliding-window rate limiter (``klaviyo.ratelimit``) on a fake clock."""

from __future__ import annotations

import pytest

from omniload_assets.klaviyo.ratelimit import SlidingWindowLimiter

# -- pacing --------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def _max_in_any_window(times: list[float], span: float) -> int:
    return max(sum(1 for u in times if t <= u < t + span) for t in times)


@pytest.mark.parametrize(("burst", "steady"), [(5, 20), (3, 58), (1, 4), (10, 10)])
def test_sliding_window_limiter_never_exceeds_any_window(burst, steady):
    clock = FakeClock()
    limiter = SlidingWindowLimiter([(1.0, burst), (60.0, steady)], clock=clock, sleep=clock.sleep)
    times, waits = [], []
    for i in range(3 * steady + 7):
        waits.append(limiter.acquire())
        times.append(clock.now)
        if i % 3 == 0:
            clock.now += 0.25  # the caller does some work between requests

    assert _max_in_any_window(times, 1.0) <= burst
    assert _max_in_any_window(times, 60.0) <= steady
    # Not stricter than needed: the first burst goes through at once, and the limits are reached.
    assert waits[: min(burst, steady)] == [0.0] * min(burst, steady)
    assert sum(waits) == pytest.approx(sum(clock.sleeps))
    assert _max_in_any_window(times, 1.0) == min(burst, steady)
    assert _max_in_any_window(times, 60.0) == steady
    assert clock.sleeps


def test_limiter_reports_the_time_it_waited():
    clock = FakeClock()
    limiter = SlidingWindowLimiter([(1.0, 2)], clock=clock, sleep=clock.sleep)
    assert limiter.acquire() == 0
    assert limiter.acquire() == 0
    assert limiter.acquire() == pytest.approx(1.0)
    assert clock.now == pytest.approx(1.0)
