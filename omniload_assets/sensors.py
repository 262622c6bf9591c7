"""The change sensor: asks Klaviyo cheaply which partitions changed and requests runs for just those.

Per partitioned table the sensor keeps a high-water mark in its cursor: the newest incremental key
it has requested a run for. Each tick raises it to the newest key already materialized in DuckDB
(one short read-only query), so runs of the schedule or a backfill count too; a table never
materialized has no mark and is left to the schedule or a backfill. A tick asks, per table:

* endpoints that filter and sort on the key: one request, ``page[size]=1``, ``sort=-<key>``,
  ``filter=greater-than(<key>, mark)``, only the key as sparse fieldset. An empty page means
  nothing changed. Otherwise the newest key names the last changed day, and a skip scan
  (ascending, page size 1, from the mark, then from the next midnight) finds each earlier day that
  holds a change: one request per changed day, so the runs cover exactly the changed partitions.
* endpoints that cannot (metrics, catalog-*): one read of the listing with only the key as sparse
  fieldset, the smallest equivalent; the changed days are those of the keys above the mark.

Tables with a ``filter_variants`` entry (archived campaigns/flows) are asked once per variant.
Requests go through :class:`KlaviyoClient`, paced to each endpoint's rate limit; a 429 whose
``Retry-After`` exceeds ``MAX_RETRY_AFTER_S`` (or any API error) skips that table for this tick and
keeps its mark. A table with a run in flight on a changed partition is deferred, mark kept, so no
partition is requested twice while a run for it is queued or running.

The incremental key only moves forward for updated records: a late event whose ``datetime`` lies
before the mark is not seen here; the schedule's lookback catches it.
"""

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from omniload_assets import settings
from omniload_assets.assets import asset_key
from omniload_assets.automation import (
    TRIGGER_TAG,
    Clock,
    incremental_tables,
    overlaps,
    runs_in_flight,
    sensor_status,
    utc_now,
)
from omniload_assets.klaviyo.catalog import GE, GT, TableSpec
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets.klaviyo.errors import KlaviyoAuthError, KlaviyoConfigError, KlaviyoError
from omniload_assets.klaviyo.resource import KlaviyoResource
from omniload_assets.klaviyo.windows import ONE_MICROSECOND, combine_filters, format_datetime, parse_datetime
from omniload_assets.settings import CHANGE_SENSOR
from omniload_assets.warehouse.connection import (
    WarehouseError,
    is_local_file,
    open_database,
    resolve_database,
)
from omniload_assets.warehouse.io_manager import KlaviyoTablesIOManager
from omniload_assets.warehouse.writer import qualified_name, quote_ident

#: Longest Retry-After the sensor waits on a 429; longer skips the table until the next tick.
MAX_RETRY_AFTER_S = 5.0
SENSOR_MAX_RETRIES = 2
#: Most skip-scan requests per table and variant in one tick; beyond it, every later day counts.
MAX_SCAN_REQUESTS = 31
#: Longest wait for another process's DuckDB lock when reading high-water marks.
MARK_LOCK_TIMEOUT_S = 5.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class TableChange:
    """What changed in one table since its mark."""

    spec: TableSpec
    newest: datetime
    days: frozenset[date]


@dataclass
class ChangeProbe:
    """Asks one Klaviyo account, as cheaply as each endpoint allows, what changed after a mark."""

    client: KlaviyoClient
    stats: ClientStats = field(default_factory=ClientStats)
    max_scan: int = MAX_SCAN_REQUESTS

    def changes(self, spec: TableSpec, mark: datetime) -> TableChange | None:
        """The change of ``spec`` after ``mark``, or None when nothing changed."""
        if spec.incremental_key is None:
            raise ValueError(f"{spec.name} has no incremental key to detect changes on")
        if spec.server_side_window:
            return self._sorted(spec, mark)
        return self._listing(spec, mark)

    # -- endpoints that filter and sort on the key ----------------------------------------------

    def _first(self, spec: TableSpec, variant: str | None, lower: str, descending: bool) -> datetime | None:
        """The key of the first record above ``lower`` in key order (one request, page size 1)."""
        key = spec.incremental_key
        assert key is not None
        params = {
            "sort": f"-{key}" if descending else key,
            "filter": combine_filters([*([variant] if variant else []), lower]) or lower,
            f"fields[{spec.resource_type}]": key,
        }
        if spec.max_page_size is not None:
            params["page[size]"] = "1"
        page = self.client.get_json(spec, spec.path, params, self.stats)
        self.stats.add(pages=1)
        data = page.get("data") or []
        return record_key(spec, data[0]) if data else None

    def _sorted(self, spec: TableSpec, mark: datetime) -> TableChange | None:
        variants: Sequence[str | None] = spec.filter_variants or (None,)
        newest: dict[str | None, datetime] = {}
        for variant in variants:
            found = self._first(spec, variant, after(spec, mark), descending=True)
            if found is not None and found > mark:
                newest[variant] = found
        if not newest:
            return None
        days: set[date] = set()
        for variant, last in newest.items():  # only the variants that changed are scanned
            days.add(last.date())
            days |= self._scan(spec, variant, mark, midnight(last.date()))
        return TableChange(spec, max(newest.values()), frozenset(days))

    def _scan(
        self, spec: TableSpec, variant: str | None, mark: datetime, last_midnight: datetime
    ) -> set[date]:
        """Days before ``last_midnight`` holding a key above ``mark``: one request per such day."""
        days: set[date] = set()
        lower, bound = after(spec, mark), mark
        for _ in range(self.max_scan):
            if bound >= last_midnight:
                return days
            found = self._first(spec, variant, lower, descending=False)
            if found is None or found >= last_midnight:
                return days
            days.add(found.date())
            bound = midnight(found.date() + timedelta(days=1))
            lower = at_or_after(spec, bound)
        # Out of budget: count every remaining day as changed (a superset is safe, merges are idempotent).
        day = bound.date()
        while day < last_midnight.date():
            days.add(day)
            day += timedelta(days=1)
        return days

    # -- endpoints that cannot ----------------------------------------------------------------

    def _listing(self, spec: TableSpec, mark: datetime) -> TableChange | None:
        key = spec.incremental_key
        assert key is not None
        newest: datetime | None = None
        days: set[date] = set()
        for variant in spec.filter_variants or (None,):
            params = {f"fields[{spec.resource_type}]": key}
            if spec.max_page_size is not None:
                params["page[size]"] = str(spec.max_page_size)
            if variant:
                params["filter"] = variant
            for page in self.client.iter_pages(spec, params, self.stats):
                for raw in page.keys:
                    found = parse_datetime(raw)
                    if found is None or found <= mark:
                        continue
                    days.add(found.date())
                    newest = found if newest is None or found > newest else newest
        return None if newest is None else TableChange(spec, newest, frozenset(days))


def record_key(spec: TableSpec, record: dict[str, Any]) -> datetime | None:
    """A resource's incremental key as an aware UTC datetime."""
    return parse_datetime((record.get("attributes") or {}).get(spec.incremental_key or ""))


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def after(spec: TableSpec, instant: datetime) -> str:
    """Filter expression: key strictly after ``instant``."""
    if GT in spec.filter_operators:
        return f"{GT}({spec.incremental_key},{format_datetime(instant)})"
    return f"{GE}({spec.incremental_key},{format_datetime(instant + ONE_MICROSECOND)})"


def at_or_after(spec: TableSpec, instant: datetime) -> str:
    """Filter expression: key at or after ``instant``."""
    if GE in spec.filter_operators:
        return f"{GE}({spec.incremental_key},{format_datetime(instant)})"
    return f"{GT}({spec.incremental_key},{format_datetime(instant - ONE_MICROSECOND)})"


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


def warehouse_marks(
    database: str,
    schema: str,
    specs: Iterable[TableSpec],
    lock_timeout_s: float = MARK_LOCK_TIMEOUT_S,
    table_name: Callable[[TableSpec], str] = lambda spec: spec.asset_name,
) -> dict[str, datetime]:
    """The newest incremental key of each table in DuckDB; tables absent or empty are left out."""
    specs = list(specs)
    target = resolve_database(database)
    if not specs or (is_local_file(target) and not Path(target).exists()):
        return {}
    marks: dict[str, datetime] = {}
    with open_database(target, read_only=True, lock_timeout_s=lock_timeout_s) as conn:
        present = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_catalog = current_database() AND table_schema = ?",
                [schema],
            ).fetchall()
        }
        for spec in specs:
            name = table_name(spec)
            if name not in present or spec.incremental_key is None:
                continue
            table = qualified_name(conn, schema, name)
            row = conn.execute(
                f"SELECT epoch_us(max({quote_ident(spec.incremental_key)})::TIMESTAMPTZ) FROM {table}"
            ).fetchone()
            if row and row[0] is not None:
                marks[spec.name] = EPOCH + timedelta(microseconds=int(row[0]))
    return marks


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
) -> Tick:
    """Run requests for the changed partitions; marks advance only for the tables requested."""
    next_marks = dict(marks)
    notes: list[str] = []
    warnings: list[str] = []
    by_day: dict[str, list[TableSpec]] = {}
    today = now.astimezone(UTC).date()
    for spec in specs:
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
        if overlaps(in_flight, asset_key(spec), partitions):
            warnings.append(f"{spec.name}: changed, but a run of {', '.join(partitions)} is in flight")
            continue
        for partition in partitions:
            by_day.setdefault(partition, []).append(spec)
        # Never move the mark past now: a future-dated key would hide changes made before it.
        next_marks[spec.name] = min(change.newest, now.astimezone(UTC))
        notes.append(f"{spec.name}: changed up to {change.newest.isoformat()} in {', '.join(partitions)}")
    requests = []
    for partition, tables in sorted(by_day.items()):
        names = sorted(t.name for t in tables)
        marks_text = ",".join(format_datetime(next_marks[n]) for n in names)
        digest = hashlib.sha256(marks_text.encode()).hexdigest()[:12]
        requests.append(
            dg.RunRequest(
                run_key=f"{CHANGE_SENSOR}:{partition}:{'+'.join(names)}:{digest}",
                partition_key=partition,
                asset_selection=[asset_key(t) for t in sorted(tables, key=lambda t: t.name)],
                tags={TRIGGER_TAG: CHANGE_SENSOR},
            )
        )
    return Tick(requests, next_marks, notes, warnings)


def build_change_sensor(
    job: UnresolvedAssetJobDefinition,
    *,
    minimum_interval_seconds: int | None = None,
    clock: Clock = utc_now,
) -> dg.SensorDefinition:
    """One sensor over every partitioned table of the catalogue."""
    specs = incremental_tables()
    first_partition = settings.start_date()
    interval = settings.sensor_interval_s() if minimum_interval_seconds is None else minimum_interval_seconds

    @dg.sensor(
        name=CHANGE_SENSOR,
        job=job,
        minimum_interval_seconds=interval,
        default_status=sensor_status(CHANGE_SENSOR),
        description=(
            f"Every {interval} s asks Klaviyo (one small sorted request per table where the API "
            f"allows) whether any of the {len(specs)} partitioned tables changed since its "
            "high-water mark, and requests runs for just the changed partitions."
        ),
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        klaviyo: KlaviyoResource,
        klaviyo_duckdb: dg.ResourceParam[KlaviyoTablesIOManager],
    ) -> dg.SensorResult:
        now = clock()
        warehouse = klaviyo_duckdb
        marks = load_marks(context.cursor)
        try:
            materialized = warehouse_marks(
                warehouse.database,
                warehouse.schema,
                specs,
                min(warehouse.lock_timeout_s, MARK_LOCK_TIMEOUT_S),
                warehouse.table_name,
            )
        except WarehouseError as exc:
            materialized = {}
            context.log.warning(f"cannot read high-water marks from DuckDB this tick: {exc}")
        marks = merge_marks(marks, materialized)
        in_flight = runs_in_flight(context.instance, [asset_key(s) for s in specs])
        sensor_klaviyo = klaviyo.model_copy(
            update={
                "max_retry_after_s": min(klaviyo.max_retry_after_s, MAX_RETRY_AFTER_S),
                "max_retries": min(klaviyo.max_retries, SENSOR_MAX_RETRIES),
            }
        )
        stats = ClientStats()
        with sensor_klaviyo.get_client() as client:
            probe = ChangeProbe(client, stats)
            tick = plan_tick(
                specs=specs,
                marks=marks,
                probe=probe.changes,
                in_flight=in_flight,
                first_partition=first_partition,
                now=now,
            )
        for note in tick.notes:
            context.log.info(note)
        for warning in tick.warnings:
            context.log.warning(warning)
        context.log.info(
            f"{int(stats.requests)} Klaviyo requests, {int(stats.throttled)} throttled, "
            f"{len(tick.run_requests)} run request(s)"
        )
        skip = None if tick.run_requests else "no Klaviyo table changed since its high-water mark"
        return dg.SensorResult(
            run_requests=tick.run_requests, cursor=dump_marks(tick.marks), skip_reason=skip
        )

    return _sensor


def build_sensors(job: UnresolvedAssetJobDefinition) -> list[dg.SensorDefinition]:
    return [build_change_sensor(job)]
