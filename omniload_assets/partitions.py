"""Daily UTC partitions of the incremental tables, and the time window of a run."""

from __future__ import annotations

from datetime import UTC, datetime, time

import dagster as dg

from omniload_assets import settings
from omniload_assets.klaviyo.windows import TimeWindow


def daily_partitions() -> dg.DailyPartitionsDefinition:
    """One partition per UTC day from ``OMNILOAD_START_DATE`` up to and including today."""
    return dg.DailyPartitionsDefinition(
        start_date=datetime.combine(settings.start_date(), time(), tzinfo=UTC).strftime("%Y-%m-%d"),
        timezone="UTC",
        end_offset=1,
    )


def run_window(context: dg.AssetExecutionContext) -> TimeWindow | None:
    """The ``[start, end)`` a run covers: one day, a backfill's whole range, or None (unpartitioned)."""
    # A range run's tags reach every asset of the run; unpartitioned ones still read everything.
    if context.assets_def.partitions_def is None:
        return None
    if not context.has_partition_key and not context.has_partition_key_range:
        return None
    window = context.partition_time_window
    return TimeWindow(window.start.astimezone(UTC), window.end.astimezone(UTC))
