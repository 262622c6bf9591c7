"""Time windows, datetime parsing, and Klaviyo's filter syntax (written here, and only here).

Every ``filter`` parameter the project sends is built from these functions: comparisons of an
endpoint's incremental key (:func:`after`, :func:`at_or_after`, :func:`before`, each falling back
to the operator the endpoint has), a window's bounds (:func:`window_filter`) and their conjunction
(:func:`combine_filters`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from omniload_assets.klaviyo.catalog import GE, GT, LE, LT, TableSpec

ONE_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class TimeWindow:
    """A half-open UTC interval ``[start, end)``."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("TimeWindow bounds must be timezone-aware")
        if self.end <= self.start:
            raise ValueError(f"empty time window: {self.start.isoformat()} >= {self.end.isoformat()}")

    def __contains__(self, instant: datetime) -> bool:
        return self.start <= instant < self.end

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def split(self, parts: int) -> list[TimeWindow]:
        """Cut into ``parts`` contiguous windows of (nearly) equal length, whole seconds."""
        parts = max(1, min(parts, int(self.duration.total_seconds()) or 1))
        step = self.duration / parts
        bounds = [self.start + step * i for i in range(parts)] + [self.end]
        bounds = [b.replace(microsecond=0) if 0 < i < parts else b for i, b in enumerate(bounds)]
        return [TimeWindow(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


def parse_datetime(value: object) -> datetime | None:
    """Parse the datetime shapes Klaviyo sends into an aware UTC datetime.

    Accepts ISO 8601 with ``T`` or a space, with or without microseconds, ``Z`` or an offset,
    naive strings (taken as UTC) and epoch seconds.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=UTC)
    elif isinstance(value, str):
        parsed = datetime.fromisoformat(value)
    else:
        raise ValueError(f"not a datetime: {value!r}")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_datetime(value: datetime) -> str:
    """ISO 8601 in UTC with an explicit offset, as Klaviyo's filters take it (unquoted)."""
    return value.astimezone(UTC).isoformat()


def window_filter(spec: TableSpec, window: TimeWindow) -> list[str]:
    """The filter expressions that push as much of ``window`` to the server as it allows.

    Endpoints with only ``greater-than`` get ``greater-than(key, start - 1µs)``, so a record exactly
    on the lower bound is kept; the client still checks both bounds on every record.
    """
    if spec.incremental_key is None:
        return []
    exprs: list[str] = []
    if spec.filter_operators & {GE, GT}:
        exprs.append(at_or_after(spec, window.start))
    upper = before(spec, window.end)
    if upper is not None:
        exprs.append(upper)
    return exprs


def compare(operator: str, key: str, instant: datetime) -> str:
    """One comparison filter, ``operator(key,instant)``, with the instant as Klaviyo takes it."""
    return f"{operator}({key},{format_datetime(instant)})"


def after(spec: TableSpec, instant: datetime) -> str:
    """Filter: ``spec``'s incremental key strictly after ``instant`` (``greater-than``, else
    ``greater-or-equal`` one microsecond later)."""
    key = _incremental_key(spec)
    if GT in spec.filter_operators:
        return compare(GT, key, instant)
    return compare(GE, key, instant + ONE_MICROSECOND)


def at_or_after(spec: TableSpec, instant: datetime) -> str:
    """Filter: ``spec``'s incremental key at or after ``instant`` (``greater-or-equal``, else
    ``greater-than`` one microsecond earlier)."""
    key = _incremental_key(spec)
    if GE in spec.filter_operators:
        return compare(GE, key, instant)
    return compare(GT, key, instant - ONE_MICROSECOND)


def before(spec: TableSpec, instant: datetime) -> str | None:
    """Filter: ``spec``'s incremental key strictly before ``instant`` (``less-than``, else
    ``less-or-equal`` one microsecond earlier); None when the endpoint has neither."""
    key = _incremental_key(spec)
    if LT in spec.filter_operators:
        return compare(LT, key, instant)
    if LE in spec.filter_operators:
        return compare(LE, key, instant - ONE_MICROSECOND)
    return None


def _incremental_key(spec: TableSpec) -> str:
    if spec.incremental_key is None:
        raise ValueError(f"{spec.name} has no incremental key to filter on")
    return spec.incremental_key


def combine_filters(exprs: list[str]) -> str | None:
    """Join expressions with ``and(...)``; ``None`` when there is nothing to filter on."""
    if not exprs:
        return None
    if len(exprs) == 1:
        return exprs[0]
    return f"and({','.join(exprs)})"
