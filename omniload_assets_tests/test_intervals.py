"""Sets of time windows: checked against a brute-force model over whole hours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from omniload_assets.klaviyo.intervals import covered, day_keys, intersect, normalise, subtract, whole_days
from omniload_assets.klaviyo.windows import TimeWindow

T0 = datetime(2024, 1, 1, tzinfo=UTC)
HOURS = 24 * 5


def hours(a: int, b: int) -> TimeWindow:
    return TimeWindow(T0 + timedelta(hours=a), T0 + timedelta(hours=b))


def cells(windows: list[TimeWindow]) -> set[int]:
    """The hours a set covers (every bound here is a whole hour)."""
    return {
        h
        for w in windows
        for h in range(int((w.start - T0) / timedelta(hours=1)), int((w.end - T0) / timedelta(hours=1)))
    }


windows = st.lists(
    st.tuples(st.integers(0, HOURS - 1), st.integers(1, 30)).map(
        lambda p: hours(p[0], min(p[0] + p[1], HOURS))
    ),
    max_size=8,
)


@given(windows)
def test_normalise_keeps_what_is_covered_sorted_disjoint_and_apart(ws: list[TimeWindow]) -> None:
    out = normalise(ws)
    assert cells(out) == cells(ws)
    assert all(a.end < b.start for a, b in zip(out, out[1:], strict=False))
    assert covered(ws) == timedelta(hours=len(cells(ws)))


@given(windows, windows)
def test_intersect_and_subtract_match_the_model(a: list[TimeWindow], b: list[TimeWindow]) -> None:
    assert cells(intersect(a, b)) == cells(a) & cells(b)
    whole = hours(0, HOURS)
    assert cells(subtract(whole, b)) == cells([whole]) - cells(b)


@given(windows, st.integers(0, 40), st.integers(1, 80))
def test_whole_days_are_the_days_of_the_window_done_entirely(done: list[TimeWindow], a: int, n: int) -> None:
    within = hours(a, min(a + n, HOURS))
    got = whole_days(done, within)
    inside = cells([within])
    for day in range(5):  # each day of the window, cut to it, is in exactly when done covers it all
        piece = set(range(day * 24, day * 24 + 24)) & inside
        if piece:
            assert (piece <= cells(done)) == (piece <= cells(got)), day
    assert cells(got) <= cells(done) & inside


def test_day_keys_name_every_day_a_stretch_touches() -> None:
    assert day_keys([hours(12, 30), hours(30, 31)]) == ["2024-01-01", "2024-01-02"]
    assert day_keys([hours(0, 24)]) == ["2024-01-01"]
