"""Jobs and schedules that keep the tables current without a person, derived from the catalogue.

* ``klaviyo_incremental_job``: the partitioned (merge) tables; ``klaviyo_replace_job``: the tables
  replaced whole (tags, coupons).
* ``klaviyo_incremental_schedule`` (hourly by default, ``OMNILOAD_SCHEDULE_CRON``): one run over
  today's partition and the ``OMNILOAD_LOOKBACK_DAYS`` days before it (a partition range run, which
  the assets' single-run backfill policy turns into one extraction), so late-arriving or
  eventually-consistent records are caught; merges make the repetition idempotent.
* ``klaviyo_replace_schedule`` (daily by default, ``OMNILOAD_REPLACE_CRON``): the replace tables.
* ``klaviyo_deletion_sweep_schedule`` (daily by default, ``OMNILOAD_SWEEP_CRON``): the deletion
  sweep (:mod:`omniload_assets.deletions`), one run at a time.
* The change sensor lives in :mod:`omniload_assets.sensors`.

A table whose endpoint is deferred in DuckDB (a daily quota exhausted, a long outage: see
:mod:`omniload_assets.warehouse.checkpoints`) is left out of the incremental and replace schedules'
runs until then; when every table of a schedule is, the tick is skipped, naming when one can run
again. The deferrals are read on a short read-only connection; a tick that cannot read them (a load
holds the file) requests every table, as without deferrals.

Everything ships STOPPED; ``OMNILOAD_AUTOMATION`` (``all`` or a list of names) starts them RUNNING.
No tick requests a run while a run of the same tables and partitions is still in flight.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

import dagster as dg

from omniload_assets import settings
from omniload_assets.assets import asset_key
from omniload_assets.deletions import build_sweep_job
from omniload_assets.klaviyo.catalog import TABLES, TableSpec
from omniload_assets.runner import RANGE_END_TAG, RANGE_START_TAG, partition_range_tags
from omniload_assets.settings import DELETION_SWEEP_SCHEDULE, INCREMENTAL_SCHEDULE, REPLACE_SCHEDULE
from omniload_assets.warehouse.checkpoints import Deferral, active_deferrals
from omniload_assets.warehouse.connection import WarehouseError
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager

INCREMENTAL_JOB = "klaviyo_incremental_job"
REPLACE_JOB = "klaviyo_replace_job"
#: Run tag naming the schedule or sensor that requested a run.
TRIGGER_TAG = "omniload/trigger"
PARTITION_TAG = "dagster/partition"

#: Statuses of a run that has yet to finish: queued, starting, running, suspended or being canceled.
IN_PROGRESS_STATUSES = (
    dg.DagsterRunStatus.QUEUED,  # a queued run will materialize its partitions: not asked twice
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.SUSPENDED,
    dg.DagsterRunStatus.CANCELING,
)

#: Longest wait for another process's DuckDB lock when a tick reads the deferrals.
DEFERRAL_LOCK_TIMEOUT_S = 5.0

Clock = Callable[[], datetime]

#: Asset key -> partition keys a run in flight is materializing; ``None`` means the whole asset.
InFlight = Mapping[dg.AssetKey, frozenset[str] | None]


class AssetJob(Protocol):
    """What ``dg.define_asset_job`` returns, as the schedules and the sensor use it (by name).

    Its class is not part of Dagster's public API, so it is not imported.
    """

    @property
    def name(self) -> str: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


def incremental_tables() -> list[TableSpec]:
    """The partitioned tables (merged by primary key)."""
    return [t for t in TABLES if t.partitioned]


def replace_tables() -> list[TableSpec]:
    """The tables replaced whole on every run: tags, coupons and the child tables (members, messages)."""
    return [t for t in TABLES if not t.partitioned]


@dataclass(frozen=True)
class KlaviyoJobs:
    """The two asset jobs and the deletion sweep the schedules and the sensor target."""

    incremental: AssetJob
    replace: AssetJob
    sweep: AssetJob

    def all(self) -> list[AssetJob]:
        return [self.incremental, self.replace, self.sweep]


def build_jobs() -> KlaviyoJobs:
    """One job for the partitioned tables, one for the replace tables (checks included), and the
    deletion sweep."""
    return KlaviyoJobs(
        incremental=dg.define_asset_job(
            INCREMENTAL_JOB,
            selection=dg.AssetSelection.assets(*(asset_key(t) for t in incremental_tables())),
            description="The partitioned Klaviyo tables (merge by primary key), with their checks.",
        ),
        replace=dg.define_asset_job(
            REPLACE_JOB,
            selection=dg.AssetSelection.assets(*(asset_key(t) for t in replace_tables())),
            description="The Klaviyo tables replaced whole on every run, with their checks.",
        ),
        sweep=build_sweep_job(),
    )


def is_running_by_default(name: str) -> bool:
    """Whether ``OMNILOAD_AUTOMATION`` switches the schedule or sensor ``name`` on."""
    names = settings.automation_names()
    return "*" in names or name.lower() in names


def schedule_status(name: str) -> dg.DefaultScheduleStatus:
    running = is_running_by_default(name)
    return dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED


def sensor_status(name: str) -> dg.DefaultSensorStatus:
    running = is_running_by_default(name)
    return dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED


def day_keys(first: date, last: date) -> frozenset[str]:
    """Daily partition keys ``first`` .. ``last`` inclusive."""
    return frozenset((first + timedelta(n)).isoformat() for n in range((last - first).days + 1))


def run_partitions(run: dg.DagsterRun) -> frozenset[str] | None:
    """The daily partitions a run covers: its partition, its range, or None (the whole asset)."""
    tags = run.tags
    if PARTITION_TAG in tags:
        return frozenset({tags[PARTITION_TAG]})
    if RANGE_START_TAG in tags and RANGE_END_TAG in tags:
        try:
            first, last = date.fromisoformat(tags[RANGE_START_TAG]), date.fromisoformat(tags[RANGE_END_TAG])
        except ValueError:
            return None
        return day_keys(first, last)
    return None


def runs_in_flight(
    instance: dg.DagsterInstance, keys: Iterable[dg.AssetKey]
) -> dict[dg.AssetKey, frozenset[str] | None]:
    """What the queued and running runs materialize, for the assets ``keys``.

    A run without an asset selection counts for the assets of its job when that is one of ours.
    """
    wanted = set(keys)
    job_keys = {
        INCREMENTAL_JOB: {asset_key(t) for t in incremental_tables()},
        REPLACE_JOB: {asset_key(t) for t in replace_tables()},
    }
    found: dict[dg.AssetKey, frozenset[str] | None] = {}
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(IN_PROGRESS_STATUSES))):
        selected = run.asset_selection if run.asset_selection is not None else job_keys.get(run.job_name)
        if not selected:
            continue
        partitions = run_partitions(run)
        for key in wanted & set(selected):
            before = found.get(key, frozenset())
            found[key] = None if before is None or partitions is None else before | partitions
    return found


def overlaps(in_flight: InFlight, key: dg.AssetKey, partitions: Iterable[str] | None) -> bool:
    """True when a run in flight materializes any of ``partitions`` (None: any) of ``key``."""
    if key not in in_flight:
        return False
    busy = in_flight[key]
    return busy is None or partitions is None or bool(busy & set(partitions))


def lookback_range(now: datetime, lookback_days: int, first_partition: date) -> tuple[date, date]:
    """``(first, last)`` UTC days a tick at ``now`` materializes: today and the lookback before it."""
    today = now.astimezone(UTC).date()
    return max(today - timedelta(days=lookback_days), first_partition), today


def read_deferrals(warehouse: KlaviyoDuckDBIOManager, now: datetime) -> dict[str, Deferral]:
    """Klaviyo table name -> its deferral still in force at ``now``, read on a short read-only
    connection (waiting at most ``DEFERRAL_LOCK_TIMEOUT_S`` for a lock); none without a database
    file. Raises :class:`WarehouseError` when DuckDB cannot be read."""
    reader = warehouse.reader(lock_timeout_s=min(warehouse.lock_timeout_s, DEFERRAL_LOCK_TIMEOUT_S))
    with reader.connect() as conn:
        return active_deferrals(conn, reader.schema, now) if conn is not None else {}


def describe_deferrals(deferred: Mapping[str, Deferral]) -> str:
    """``events until 2026-11-28 03:00 UTC (reason), ...``: the soonest over first."""
    ordered = sorted(deferred.items(), key=lambda item: (item[1].until, item[0]))
    return ", ".join(f"{name} {deferral.describe()}" for name, deferral in ordered)


def runnable_tables(
    context: dg.ScheduleEvaluationContext,
    warehouse: KlaviyoDuckDBIOManager,
    specs: Sequence[TableSpec],
    now: datetime,
) -> tuple[list[TableSpec], dict[str, Deferral]]:
    """The tables of ``specs`` a run may ask Klaviyo for at ``now``, and the deferrals of the others.

    When the deferrals cannot be read (a load holds the file), every table, with a warning.
    """
    try:
        deferrals = read_deferrals(warehouse, now)
    except WarehouseError as exc:
        context.log.warning(f"cannot read the deferrals from DuckDB this tick; requesting every table: {exc}")
        return list(specs), {}
    deferred = {s.name: deferrals[s.name] for s in specs if s.name in deferrals}
    if deferred:
        context.log.info(f"left out of this run: {describe_deferrals(deferred)}")
    return [s for s in specs if s.name not in deferred], deferred


def every_table_deferred(deferred: Mapping[str, Deferral]) -> dg.SkipReason:
    return dg.SkipReason(f"every table is deferred: {describe_deferrals(deferred)}")


def selection(specs: Sequence[TableSpec], deferred: Mapping[str, Deferral]) -> list[dg.AssetKey] | None:
    """The run's asset selection: the tables not deferred; None (the whole job) when none is."""
    return [asset_key(s) for s in specs] if deferred else None


def build_incremental_schedule(
    job: AssetJob,
    *,
    cron: str | None = None,
    lookback_days: int | None = None,
    clock: Clock = utc_now,
) -> dg.ScheduleDefinition:
    """Today's partition plus the lookback, in one partition range run per tick."""
    cron = settings.parse_cron("OMNILOAD_SCHEDULE_CRON", cron) if cron else settings.schedule_cron()
    lookback = settings.lookback_days() if lookback_days is None else lookback_days
    first_partition = settings.start_date()
    specs = incremental_tables()
    keys = [asset_key(t) for t in specs]

    @dg.schedule(
        name=INCREMENTAL_SCHEDULE,
        cron_schedule=cron,
        job_name=job.name,
        execution_timezone="UTC",
        default_status=schedule_status(INCREMENTAL_SCHEDULE),
        description=(
            f"Materializes today's partition of the {len(keys)} partitioned tables and the "
            f"{lookback} day(s) before it in one run ({cron}, UTC)."
        ),
    )
    def _schedule(
        context: dg.ScheduleEvaluationContext, klaviyo_duckdb: dg.ResourceParam[KlaviyoDuckDBIOManager]
    ) -> dg.RunRequest | dg.SkipReason:
        now = context.scheduled_execution_time or clock()
        first, last = lookback_range(now, lookback, first_partition)
        if last < first:
            return dg.SkipReason(f"{last} is before the first partition ({first_partition})")
        runnable, deferred = runnable_tables(context, klaviyo_duckdb, specs, now)
        if not runnable:
            return every_table_deferred(deferred)
        days = day_keys(first, last)
        wanted = [asset_key(t) for t in runnable]
        in_flight = runs_in_flight(context.instance, wanted)
        busy = sorted(k.to_user_string() for k in wanted if overlaps(in_flight, k, days))
        if busy:
            return dg.SkipReason(f"a run of {', '.join(busy)} over {first}..{last} is still in flight")
        return dg.RunRequest(
            run_key=f"{INCREMENTAL_SCHEDULE}:{first}..{last}@{now.astimezone(UTC).isoformat()}",
            tags={**partition_range_tags(first, last), TRIGGER_TAG: INCREMENTAL_SCHEDULE},
            asset_selection=selection(runnable, deferred),
        )

    return _schedule


def build_replace_schedule(
    job: AssetJob, *, cron: str | None = None, clock: Clock = utc_now
) -> dg.ScheduleDefinition:
    """The replace tables, whole, on their own cadence (daily by default)."""
    cron = settings.parse_cron("OMNILOAD_REPLACE_CRON", cron) if cron else settings.replace_cron()
    specs = replace_tables()

    @dg.schedule(
        name=REPLACE_SCHEDULE,
        cron_schedule=cron,
        job_name=job.name,
        execution_timezone="UTC",
        default_status=schedule_status(REPLACE_SCHEDULE),
        description=f"Replaces {', '.join(t.name for t in replace_tables())} whole ({cron}, UTC).",
    )
    def _schedule(
        context: dg.ScheduleEvaluationContext, klaviyo_duckdb: dg.ResourceParam[KlaviyoDuckDBIOManager]
    ) -> dg.RunRequest | dg.SkipReason:
        now = context.scheduled_execution_time or clock()
        runnable, deferred = runnable_tables(context, klaviyo_duckdb, specs, now)
        if not runnable:
            return every_table_deferred(deferred)
        wanted = [asset_key(t) for t in runnable]
        in_flight = runs_in_flight(context.instance, wanted)
        busy = sorted(k.to_user_string() for k in wanted if overlaps(in_flight, k, None))
        if busy:
            return dg.SkipReason(f"a run of {', '.join(busy)} is still in flight")
        return dg.RunRequest(
            run_key=f"{REPLACE_SCHEDULE}@{now.astimezone(UTC).isoformat()}",
            tags={TRIGGER_TAG: REPLACE_SCHEDULE},
            asset_selection=selection(runnable, deferred),
        )

    return _schedule


def build_sweep_schedule(
    job: AssetJob, *, cron: str | None = None, clock: Clock = utc_now
) -> dg.ScheduleDefinition:
    """The deletion sweep, daily by default; a tick while a sweep is in flight is skipped."""
    cron = settings.parse_cron("OMNILOAD_SWEEP_CRON", cron) if cron else settings.sweep_cron()
    tables = settings.sweep_tables()

    @dg.schedule(
        name=DELETION_SWEEP_SCHEDULE,
        cron_schedule=cron,
        job_name=job.name,
        execution_timezone="UTC",
        default_status=schedule_status(DELETION_SWEEP_SCHEDULE),
        description=f"Marks the rows of {', '.join(tables)} that Klaviyo no longer lists ({cron}, UTC).",
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        now = context.scheduled_execution_time or clock()
        in_flight = context.instance.get_runs(
            filters=dg.RunsFilter(job_name=job.name, statuses=list(IN_PROGRESS_STATUSES)), limit=1
        )
        if in_flight:
            return dg.SkipReason(f"the deletion sweep {in_flight[0].run_id} is still in flight")
        return dg.RunRequest(
            run_key=f"{DELETION_SWEEP_SCHEDULE}@{now.astimezone(UTC).isoformat()}",
            tags={TRIGGER_TAG: DELETION_SWEEP_SCHEDULE},
        )

    return _schedule


def build_schedules(jobs: KlaviyoJobs) -> Sequence[dg.ScheduleDefinition]:
    """The three schedules, configured from the environment."""
    return [
        build_incremental_schedule(jobs.incremental),
        build_replace_schedule(jobs.replace),
        build_sweep_schedule(jobs.sweep),
    ]
