"""Sets of time windows: what part of a run's window is fetched, committed, or left to do.

A set is a sorted list of disjoint, non-touching :class:`TimeWindow` (see :func:`normalise`). The
checkpoints of a long run (:mod:`omniload_assets.checkpointing`) use these to say which whole UTC
days are complete and what a resumed run still has to fetch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, time, timedelta

from omniload_assets.klaviyo.windows import TimeWindow

ONE_DAY = timedelta(days=1)


def normalise(windows: Iterable[TimeWindow]) -> list[TimeWindow]:
    """``windows`` sorted, with overlapping and touching ones joined."""
    joined: list[TimeWindow] = []
    for window in sorted(windows, key=lambda w: w.start):
        if joined and window.start <= joined[-1].end:
            if window.end > joined[-1].end:
                joined[-1] = TimeWindow(joined[-1].start, window.end)
        else:
            joined.append(window)
    return joined


def intersect(a: Sequence[TimeWindow], b: Sequence[TimeWindow]) -> list[TimeWindow]:
    """What both sets cover."""
    left, right = normalise(a), normalise(b)
    found: list[TimeWindow] = []
    i = j = 0
    while i < len(left) and j < len(right):
        start, end = max(left[i].start, right[j].start), min(left[i].end, right[j].end)
        if start < end:
            found.append(TimeWindow(start, end))
        if left[i].end < right[j].end:
            i += 1
        else:
            j += 1
    return found


def subtract(window: TimeWindow, holes: Sequence[TimeWindow]) -> list[TimeWindow]:
    """The parts of ``window`` that none of ``holes`` covers."""
    left: list[TimeWindow] = []
    cursor = window.start
    for hole in normalise(holes):
        if hole.end <= cursor or hole.start >= window.end:
            continue
        if hole.start > cursor:
            left.append(TimeWindow(cursor, hole.start))
        cursor = max(cursor, hole.end)
    if cursor < window.end:
        left.append(TimeWindow(cursor, window.end))
    return left


def covered(windows: Sequence[TimeWindow]) -> timedelta:
    """The time the set covers."""
    return sum((w.duration for w in normalise(windows)), timedelta())


def _day_start(instant: datetime) -> datetime:
    return datetime.combine(instant.astimezone(UTC).date(), time(), UTC)


def whole_days(done: Sequence[TimeWindow], within: TimeWindow) -> list[TimeWindow]:
    """The UTC days of ``within`` (cut to it at its ends) that ``done`` covers entirely, joined into
    stretches: a day half fetched is never among them."""
    days: list[TimeWindow] = []
    for part in intersect(done, [within]):
        start, end = part.start, part.end
        if start != within.start and start != _day_start(start):
            start = _day_start(start) + ONE_DAY  # the day it starts in is not all there
        if end != within.end:
            end = _day_start(end)
        if start < end:
            days.append(TimeWindow(start, end))
    return days


def day_keys(stretches: Sequence[TimeWindow]) -> list[str]:
    """The daily partition keys (``YYYY-MM-DD``) the stretches touch."""
    keys: list[str] = []
    for stretch in normalise(stretches):
        day = _day_start(stretch.start)
        while day < stretch.end:
            keys.append(day.date().isoformat())
            day += ONE_DAY
    return keys
