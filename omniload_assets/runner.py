"""Materializing tables over a UTC date range from Python: used by the CLI and the demo."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

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


def window_run_config(
    assets: Sequence[dg.AssetsDefinition],
    first_day: date | None,
    last_day: date | None,
    resume: bool = True,
    write_options: Mapping[str, Mapping[str, object]] | None = None,
) -> dict:
    """Run config giving each partitioned asset the window ``first_day`` .. ``last_day`` (whole days;
    None: its partitions' days) and, when not ``resume``, a full pass; and every asset, partitioned
    or not, its entry of ``write_options`` (table name -> ``full_refresh``, ``incremental_strategy``,
    ``primary_key``, ``columns``: :class:`~omniload_assets.partitions.WindowConfig`'s write options)."""
    window: dict[str, object] = {} if resume else {"resume": False}
    if first_day is not None and last_day is not None:
        start = datetime.combine(first_day, time(), UTC)
        end = datetime.combine(last_day + timedelta(days=1), time(), UTC)
        window.update({"start": start.isoformat(), "end": end.isoformat()})
    ops: dict[str, object] = {}
    for a in assets:
        config = dict(window) if a.partitions_def is not None else {}
        config.update((write_options or {}).get(a.key.path[-1], {}))
        if config:
            ops[a.op.name] = {"config": config}
    return {"ops": ops} if ops else {}


Run = tuple[list[dg.AssetsDefinition], dict[str, str], dict]


def plan_runs(
    assets: Sequence[dg.AssetsDefinition],
    days: tuple[date, date],
    partition_status: bool,
    base_config: Mapping[str, object],
    resume: bool,
    write_options: Mapping[str, Mapping[str, object]] | None,
) -> list[Run]:
    """The runs of :func:`materialize_tables`: (assets, tags, run config) each, empty ones dropped."""
    if partition_status:
        partitioned = [a for a in assets if a.partitions_def is not None]
        whole = [a for a in assets if a.partitions_def is None]
        partitioned_config = {
            **base_config,
            **window_run_config(partitioned, None, None, resume, write_options),
        }
        whole_config = {**base_config, **window_run_config(whole, None, None, resume, write_options)}
        runs = [(partitioned, partition_range_tags(*days), partitioned_config), (whole, {}, whole_config)]
    else:
        window_config = window_run_config(assets, *days, resume, write_options)
        runs = [(list(assets), {}, {**base_config, **window_config})]
    return [run for run in runs if run[0]]


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
    partition_status: bool | None = None,
    resume: bool = True,
    write_options: Mapping[str, Mapping[str, object]] | None = None,
) -> list[RunOutcome]:
    """Load ``tables`` over ``[first_day, last_day]``.

    With ``partition_status`` (default: when ``instance`` keeps its history), the partitioned tables
    run as one partition-range run, so Dagster records each day as materialized, and the rest in a
    second run. Without it, all tables go in one run that gives the partitioned ones the range as
    their window config: Dagster then records one materialization per table instead of two events
    per day, which a throw-away (ephemeral) instance would only discard (1,800 days: 0.02 s
    instead of 5-30 s; README, Performance).

    ``run_config`` goes to every run as it is (the CLI uses it to quieten Dagster's console logger).
    ``resume=False`` makes the partitioned tables fetch everything, checkpoints of a failed attempt
    notwithstanding. ``write_options`` (table name -> op config) go to each table's op in either
    run: how ``omniload ingest``'s ingestr flags (``--full-refresh``, ``--incremental-strategy``,
    ``--primary-key``, ``--columns``) reach every selected asset.
    """
    if last_day < first_day:
        raise ValueError(f"the range ends ({last_day}) before it starts ({first_day})")
    if partition_status is None:
        partition_status = instance.is_persistent
    assets = [defs.get_assets_def(asset_key(t)) for t in tables]
    res = dict(resources) if resources is not None else dict(defs.resources or {})
    days = (first_day, last_day)
    runs = plan_runs(assets, days, partition_status, dict(run_config or {}), resume, write_options)
    outcomes: list[RunOutcome] = []
    for group, tags, config in runs:
        result = dg.materialize(
            group,
            resources=res,
            instance=instance,
            tags=tags,
            raise_on_error=raise_on_error,
            run_config=config or None,
        )
        for a in group:
            outcomes.append(RunOutcome(a.key.path[-1], result.success, result.run_id))
    return outcomes
