"""Daily UTC partitions of the incremental tables, and the time window of a run."""

from __future__ import annotations

from datetime import UTC, datetime, time

import dagster as dg
from pydantic import Field

from omniload_assets import settings
from omniload_assets.klaviyo.windows import TimeWindow


class RunWindowError(ValueError):
    """A run's window cannot be used; the message says what to change."""


class WindowConfig(dg.Config):
    """A window for a run that carries no partition, and whether to resume a failed attempt.

    A partitioned run loads its partitions' days. A run without partitions loads this window, or
    everything when it is empty: ``omniload ingest`` uses it when no Dagster home keeps the run,
    so a range of years costs one materialization instead of one per day.
    """

    start: str | None = Field(
        default=None,
        description="First UTC instant to load (ISO 8601, e.g. 2024-01-01T00:00:00Z), inclusive. Only for "
        "runs without a partition; leave empty in partitioned runs.",
    )
    end: str | None = Field(
        default=None,
        description="UTC instant to load up to, exclusive. Set together with start.",
    )
    resume: bool = Field(
        default=True,
        description="Resume from the checkpoints of a failed attempt of the same range (less than "
        "OMNILOAD_CHECKPOINT_MAX_AGE_H old); false: a full pass (omniload ingest --no-resume).",
    )

    def window(self) -> TimeWindow | None:
        if self.start is None and self.end is None:
            return None
        if self.start is None or self.end is None:
            raise RunWindowError("set both start and end of the window config, or neither")
        start, end = _instant(self.start, "start"), _instant(self.end, "end")
        if end <= start:
            raise RunWindowError(f"window end {self.end!r} is not after start {self.start!r}")
        return TimeWindow(start, end)


def _instant(text: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RunWindowError(f"window {name} {text!r} is not an ISO 8601 date or datetime") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def daily_partitions() -> dg.DailyPartitionsDefinition:
    """One partition per UTC day from ``OMNILOAD_START_DATE`` up to and including today."""
    return dg.DailyPartitionsDefinition(
        start_date=datetime.combine(settings.start_date(), time(), tzinfo=UTC).strftime("%Y-%m-%d"),
        timezone="UTC",
        end_offset=1,
    )


def run_window(context: dg.AssetExecutionContext, config: WindowConfig) -> TimeWindow | None:
    """The ``[start, end)`` a run covers: its partitions' days, the config's window, or None (all)."""
    partitioned_run = context.has_partition_key or context.has_partition_key_range
    window = config.window()
    if context.assets_def.partitions_def is None:
        if window is not None:
            name = context.asset_key.to_user_string()
            raise RunWindowError(f"{name} is replaced whole: it takes no window")
        return None
    if not partitioned_run:
        return window
    if window is not None:
        raise RunWindowError("a partitioned run loads its partitions' days: leave the window config empty")
    days = context.partition_time_window
    return TimeWindow(days.start.astimezone(UTC), days.end.astimezone(UTC))
