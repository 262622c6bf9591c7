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
* Per table (``automation.per_table``): ``schedule: false`` leaves it out of the shared schedules;
  a ``cron`` or ``lookback_days`` of its own moves it to its own schedule,
  ``klaviyo_<asset_name>_schedule``, whose ticks run its job with that table alone selected (the
  same ticks as the shared schedules': in-flight skip, deferrals). Such a schedule starts RUNNING
  with the shared schedule of its kind.
* The change sensor lives in :mod:`omniload_assets.sensors`.

A table whose endpoint is deferred in DuckDB (a daily quota exhausted, a long outage: see
:mod:`omniload_assets.warehouse.checkpoints`) is left out of the incremental and replace schedules'
runs until then; when every table of a schedule is, the tick is skipped, naming when one can run
again. The deferrals are read on a short read-only connection; a tick that cannot read them (a load
holds the file) requests every table, as without deferrals.

Everything ships STOPPED; ``OMNILOAD_AUTOMATION`` (``all`` or a list of names) starts them RUNNING.
No tick requests a run while a run of the same tables and partitions is still in flight.

Every builder takes a :class:`~omniload_assets.layout.Layout` (default: this code location's): the
tables it covers, its asset keys and names (another key prefix derives other job, schedule and
resource names), and its cron, lookback and RUNNING choices; a job or schedule with no table to
cover is left out.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

import dagster as dg

from omniload_assets import settings
from omniload_assets.assets import IO_MANAGER_KEY
from omniload_assets.deletions import build_sweep_job
from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.layout import STEM, Layout
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


def incremental_tables(layout: Layout | None = None) -> list[TableSpec]:
    """The partitioned tables (merged by primary key) the layout's automation covers."""
    return (layout or Layout()).incremental_tables()


def replace_tables(layout: Layout | None = None) -> list[TableSpec]:
    """The tables replaced whole on every run: tags, coupons and the child tables (members, messages)."""
    return (layout or Layout()).replace_tables()


@dataclass(frozen=True)
class KlaviyoJobs:
    """The two asset jobs and the deletion sweep the schedules and the sensor target; None where
    the layout has no table for one."""

    incremental: AssetJob | None
    replace: AssetJob | None
    sweep: AssetJob | None

    def all(self) -> list[AssetJob]:
        return [job for job in (self.incremental, self.replace, self.sweep) if job is not None]


def _asset_job(name: str, keys: Sequence[dg.AssetKey], description: str) -> AssetJob | None:
    if not keys:
        return None
    return dg.define_asset_job(name, selection=dg.AssetSelection.assets(*keys), description=description)


def build_jobs(layout: Layout | None = None) -> KlaviyoJobs:
    """One job for the partitioned tables, one for the replace tables (checks included), and the
    deletion sweep."""
    layout = layout or Layout()
    sweep_tables = layout.sweep_tables()
    return KlaviyoJobs(
        incremental=_asset_job(
            layout.name(INCREMENTAL_JOB),
            [layout.key(t) for t in layout.incremental_tables()],
            "The partitioned Klaviyo tables (merge by primary key), with their checks.",
        ),
        replace=_asset_job(
            layout.name(REPLACE_JOB),
            [layout.key(t) for t in layout.replace_tables()],
            "The Klaviyo tables replaced whole on every run, with their checks.",
        ),
        sweep=build_sweep_job(sweep_tables, layout) if sweep_tables else None,
    )


def is_running_by_default(name: str, layout: Layout | None = None) -> bool:
    """Whether ``OMNILOAD_AUTOMATION`` (or the layout's choice) switches the schedule or sensor of
    default name ``name`` on."""
    return (layout or Layout()).is_running(name)


def schedule_status(name: str, layout: Layout | None = None) -> dg.DefaultScheduleStatus:
    running = is_running_by_default(name, layout)
    return dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED


def sensor_status(name: str, layout: Layout | None = None) -> dg.DefaultSensorStatus:
    running = is_running_by_default(name, layout)
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
    instance: dg.DagsterInstance, keys: Iterable[dg.AssetKey], layout: Layout | None = None
) -> dict[dg.AssetKey, frozenset[str] | None]:
    """What the queued and running runs materialize, for the assets ``keys``.

    A run without an asset selection counts for the assets of its job when that is one of the layout's.
    """
    layout = layout or Layout()
    wanted = set(keys)
    job_keys = {
        layout.name(INCREMENTAL_JOB): {layout.key(t) for t in layout.incremental_tables()},
        layout.name(REPLACE_JOB): {layout.key(t) for t in layout.replace_tables()},
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


def selection(
    specs: Sequence[TableSpec],
    deferred: Mapping[str, Deferral],
    layout: Layout | None = None,
    job_specs: Sequence[TableSpec] | None = None,
) -> list[dg.AssetKey] | None:
    """The run's asset selection: the tables ``specs`` (those not deferred); None (the whole job)
    when none is deferred and ``specs`` are all the job's tables (``job_specs``, default: ``specs``)."""
    whole = job_specs is None or {s.name for s in specs} == {s.name for s in job_specs}
    return [(layout or Layout()).key(s) for s in specs] if deferred or not whole else None


def _cron(name: str, given: str | None, chosen: str | None, from_env: Callable[[], str]) -> str:
    """A schedule's cron: ``given`` (checked, naming ``name``), else the layout's, else the variable's."""
    if given:
        return settings.parse_cron(name, given)
    return chosen or from_env()


def _lookback(given: int | None, layout: Layout) -> int:
    """Days of lookback: ``given``, else the layout's, else ``OMNILOAD_LOOKBACK_DAYS``."""
    if given is not None:
        return given
    chosen = layout.automation.lookback_days
    return settings.lookback_days() if chosen is None else chosen


def _busy_skip(
    context: dg.ScheduleEvaluationContext,
    wanted: Sequence[dg.AssetKey],
    days: frozenset[str] | None,
    layout: Layout,
) -> list[str]:
    """The user strings of the ``wanted`` assets a run in flight already materializes (over ``days``)."""
    in_flight = runs_in_flight(context.instance, wanted, layout)
    return sorted(k.to_user_string() for k in wanted if overlaps(in_flight, k, days))


@dataclass(frozen=True)
class ScheduleScope:
    """What one schedule's ticks request: its name, its tables, and the tables of its job."""

    name: str
    specs: tuple[TableSpec, ...]
    #: A run of these (all of its job's tables) goes without an asset selection; empty: always
    #: select (a table's own schedule).
    job_specs: tuple[TableSpec, ...]
    layout: Layout
    clock: Clock = utc_now


def incremental_tick(
    context: dg.ScheduleEvaluationContext, scope: ScheduleScope, lookback: int, first_partition: date
) -> dg.RunRequest | dg.SkipReason:
    """One tick of an incremental schedule: its tables not deferred, over today and the lookback, in
    one partition range run; skipped while a run of them over those days is in flight."""
    layout, name = scope.layout, scope.name
    now = context.scheduled_execution_time or scope.clock()
    first, last = lookback_range(now, lookback, first_partition)
    if last < first:
        return dg.SkipReason(f"{last} is before the first partition ({first_partition})")
    warehouse = getattr(context.resources, layout.name(IO_MANAGER_KEY))
    runnable, deferred = runnable_tables(context, warehouse, scope.specs, now)
    if not runnable:
        return every_table_deferred(deferred)
    days = day_keys(first, last)
    busy = _busy_skip(context, [layout.key(t) for t in runnable], days, layout)
    if busy:
        return dg.SkipReason(f"a run of {', '.join(busy)} over {first}..{last} is still in flight")
    return dg.RunRequest(
        run_key=f"{name}:{first}..{last}@{now.astimezone(UTC).isoformat()}",
        tags={**partition_range_tags(first, last), TRIGGER_TAG: name},
        asset_selection=selection(runnable, deferred, layout, scope.job_specs),
    )


def replace_tick(
    context: dg.ScheduleEvaluationContext, scope: ScheduleScope
) -> dg.RunRequest | dg.SkipReason:
    """One tick of a replace schedule: its tables not deferred, whole; skipped while a run of them
    is in flight."""
    layout, name = scope.layout, scope.name
    now = context.scheduled_execution_time or scope.clock()
    warehouse = getattr(context.resources, layout.name(IO_MANAGER_KEY))
    runnable, deferred = runnable_tables(context, warehouse, scope.specs, now)
    if not runnable:
        return every_table_deferred(deferred)
    busy = _busy_skip(context, [layout.key(t) for t in runnable], None, layout)
    if busy:
        return dg.SkipReason(f"a run of {', '.join(busy)} is still in flight")
    return dg.RunRequest(
        run_key=f"{name}@{now.astimezone(UTC).isoformat()}",
        tags={TRIGGER_TAG: name},
        asset_selection=selection(runnable, deferred, layout, scope.job_specs),
    )


Tick = Callable[[dg.ScheduleEvaluationContext], "dg.RunRequest | dg.SkipReason"]


def _schedule_def(
    job: AssetJob, scope: ScheduleScope, cron: str, description: str, kind: str, tick: Tick
) -> dg.ScheduleDefinition:
    """A schedule of ``job`` named ``scope.name`` whose ticks are ``tick``; ``kind`` (the shared
    schedule's default name) says whether ``OMNILOAD_AUTOMATION`` starts it RUNNING."""

    @dg.schedule(
        name=scope.name,
        cron_schedule=cron,
        job_name=job.name,
        execution_timezone="UTC",
        default_status=schedule_status(kind, scope.layout),
        required_resource_keys={scope.layout.name(IO_MANAGER_KEY)},
        description=description,
    )
    def _schedule(
        context: dg.ScheduleEvaluationContext, **_resources: object
    ) -> dg.RunRequest | dg.SkipReason:
        return tick(context)

    return _schedule


def _incremental_schedule_def(
    job: AssetJob, scope: ScheduleScope, cron: str, lookback: int, description: str
) -> dg.ScheduleDefinition:
    """A schedule of ``job`` whose ticks are :func:`incremental_tick` over ``scope``."""
    first_partition = scope.layout.first_partition()

    def tick(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        return incremental_tick(context, scope, lookback, first_partition)

    return _schedule_def(job, scope, cron, description, INCREMENTAL_SCHEDULE, tick)


def _replace_schedule_def(
    job: AssetJob, scope: ScheduleScope, cron: str, description: str
) -> dg.ScheduleDefinition:
    """A schedule of ``job`` whose ticks are :func:`replace_tick` over ``scope``."""
    return _schedule_def(
        job, scope, cron, description, REPLACE_SCHEDULE, lambda context: replace_tick(context, scope)
    )


def build_incremental_schedule(
    job: AssetJob,
    *,
    cron: str | None = None,
    lookback_days: int | None = None,
    clock: Clock = utc_now,
    layout: Layout | None = None,
) -> dg.ScheduleDefinition:
    """Today's partition plus the lookback, in one partition range run per tick, over the partitioned
    tables that have no schedule of their own and are not left out of it."""
    layout = layout or Layout()
    cron = _cron("OMNILOAD_SCHEDULE_CRON", cron, layout.automation.incremental_cron, settings.schedule_cron)
    lookback = _lookback(lookback_days, layout)
    specs = tuple(layout.shared_incremental_tables())
    scope = ScheduleScope(
        layout.name(INCREMENTAL_SCHEDULE), specs, tuple(layout.incremental_tables()), layout, clock
    )
    description = (
        f"Materializes today's partition of the {len(specs)} partitioned tables and the "
        f"{lookback} day(s) before it in one run ({cron}, UTC)."
    )
    return _incremental_schedule_def(job, scope, cron, lookback, description)


def build_replace_schedule(
    job: AssetJob, *, cron: str | None = None, clock: Clock = utc_now, layout: Layout | None = None
) -> dg.ScheduleDefinition:
    """The replace tables, whole, on their own cadence (daily by default)."""
    layout = layout or Layout()
    cron = _cron("OMNILOAD_REPLACE_CRON", cron, layout.automation.replace_cron, settings.replace_cron)
    specs = tuple(layout.shared_replace_tables())
    scope = ScheduleScope(layout.name(REPLACE_SCHEDULE), specs, tuple(layout.replace_tables()), layout, clock)
    description = f"Replaces {', '.join(t.name for t in specs)} whole ({cron}, UTC)."
    return _replace_schedule_def(job, scope, cron, description)


def table_schedule_name(spec: TableSpec, layout: Layout | None = None) -> str:
    """The name of a table's own schedule: ``klaviyo_<asset_name>_schedule`` under the layout."""
    return (layout or Layout()).name(f"{STEM}_{spec.asset_name}_schedule")


def build_table_schedule(
    jobs: KlaviyoJobs, spec: TableSpec, *, clock: Clock = utc_now, layout: Layout | None = None
) -> dg.ScheduleDefinition | None:
    """The schedule of one table with a cron or lookback of its own: the incremental job over today
    and its lookback, or the replace job, with that table alone selected; None without that job."""
    layout = layout or Layout()
    own = layout.table_automation(spec)
    name = table_schedule_name(spec, layout)
    if spec.partitioned and jobs.incremental is not None:
        cron = own.cron or layout.automation.incremental_cron or settings.schedule_cron()
        lookback = _lookback(own.lookback_days, layout)
        scope = ScheduleScope(name, (spec,), (), layout, clock)
        description = (
            f"Materializes today's partition of {spec.name} and the {lookback} day(s) before it "
            f"in one run ({cron}, UTC)."
        )
        return _incremental_schedule_def(jobs.incremental, scope, cron, lookback, description)
    if not spec.partitioned and jobs.replace is not None and own.cron is not None:
        scope = ScheduleScope(name, (spec,), (), layout, clock)
        return _replace_schedule_def(
            jobs.replace, scope, own.cron, f"Replaces {spec.name} whole ({own.cron}, UTC)."
        )
    return None


def build_sweep_schedule(
    job: AssetJob, *, cron: str | None = None, clock: Clock = utc_now, layout: Layout | None = None
) -> dg.ScheduleDefinition:
    """The deletion sweep, daily by default; a tick while a sweep is in flight is skipped."""
    layout = layout or Layout()
    cron = _cron("OMNILOAD_SWEEP_CRON", cron, layout.automation.sweep_cron, settings.sweep_cron)
    tables, name = layout.sweep_tables(), layout.name(DELETION_SWEEP_SCHEDULE)

    @dg.schedule(
        name=name,
        cron_schedule=cron,
        job_name=job.name,
        execution_timezone="UTC",
        default_status=schedule_status(DELETION_SWEEP_SCHEDULE, layout),
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
            run_key=f"{name}@{now.astimezone(UTC).isoformat()}",
            tags={TRIGGER_TAG: name},
        )

    return _schedule


def build_schedules(jobs: KlaviyoJobs, layout: Layout | None = None) -> Sequence[dg.ScheduleDefinition]:
    """The schedules of the layout's jobs (three by default), configured from the layout and the
    environment: the shared incremental and replace ones over the tables they keep (none when the
    layout turns schedules off), one per table with a cron or lookback of its own, the sweep's."""
    layout = layout or Layout()
    schedules: list[dg.ScheduleDefinition] = []
    if jobs.incremental is not None and layout.shared_incremental_tables():
        schedules.append(build_incremental_schedule(jobs.incremental, layout=layout))
    if jobs.replace is not None and layout.shared_replace_tables():
        schedules.append(build_replace_schedule(jobs.replace, layout=layout))
    for spec in layout.own_schedule_tables():
        own = build_table_schedule(jobs, spec, layout=layout)
        schedules += [own] if own is not None else []
    if jobs.sweep is not None:
        schedules.append(build_sweep_schedule(jobs.sweep, layout=layout))
    return schedules
