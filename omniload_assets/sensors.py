"""The change sensor: asks Klaviyo cheaply which partitions changed and requests runs for just those.

Per partitioned table the sensor keeps a high-water mark in its cursor: the newest incremental key
it has requested a run for. Each tick raises it to the newest key already materialized in DuckDB
(:meth:`WarehouseReader.newest_keys`, one short read-only query), so runs of the schedule or a
backfill count too; a table never materialized has no mark and is left to the schedule or a
backfill. Per table with a mark, :class:`~omniload_assets.klaviyo.changes.ChangeProbe` asks Klaviyo
which days hold a key above it (one small sorted request where the API allows), and the tick
requests one run per changed day over the tables changed on it.

Requests go through :class:`KlaviyoClient`, paced to each endpoint's rate limit; a 429 whose
``Retry-After`` exceeds ``MAX_RETRY_AFTER_S`` (or any API error) skips that table for this tick and
keeps its mark. A table with a run in flight on a changed partition is held back, mark kept, so no
partition is requested twice while a run for it is in progress. A table whose endpoint is deferred
in DuckDB (a daily quota exhausted, a long outage: :mod:`omniload_assets.warehouse.checkpoints`) is
not probed at all until then, mark kept.

A table whose per-table ``sensor`` is false (``automation.per_table``) is never probed.

A late event whose ``datetime`` lies before the mark is not seen here; the schedule's lookback
catches it.
"""

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import dagster as dg

from omniload_assets import settings
from omniload_assets.assets import IO_MANAGER_KEY, KLAVIYO_KEY, asset_key
from omniload_assets.automation import (
    TRIGGER_TAG,
    AssetJob,
    Clock,
    overlaps,
    read_deferrals,
    runs_in_flight,
    sensor_status,
    utc_now,
)
from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.changes import ChangeProbe, TableChange
from omniload_assets.klaviyo.client import ClientStats
from omniload_assets.klaviyo.errors import KlaviyoAuthError, KlaviyoConfigError, KlaviyoError
from omniload_assets.klaviyo.resource import KlaviyoResource
from omniload_assets.klaviyo.windows import format_datetime, parse_datetime
from omniload_assets.layout import Layout
from omniload_assets.settings import CHANGE_SENSOR
from omniload_assets.warehouse.checkpoints import Deferral
from omniload_assets.warehouse.connection import WarehouseError
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager

#: Longest Retry-After the sensor waits on a 429; longer skips the table until the next tick.
MAX_RETRY_AFTER_S = 5.0
SENSOR_MAX_RETRIES = 2
#: Longest wait for another process's DuckDB lock when reading high-water marks.
MARK_LOCK_TIMEOUT_S = 5.0


# -- the cursor and the warehouse's marks ---------------------------------------------------------


def load_marks(cursor: str | None) -> dict[str, datetime]:
    """Table name -> mark, from the sensor cursor (JSON); an unreadable cursor starts afresh."""
    if not cursor:
        return {}
    try:
        raw = json.loads(cursor).get("marks", {})
        return {name: parse_datetime(value) for name, value in raw.items() if value}  # type: ignore[misc]
    except (ValueError, AttributeError, TypeError):
        return {}


def dump_marks(marks: dict[str, datetime]) -> str:
    return json.dumps({"marks": {n: format_datetime(m) for n, m in sorted(marks.items())}}, sort_keys=True)


def merge_marks(requested: dict[str, datetime], materialized: dict[str, datetime]) -> dict[str, datetime]:
    """Per table the later of the mark already requested and the one materialized (by any run)."""
    merged = dict(requested)
    for name, mark in materialized.items():
        merged[name] = max(mark, merged.get(name, mark))
    return merged


def materialized_marks(
    warehouse: KlaviyoDuckDBIOManager, specs: Sequence[TableSpec], log: logging.Logger
) -> dict[str, datetime]:
    """The newest key of each table in DuckDB, waiting at most ``MARK_LOCK_TIMEOUT_S`` for its lock;
    none (and a warning) when DuckDB cannot be read this tick."""
    try:
        return warehouse.reader(min(warehouse.lock_timeout_s, MARK_LOCK_TIMEOUT_S)).newest_keys(specs)
    except WarehouseError as exc:
        log.warning(f"cannot read high-water marks from DuckDB this tick: {exc}")
        return {}


def deferred_sources(
    warehouse: KlaviyoDuckDBIOManager, now: datetime, log: logging.Logger
) -> dict[str, Deferral]:
    """The deferrals in force at ``now`` (:func:`read_deferrals`); none (and a warning) when DuckDB
    cannot be read this tick, so every table is probed as usual."""
    try:
        return read_deferrals(warehouse, now)
    except WarehouseError as exc:
        log.warning(f"cannot read the deferrals from DuckDB this tick: {exc}")
        return {}


# -- one tick -------------------------------------------------------------------------------------


@dataclass
class Tick:
    """The outcome of one evaluation: run requests, the next cursor and what was skipped why."""

    run_requests: list[dg.RunRequest]
    marks: dict[str, datetime]
    notes: list[str]
    warnings: list[str]


def plan_tick(
    *,
    specs: Sequence[TableSpec],
    marks: dict[str, datetime],
    probe: Callable[[TableSpec, datetime], TableChange | None],
    in_flight: dict[dg.AssetKey, frozenset[str] | None],
    first_partition: date,
    now: datetime,
    deferred: Mapping[str, Deferral] | None = None,
    key: Callable[[TableSpec], dg.AssetKey] = asset_key,
    name: str = CHANGE_SENSOR,
) -> Tick:
    """Run requests for the changed partitions; marks advance only for the tables requested.

    Tables in ``deferred`` (Klaviyo table name -> deferral) are not probed. ``key`` gives a table's
    asset key, ``name`` is the sensor's (both of the default layout unless given).
    """
    next_marks = dict(marks)
    notes: list[str] = []
    warnings: list[str] = []
    by_day: dict[str, list[TableSpec]] = {}
    today = now.astimezone(UTC).date()
    for spec in specs:
        deferral = (deferred or {}).get(spec.name)
        if deferral is not None:
            notes.append(f"{spec.name}: deferred {deferral.describe()}")
            continue
        mark = marks.get(spec.name)
        if mark is None:
            notes.append(f"{spec.name}: never materialized; run the schedule or a backfill first")
            continue
        try:
            change = probe(spec, mark)
        except (KlaviyoConfigError, KlaviyoAuthError):
            raise  # every table would fail: fail the tick, visibly
        except KlaviyoError as exc:
            warnings.append(f"{spec.name}: skipped this tick, mark kept ({type(exc).__name__}: {exc})")
            continue
        if change is None:
            continue
        partitions = sorted(d.isoformat() for d in change.days if first_partition <= d <= today)
        if overlaps(in_flight, key(spec), partitions):
            warnings.append(f"{spec.name}: changed, but a run of {', '.join(partitions)} is in flight")
            continue
        for partition in partitions:
            by_day.setdefault(partition, []).append(spec)
        # Never move the mark past now: a future-dated key would hide changes made before it.
        next_marks[spec.name] = min(change.newest, now.astimezone(UTC))
        notes.append(f"{spec.name}: changed up to {change.newest.isoformat()} in {', '.join(partitions)}")
    return Tick(run_requests(by_day, next_marks, key, name), next_marks, notes, warnings)


def run_requests(
    by_day: dict[str, list[TableSpec]],
    marks: dict[str, datetime],
    key: Callable[[TableSpec], dg.AssetKey] = asset_key,
    name: str = CHANGE_SENSOR,
) -> list[dg.RunRequest]:
    """One run per changed partition over its changed tables; the run key names the marks reached,
    so a later change of the same partition is a new run."""
    requests = []
    for partition, tables in sorted(by_day.items()):
        names = sorted(t.name for t in tables)
        marks_text = ",".join(format_datetime(marks[n]) for n in names)
        digest = hashlib.sha256(marks_text.encode()).hexdigest()[:12]
        requests.append(
            dg.RunRequest(
                run_key=f"{name}:{partition}:{'+'.join(names)}:{digest}",
                partition_key=partition,
                asset_selection=[key(t) for t in sorted(tables, key=lambda t: t.name)],
                tags={TRIGGER_TAG: name},
            )
        )
    return requests


def probing_resource(klaviyo: KlaviyoResource) -> KlaviyoResource:
    """``klaviyo`` with the sensor's short patience: a tick must not wait out a long Retry-After."""
    return klaviyo.model_copy(
        update={
            "max_retry_after_s": min(klaviyo.max_retry_after_s, MAX_RETRY_AFTER_S),
            "max_retries": min(klaviyo.max_retries, SENSOR_MAX_RETRIES),
        }
    )


def log_tick(log: logging.Logger, tick: Tick, stats: ClientStats) -> None:
    """What the tick found and skipped, and what it cost in Klaviyo requests."""
    for note in tick.notes:
        log.info(note)
    for warning in tick.warnings:
        log.warning(warning)
    log.info(
        f"{int(stats.requests)} Klaviyo requests, {int(stats.throttled)} throttled, "
        f"{len(tick.run_requests)} run request(s)"
    )


def build_change_sensor(
    job: AssetJob,
    *,
    minimum_interval_seconds: int | None = None,
    clock: Clock = utc_now,
    layout: Layout | None = None,
) -> dg.SensorDefinition:
    """One sensor over the covered partitioned tables but those whose per-table ``sensor`` is false."""
    layout = layout or Layout()
    specs, first_partition, name = (
        layout.sensed_tables(),
        layout.first_partition(),
        layout.name(CHANGE_SENSOR),
    )
    interval = minimum_interval_seconds
    if interval is None:
        chosen = layout.automation.sensor_interval_s
        interval = settings.sensor_interval_s() if chosen is None else chosen
    klaviyo_key, io_key = layout.name(KLAVIYO_KEY), layout.name(IO_MANAGER_KEY)

    @dg.sensor(
        name=name,
        job_name=job.name,
        minimum_interval_seconds=interval,
        default_status=sensor_status(CHANGE_SENSOR, layout),
        required_resource_keys={klaviyo_key, io_key},
        description=(
            f"Every {interval} s asks Klaviyo (one small sorted request per table where the API "
            f"allows) whether any of the {len(specs)} partitioned tables changed since its "
            "high-water mark, and requests runs for just the changed partitions."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext, **_resources: object) -> dg.SensorResult:
        # Called directly (``sensor(context)``), Dagster also passes the resources as keywords.
        now = clock()
        klaviyo: KlaviyoResource = getattr(context.resources, klaviyo_key)
        warehouse: KlaviyoDuckDBIOManager = getattr(context.resources, io_key)
        marks = merge_marks(load_marks(context.cursor), materialized_marks(warehouse, specs, context.log))
        in_flight = runs_in_flight(context.instance, [layout.key(s) for s in specs], layout)
        deferred = deferred_sources(warehouse, now, context.log)
        stats = ClientStats()
        with probing_resource(klaviyo).get_client() as client:
            tick = plan_tick(
                specs=specs,
                marks=marks,
                probe=ChangeProbe(client, stats).changes,
                in_flight=in_flight,
                first_partition=first_partition,
                now=now,
                deferred=deferred,
                key=layout.key,
                name=name,
            )
        log_tick(context.log, tick, stats)
        skip = None if tick.run_requests else "no Klaviyo table changed since its high-water mark"
        return dg.SensorResult(
            run_requests=tick.run_requests, cursor=dump_marks(tick.marks), skip_reason=skip
        )

    return _sensor


def build_sensors(job: AssetJob | None, layout: Layout | None = None) -> list[dg.SensorDefinition]:
    """The change sensor over the incremental ``job``; none without that job or when the layout
    leaves it no table to probe (the sensor off, or off for every table)."""
    layout = layout or Layout()
    if job is None or not layout.sensed_tables():
        return []
    return [build_change_sensor(job, layout=layout)]
