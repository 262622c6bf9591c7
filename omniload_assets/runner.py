"""Materializing tables over a UTC date range from Python: used by the CLI and the demo."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

import dagster as dg

from omniload_assets.assets import asset_key
from omniload_assets.klaviyo.catalog import TableSpec

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass(frozen=True)
class RunOutcome:
    table: str
    success: bool
    run_id: str


def partition_range_tags(first_day: date, last_day: date) -> dict[str, str]:
    """Run tags that make one run cover the daily partitions ``first_day`` .. ``last_day``."""
    return {RANGE_START_TAG: first_day.isoformat(), RANGE_END_TAG: last_day.isoformat()}


def materialize_tables(
    defs: dg.Definitions,
    tables: Sequence[TableSpec],
    *,
    first_day: date,
    last_day: date,
    instance: dg.DagsterInstance,
    resources: Mapping[str, object] | None = None,
    raise_on_error: bool = True,
    run_config: Mapping[str, object] | None = None,
) -> list[RunOutcome]:
    """One run for the partitioned tables over ``[first_day, last_day]``, one for the rest.

    ``run_config`` goes to every run as it is (the CLI uses it to quieten Dagster's console logger).
    """
    if last_day < first_day:
        raise ValueError(f"the range ends ({last_day}) before it starts ({first_day})")
    assets = [defs.get_assets_def(asset_key(t)) for t in tables]
    partitioned = [a for a in assets if a.partitions_def is not None]
    whole = [a for a in assets if a.partitions_def is None]
    res = dict(resources) if resources is not None else dict(defs.resources or {})
    outcomes: list[RunOutcome] = []
    for group, tags in ((partitioned, partition_range_tags(first_day, last_day)), (whole, {})):
        if not group:
            continue
        result = dg.materialize(
            group,
            resources=res,
            instance=instance,
            tags=tags,
            raise_on_error=raise_on_error,
            run_config=dict(run_config) if run_config is not None else None,
        )
        for a in group:
            outcomes.append(RunOutcome(a.key.path[-1], result.success, result.run_id))
    return outcomes
