"""Time windows, Klaviyo filter expressions for them, and datetime parsing."""

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
    key, ops = spec.incremental_key, spec.filter_operators
    if key is None:
        return []
    exprs: list[str] = []
    if GE in ops:
        exprs.append(f"{GE}({key},{format_datetime(window.start)})")
    elif GT in ops:
        exprs.append(f"{GT}({key},{format_datetime(window.start - ONE_MICROSECOND)})")
    if LT in ops:
        exprs.append(f"{LT}({key},{format_datetime(window.end)})")
    elif LE in ops:
        exprs.append(f"{LE}({key},{format_datetime(window.end - ONE_MICROSECOND)})")
    return exprs


def combine_filters(exprs: list[str]) -> str | None:
    """Join expressions with ``and(...)``; ``None`` when there is nothing to filter on."""
    if not exprs:
        return None
    if len(exprs) == 1:
        return exprs[0]
    return f"and({','.join(exprs)})"
