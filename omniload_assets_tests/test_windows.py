"""Unit tests of TimeWindow, window filters and datetime parsing."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from omniload_assets.klaviyo.catalog import GE, GT, LE, get_table
from omniload_assets.klaviyo.windows import (
    TimeWindow,
    after,
    at_or_after,
    before,
    combine_filters,
    compare,
    format_datetime,
    parse_datetime,
    window_filter,
)

D0 = datetime(2024, 1, 5, tzinfo=UTC)
US = timedelta(microseconds=1)


def assert_tiles(window: TimeWindow, pieces: list[TimeWindow]) -> None:
    """``pieces`` cover ``window`` exactly: same ends, contiguous, non-empty, no overlap."""
    assert pieces, "no pieces"
    assert pieces[0].start == window.start
    assert pieces[-1].end == window.end
    for a, b in zip(pieces, pieces[1:], strict=False):
        assert a.end == b.start, f"gap or overlap between {a} and {b}"
    for p in pieces:
        assert p.start < p.end
    assert sum((p.duration for p in pieces), timedelta()) == window.duration
    # Every instant lies in exactly one piece: both ends of every piece, and around them.
    probes = {window.start, window.end - US}
    for p in pieces:
        probes |= {p.start, p.end - US, p.start + (p.end - p.start) / 2}
        if p.end < window.end:
            probes.add(p.end)
    for t in probes:
        assert sum(1 for p in pieces if t in p) == 1, t
    assert sum(1 for p in pieces if window.end in p) == 0
    assert sum(1 for p in pieces if window.start - US in p) == 0


@pytest.mark.parametrize(
    ("start", "end", "parts", "expected_count"),
    [
        (D0, D0 + timedelta(days=1), 1, 1),
        (D0, D0 + timedelta(days=1), 4, 4),
        (D0, D0 + timedelta(days=1), 16, 16),
        (D0, D0 + timedelta(days=1), 7, 7),  # 86400 s / 7 is not whole seconds
        (D0, D0 + timedelta(days=3), 32, 32),
        (D0, D0 + timedelta(days=365), 32, 32),
        (D0 + timedelta(microseconds=123456), D0 + timedelta(days=1, microseconds=500001), 5, 5),
        (D0, D0 + timedelta(seconds=3), 10, 3),  # never below one second a piece
        (D0, D0 + timedelta(milliseconds=500), 4, 1),
        (D0, D0 + timedelta(days=1), 0, 1),
        (D0, D0 + timedelta(days=1), -3, 1),
        (
            datetime(2024, 3, 31, 1, tzinfo=timezone(timedelta(hours=2))),
            datetime(2024, 4, 1, 1, tzinfo=timezone(timedelta(hours=-5))),
            9,
            9,
        ),
    ],
)
def test_split_covers_the_window_exactly(start, end, parts, expected_count):
    window = TimeWindow(start, end)
    pieces = window.split(parts)
    assert len(pieces) == expected_count
    assert_tiles(window, pieces)
    # Inner bounds are whole seconds (they go into filters); the outer ones are untouched.
    for p in pieces[1:]:
        assert p.start.microsecond == 0


def test_split_pieces_are_nearly_equal():
    window = TimeWindow(D0, D0 + timedelta(days=1))
    durations = [p.duration for p in window.split(7)]
    assert max(durations) - min(durations) <= timedelta(seconds=1)


def test_split_random_windows_cover_exactly():
    rng = random.Random(20240105)
    for _ in range(300):
        start = D0 + timedelta(seconds=rng.randrange(0, 10**7), microseconds=rng.randrange(0, 10**6))
        length = timedelta(
            seconds=rng.choice([0, 1, 2, 59, 3600, 86400, 10**6]), microseconds=rng.randrange(1, 10**6)
        )
        window = TimeWindow(start, start + length)
        parts = rng.randrange(-1, 70)
        pieces = window.split(parts)
        assert 1 <= len(pieces) <= max(1, parts)
        assert_tiles(window, pieces)


def test_window_is_half_open():
    window = TimeWindow(D0, D0 + timedelta(days=1))
    assert D0 in window
    assert D0 + timedelta(days=1) - US in window
    assert D0 + timedelta(days=1) not in window
    assert D0 - US not in window
    assert datetime(2024, 1, 5, 1, tzinfo=timezone(timedelta(hours=1))) in window  # = D0 in UTC
    assert window.duration == timedelta(days=1)


def test_window_rejects_naive_and_empty_bounds():
    with pytest.raises(ValueError, match="timezone-aware"):
        TimeWindow(datetime(2024, 1, 5), datetime(2024, 1, 6))
    with pytest.raises(ValueError, match="empty"):
        TimeWindow(D0, D0)
    with pytest.raises(ValueError, match="empty"):
        TimeWindow(D0, D0 - US)


# -- filters -------------------------------------------------------------------------------------

DAY = TimeWindow(D0, D0 + timedelta(days=1))


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            "events",
            [
                "greater-or-equal(datetime,2024-01-05T00:00:00+00:00)",
                "less-than(datetime,2024-01-06T00:00:00+00:00)",
            ],
        ),
        (
            "profiles",
            [
                "greater-than(updated,2024-01-04T23:59:59.999999+00:00)",
                "less-than(updated,2024-01-06T00:00:00+00:00)",
            ],
        ),
        ("lists", ["greater-than(updated,2024-01-04T23:59:59.999999+00:00)"]),
        ("segments", ["greater-than(updated,2024-01-04T23:59:59.999999+00:00)"]),
        (
            "campaigns",
            [
                "greater-or-equal(updated_at,2024-01-05T00:00:00+00:00)",
                "less-than(updated_at,2024-01-06T00:00:00+00:00)",
            ],
        ),
        ("metrics", []),
        ("catalog-items", []),
        ("tags", []),
    ],
)
def test_window_filter_per_endpoint(table, expected):
    assert window_filter(get_table(table), DAY) == expected


def test_window_filter_with_microsecond_bounds():
    window = TimeWindow(D0 + timedelta(microseconds=10), D0 + timedelta(hours=1, microseconds=20))
    assert window_filter(get_table("events"), window) == [
        "greater-or-equal(datetime,2024-01-05T00:00:00.000010+00:00)",
        "less-than(datetime,2024-01-05T01:00:00.000020+00:00)",
    ]
    assert window_filter(get_table("profiles"), window)[0] == (
        "greater-than(updated,2024-01-05T00:00:00.000009+00:00)"
    )


@pytest.mark.parametrize(
    ("table", "after_d0", "at_or_after_d0", "before_d0"),
    [
        (  # every operator: each bound as asked
            "events",
            "greater-than(datetime,2024-01-05T00:00:00+00:00)",
            "greater-or-equal(datetime,2024-01-05T00:00:00+00:00)",
            "less-than(datetime,2024-01-05T00:00:00+00:00)",
        ),
        (  # greater-than and less-than only: "at or after" is "after 1 µs before"
            "profiles",
            "greater-than(updated,2024-01-05T00:00:00+00:00)",
            "greater-than(updated,2024-01-04T23:59:59.999999+00:00)",
            "less-than(updated,2024-01-05T00:00:00+00:00)",
        ),
        (  # greater-than only: no upper bound on the server
            "lists",
            "greater-than(updated,2024-01-05T00:00:00+00:00)",
            "greater-than(updated,2024-01-04T23:59:59.999999+00:00)",
            None,
        ),
    ],
)
def test_key_comparisons_use_the_operators_the_endpoint_has(table, after_d0, at_or_after_d0, before_d0):
    spec = get_table(table)
    assert after(spec, D0) == after_d0
    assert at_or_after(spec, D0) == at_or_after_d0
    assert before(spec, D0) == before_d0


def test_key_comparisons_fall_back_one_microsecond_the_other_way():
    only_ge_le = replace(get_table("events"), filter_operators=frozenset({GE, LE}))
    assert after(only_ge_le, D0) == "greater-or-equal(datetime,2024-01-05T00:00:00.000001+00:00)"
    assert at_or_after(only_ge_le, D0) == "greater-or-equal(datetime,2024-01-05T00:00:00+00:00)"
    assert before(only_ge_le, D0) == "less-or-equal(datetime,2024-01-04T23:59:59.999999+00:00)"
    assert window_filter(only_ge_le, DAY) == [
        "greater-or-equal(datetime,2024-01-05T00:00:00+00:00)",
        "less-or-equal(datetime,2024-01-05T23:59:59.999999+00:00)",
    ]


def test_key_comparisons_need_an_incremental_key():
    assert compare(GT, "updated", D0) == "greater-than(updated,2024-01-05T00:00:00+00:00)"
    with pytest.raises(ValueError, match="tags has no incremental key"):
        after(get_table("tags"), D0)


def test_combine_filters():
    assert combine_filters([]) is None
    assert combine_filters(["equals(archived,true)"]) == "equals(archived,true)"
    assert combine_filters(["a(x)", "b(y)", "c(z)"]) == "and(a(x),b(y),c(z))"


def test_format_datetime_is_utc_with_offset():
    assert format_datetime(datetime(2024, 1, 5, 2, tzinfo=timezone(timedelta(hours=2)))) == (
        "2024-01-05T00:00:00+00:00"
    )
    assert format_datetime(datetime(2024, 1, 5, 0, 0, 0, 5, tzinfo=UTC)) == "2024-01-05T00:00:00.000005+00:00"


# -- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-05T00:00:00+00:00", D0),
        ("2024-01-05T00:00:00.000001+00:00", D0 + US),
        ("2024-01-05 00:00:00+00:00", D0),
        ("2024-01-05T00:00:00Z", D0),
        ("2024-01-05 00:00:00.250Z", D0 + timedelta(milliseconds=250)),
        ("2024-01-05T01:00:00+01:00", D0),
        ("2024-01-04T19:00:00-05:00", D0),
        ("2024-01-05T00:00:00", D0),
        (1704412800, D0),
        (1704412800.5, D0 + timedelta(milliseconds=500)),
        (datetime(2024, 1, 5), D0),
        (datetime(2024, 1, 5, 1, tzinfo=timezone(timedelta(hours=1))), D0),
    ],
)
def test_parse_datetime(value, expected):
    parsed = parse_datetime(value)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("value", [None, ""])
def test_parse_datetime_empty_is_none(value):
    assert parse_datetime(value) is None


@pytest.mark.parametrize("value", ["string", "2024-13-01T00:00:00Z", True, {"a": 1}, [2024]])
def test_parse_datetime_rejects_garbage(value):
    with pytest.raises(ValueError):
        parse_datetime(value)
