"""Datetimes as integer epoch microseconds: formatting, lenient and strict parsing."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = 1_000_000
DAY_US = 86_400 * US

_FILTER_DATETIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|z|[+-]\d{2}:?\d{2})?)?$"
)


def to_us(dt: datetime) -> int:
    """Epoch microseconds of an aware datetime (naive ones are taken as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - EPOCH
    return (delta.days * 86_400 + delta.seconds) * US + delta.microseconds


def from_us(us: int) -> datetime:
    """The UTC datetime of epoch microseconds (exact, no float rounding)."""
    return EPOCH + timedelta(microseconds=us)


def iso(us: int, micro: bool | None = None) -> str:
    """ISO 8601 with a ``+00:00`` offset; microseconds when ``micro`` (or when non-zero if None)."""
    dt = from_us(us)
    if micro is None:
        micro = dt.microsecond != 0
    return dt.isoformat(timespec="microseconds" if micro else "seconds")


@lru_cache(maxsize=262_144)
def parse_us(value: str) -> int | None:
    """Lenient parse of a stored datetime string to epoch microseconds; None if it is not one."""
    try:
        dt = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return to_us(dt)


def value_us(value: object) -> int | None:
    """Epoch microseconds of a record's datetime value (a string), else None."""
    return parse_us(value) if isinstance(value, str) else None


def parse_filter_datetime(token: str) -> int | None:
    """Strict parse of an unquoted filter datetime (``2024-01-01T00:00:00Z``, ``+00:00``, µs).

    Naive values are UTC. A ``+`` that arrived as a space (unencoded) is rejected.
    """
    if not _FILTER_DATETIME.match(token):
        return None
    text = token[:-1] + "+00:00" if token[-1] in "Zz" else token
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return to_us(dt)


def midnight_on_or_after(us: int) -> int:
    """The first UTC midnight at or after ``us``."""
    return -(-us // DAY_US) * DAY_US
