"""Schedules and the change sensor, against the simulator, a real DuckDB file and a real instance."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from omniload_assets.assets import asset_key
from omniload_assets.automation import (
    INCREMENTAL_JOB,
    REPLACE_JOB,
    TRIGGER_TAG,
    build_incremental_schedule,
    build_replace_schedule,
    build_sweep_schedule,
    replace_tables,
    runs_in_flight,
)
from omniload_assets.deletions import SWEEP_JOB
from omniload_assets.klaviyo.catalog import TABLES, get_table
from omniload_assets.runner import RANGE_END_TAG, RANGE_START_TAG
from omniload_assets.sensors import dump_marks, load_marks
from omniload_assets.settings import (
    CHANGE_SENSOR,
    DELETION_SWEEP_SCHEDULE,
    INCREMENTAL_SCHEDULE,
    REPLACE_SCHEDULE,
    SettingsError,
)
from omniload_assets.warehouse.reads import WarehouseReader
from omniload_assets_tests.conftest import SIM_END, assert_tables_match_simulator, table_ids
from omniload_assets_tests.simulator import KlaviyoSimulator

#: A mix of every way the sensor asks: sort+filter (GE, GT-only, GT/LT), filter variants, full listing.
WATCHED = ("events", "profiles", "campaigns", "lists", "metrics", "catalog-items")
LAST_DAY = (SIM_END - timedelta(days=1)).date()


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    sensor = defs.resolve_sensor_def(CHANGE_SENSOR)
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources)
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def requested(result: dg.SensorResult) -> dict[str, set[str]]:
    """Partition key -> the tables its run request selects."""
    out: dict[str, set[str]] = {}
    for request in result.run_requests or []:
        assert request.partition_key is not None
        assert request.partition_key not in out, "one run request per partition"
        out[request.partition_key] = {k.path[-1] for k in request.asset_selection or []}
    return out


def materialize_last_day(defs: dg.Definitions, instance: dg.DagsterInstance, tables: tuple[str, ...]) -> None:
    """Land the simulator's last day: the newest keys, so DuckDB's high-water marks are current."""
    assets = [defs.get_assets_def(asset_key(get_table(t))) for t in tables]
    result = dg.materialize(
        assets, partition_key=LAST_DAY.isoformat(), instance=instance, resources=defs.resources
    )
    assert result.success


def run_request_now(
    defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest
) -> dg.ExecuteInProcessResult:
    """Execute a run request of the sensor as the run it asks for: its job, partition and assets."""
    return defs.resolve_job_def(INCREMENTAL_JOB).execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        asset_selection=list(request.asset_selection or []),
        tags=request.tags,
    )


def add_run_in_flight(instance: dg.DagsterInstance, table: str, tags: dict[str, str]) -> dg.DagsterRun:
    run = dg.DagsterRun(
        job_name=INCREMENTAL_JOB,
        status=dg.DagsterRunStatus.STARTED,
        asset_selection=frozenset({asset_key(get_table(table))}),
        tags=tags,
    )
    instance.add_run(run)
    return run


# -- definitions ---------------------------------------------------------------------------------


def test_definitions_hold_jobs_schedules_and_a_stopped_sensor(defs: dg.Definitions) -> None:
    incremental = defs.resolve_job_def(INCREMENTAL_JOB)
    replace = defs.resolve_job_def(REPLACE_JOB)
    assert incremental.asset_layer.executable_asset_keys == {asset_key(t) for t in TABLES if t.partitioned}
    # Tags and coupons, and the child tables (members, messages), which are replaced whole too.
    assert replace.asset_layer.executable_asset_keys == {asset_key(t) for t in TABLES if not t.partitioned}
    schedules = {s.name: s for s in defs.schedules or []}
    assert set(schedules) == {INCREMENTAL_SCHEDULE, REPLACE_SCHEDULE, DELETION_SWEEP_SCHEDULE}
    assert schedules[INCREMENTAL_SCHEDULE].cron_schedule == "0 * * * *"
    assert schedules[REPLACE_SCHEDULE].cron_schedule == "0 3 * * *"
    assert schedules[DELETION_SWEEP_SCHEDULE].cron_schedule == "0 4 * * *"
    assert schedules[INCREMENTAL_SCHEDULE].job_name == INCREMENTAL_JOB
    assert schedules[DELETION_SWEEP_SCHEDULE].job_name == SWEEP_JOB
    sensor = defs.resolve_sensor_def(CHANGE_SENSOR)
    assert sensor.minimum_interval_seconds == 300
    assert all(s.default_status == dg.DefaultScheduleStatus.STOPPED for s in schedules.values())
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    # Each asset sits in its endpoint's pool, so a pool limit of 1 keeps runs within rate limits.
    for spec in TABLES:
        node = defs.get_assets_def(asset_key(spec)).op
        assert node.pool == f"klaviyo_{spec.asset_name}"
    # The sweep's op of a table shares that pool: the sweep never shares an endpoint's rate limit.
    sweep = defs.resolve_job_def(SWEEP_JOB)
    swept = {t.asset_name for t in TABLES if t.strategy == "merge" and t.name != "events"}
    assert {n.name for n in sweep.nodes} == {f"sweep_{name}" for name in swept}
    assert all(n.definition.pool == f"klaviyo_{n.name.removeprefix('sweep_')}" for n in sweep.nodes)


def test_the_automation_setting_switches_them_on(sim_env, monkeypatch: pytest.MonkeyPatch) -> None:
    from omniload_assets.definitions import build_definitions

    monkeypatch.setenv("OMNILOAD_AUTOMATION", f"{CHANGE_SENSOR}, {REPLACE_SCHEDULE}")
    monkeypatch.setenv("OMNILOAD_SCHEDULE_CRON", "*/15 * * * *")
    monkeypatch.setenv("OMNILOAD_SENSOR_INTERVAL", "60")
    defs = build_definitions()
    schedules = {s.name: s for s in defs.schedules or []}
    assert schedules[REPLACE_SCHEDULE].default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedules[INCREMENTAL_SCHEDULE].default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedules[INCREMENTAL_SCHEDULE].cron_schedule == "*/15 * * * *"
    sensor = defs.resolve_sensor_def(CHANGE_SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 60

    monkeypatch.setenv("OMNILOAD_AUTOMATION", "all")
    defs = build_definitions()
    assert all(s.default_status == dg.DefaultScheduleStatus.RUNNING for s in defs.schedules or [])
    # What `dagster definitions validate` checks: the code location loads, targets resolve.
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert {s.name for s in repository.schedule_defs} == {
        INCREMENTAL_SCHEDULE,
        REPLACE_SCHEDULE,
        DELETION_SWEEP_SCHEDULE,
    }
    assert {s.name for s in repository.sensor_defs} == {CHANGE_SENSOR}

    monkeypatch.setenv("OMNILOAD_SCHEDULE_CRON", "every hour")
    with pytest.raises(ValueError, match="OMNILOAD_SCHEDULE_CRON"):
        build_definitions()


# -- schedules -----------------------------------------------------------------------------------


def evaluate_schedule(
    defs: dg.Definitions, instance: dg.DagsterInstance, name: str, at: datetime
) -> list[dg.RunRequest]:
    schedule = next(s for s in defs.schedules or [] if s.name == name)
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=at, resources=defs.resources
    ) as context:
        data = schedule.evaluate_tick(context)
    return list(data.run_requests or [])


def test_incremental_schedule_covers_today_and_the_lookback(
    defs, simulator, db_path, persistent_instance, instance
) -> None:
    at = datetime(2024, 1, 10, 7, 0, tzinfo=UTC)
    (request,) = evaluate_schedule(defs, persistent_instance, INCREMENTAL_SCHEDULE, at)
    assert request.tags[RANGE_START_TAG] == "2024-01-07"
    assert request.tags[RANGE_END_TAG] == "2024-01-10"
    assert request.tags[TRIGGER_TAG] == INCREMENTAL_SCHEDULE
    assert request.partition_key is None  # one range run, not one run per day
    # The next tick is a new run (its own run key); the same tick again is the same run.
    (later,) = evaluate_schedule(defs, persistent_instance, INCREMENTAL_SCHEDULE, at + timedelta(hours=1))
    assert later.run_key != request.run_key
    (again,) = evaluate_schedule(defs, persistent_instance, INCREMENTAL_SCHEDULE, at)
    assert again.run_key == request.run_key

    # Running what the tick requested (its job, range tags) lands exactly today and the three days
    # before it, in one run.
    result = defs.resolve_job_def(INCREMENTAL_JOB).execute_in_process(
        instance=instance, tags=request.tags, asset_selection=[asset_key(get_table("events"))]
    )
    assert result.success
    first = datetime(2024, 1, 7, tzinfo=UTC)
    assert set(table_ids(db_path, "events")) == simulator.ids("events", first, first + timedelta(days=4))


def test_schedule_lookback_is_configurable_and_clamped_to_the_start_date(
    sim_env, persistent_instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omniload_assets.definitions import build_definitions

    monkeypatch.setenv("OMNILOAD_LOOKBACK_DAYS", "1")
    defs = build_definitions()
    (request,) = evaluate_schedule(
        defs, persistent_instance, INCREMENTAL_SCHEDULE, datetime(2024, 1, 10, 23, 0, tzinfo=UTC)
    )
    assert (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]) == ("2024-01-09", "2024-01-10")
    monkeypatch.setenv("OMNILOAD_LOOKBACK_DAYS", "3")
    defs = build_definitions()
    (request,) = evaluate_schedule(
        defs, persistent_instance, INCREMENTAL_SCHEDULE, datetime(2024, 1, 2, 0, 0, tzinfo=UTC)
    )
    assert (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]) == ("2024-01-01", "2024-01-02")


def test_schedules_skip_while_a_run_of_their_partitions_is_in_flight(defs, persistent_instance) -> None:
    at = datetime(2024, 1, 10, 7, 0, tzinfo=UTC)
    run = add_run_in_flight(
        persistent_instance, "profiles", {RANGE_START_TAG: "2024-01-08", RANGE_END_TAG: "2024-01-08"}
    )
    assert evaluate_schedule(defs, persistent_instance, INCREMENTAL_SCHEDULE, at) == []
    # A run of other days does not hold the schedule back.
    persistent_instance.report_run_canceled(run)
    add_run_in_flight(persistent_instance, "profiles", {"dagster/partition": "2024-01-05"})
    assert len(evaluate_schedule(defs, persistent_instance, INCREMENTAL_SCHEDULE, at)) == 1


def test_runs_in_flight_are_those_still_materializing(persistent_instance) -> None:
    key = asset_key(get_table("profiles"))
    for status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
        persistent_instance.add_run(
            dg.DagsterRun(job_name=INCREMENTAL_JOB, status=status, asset_selection=frozenset({key}))
        )
    assert runs_in_flight(persistent_instance, [key]) == {}
    for status, day in (
        (dg.DagsterRunStatus.STARTING, "2024-01-02"),
        (dg.DagsterRunStatus.CANCELING, "2024-01-03"),
        (dg.DagsterRunStatus.NOT_STARTED, "2024-01-04"),  # created, not yet queued or launched
    ):
        persistent_instance.add_run(
            dg.DagsterRun(
                job_name=INCREMENTAL_JOB,
                status=status,
                asset_selection=frozenset({key}),
                tags={"dagster/partition": day},
            )
        )
    days = frozenset({"2024-01-02", "2024-01-03", "2024-01-04"})
    assert runs_in_flight(persistent_instance, [key]) == {key: days}


def test_a_schedule_refuses_what_is_no_cron(sim_env) -> None:
    job = dg.define_asset_job(INCREMENTAL_JOB)
    with pytest.raises(SettingsError, match="OMNILOAD_SCHEDULE_CRON='every hour' is not a cron"):
        build_incremental_schedule(job, cron="every hour")
    with pytest.raises(SettingsError, match="OMNILOAD_REPLACE_CRON"):
        build_replace_schedule(job, cron="61 * * * *")
    assert build_replace_schedule(job, cron="@daily").cron_schedule == "@daily"
    with pytest.raises(SettingsError, match="OMNILOAD_SWEEP_CRON"):
        build_sweep_schedule(job, cron="daily")


def test_the_sweep_schedule_runs_one_sweep_at_a_time(sim_env, persistent_instance, monkeypatch) -> None:
    from omniload_assets.definitions import build_definitions

    monkeypatch.setenv("OMNILOAD_SWEEP_CRON", "30 2 * * *")
    monkeypatch.setenv("OMNILOAD_AUTOMATION", DELETION_SWEEP_SCHEDULE)
    defs = build_definitions()
    schedule = next(s for s in defs.schedules or [] if s.name == DELETION_SWEEP_SCHEDULE)
    assert schedule.cron_schedule == "30 2 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    at = datetime(2024, 1, 10, 2, 30, tzinfo=UTC)
    (request,) = evaluate_schedule(defs, persistent_instance, DELETION_SWEEP_SCHEDULE, at)
    assert request.tags[TRIGGER_TAG] == DELETION_SWEEP_SCHEDULE
    # A sweep still in flight holds the next one back; a run of another job does not.
    add_run_in_flight(persistent_instance, "profiles", {})
    assert len(evaluate_schedule(defs, persistent_instance, DELETION_SWEEP_SCHEDULE, at)) == 1
    sweep = dg.DagsterRun(job_name=SWEEP_JOB, status=dg.DagsterRunStatus.STARTED)
    persistent_instance.add_run(sweep)
    assert evaluate_schedule(defs, persistent_instance, DELETION_SWEEP_SCHEDULE, at) == []
    persistent_instance.report_run_canceled(sweep)
    assert len(evaluate_schedule(defs, persistent_instance, DELETION_SWEEP_SCHEDULE, at)) == 1


def test_replace_schedule_refreshes_the_replace_tables(
    defs, simulator, db_path, persistent_instance, instance
) -> None:
    (request,) = evaluate_schedule(
        defs, persistent_instance, REPLACE_SCHEDULE, datetime(2024, 1, 10, 3, tzinfo=UTC)
    )
    assert request.partition_key is None and RANGE_START_TAG not in request.tags
    # The child tables read their parents' ids from DuckDB: the incremental job loads those first.
    parents = defs.resolve_job_def(INCREMENTAL_JOB).execute_in_process(
        instance=instance, tags={RANGE_START_TAG: "2024-01-01", RANGE_END_TAG: SIM_END.date().isoformat()}
    )
    assert parents.success
    job = defs.resolve_job_def(REPLACE_JOB)
    result = job.execute_in_process(instance=instance, tags=request.tags)
    assert result.success
    assert_tables_match_simulator(db_path, simulator, replace_tables())
    # The job runs every table's checks right after it is written.
    checked = {(e.asset_key.path[-1], e.check_name) for e in result.get_asset_check_evaluations()}
    assert checked == {
        (s.asset_name, c) for s in replace_tables() for c in ("primary_key_unique", "primary_key_not_null")
    }


# -- the change sensor ---------------------------------------------------------------------------


def test_sensor_requests_exactly_the_changed_partitions_once(
    defs, simulator: KlaviyoSimulator, db_path: Path, persistent_instance, instance
) -> None:
    materialize_last_day(defs, instance, WATCHED)

    # First tick: marks come from DuckDB; nothing changed, so nothing is requested.
    simulator.reset_stats()
    first = tick(defs, persistent_instance, None)
    assert requested(first) == {}
    marks = load_marks(first.cursor)
    assert set(marks) == set(WATCHED)  # tables never materialized have no mark
    assert marks == WarehouseReader(str(db_path), "klaviyo").newest_keys([get_table(t) for t in WATCHED])
    # Cheap: one request per table (per filter variant) where the API sorts, one listing elsewhere.
    stats = simulator.stats
    for name in ("events", "profiles", "lists"):
        assert stats.requests[get_table(name).path] == 1, name
    assert stats.requests[get_table("campaigns").path] == 2  # archived and not
    assert stats.requests[get_table("metrics").path] == 1
    assert sum(stats.requests.values()) <= 8

    # Changes on days 12, 13, 14 and 15 (none on 13 or 14 for profiles).
    simulator.mutate("profiles", updated=3, added=2, at=datetime(2024, 1, 12, 10, tzinfo=UTC))
    simulator.mutate("profiles", updated=1, added=0, at=datetime(2024, 1, 15, 9, tzinfo=UTC))
    simulator.mutate("campaigns", updated=1, added=1, at=datetime(2024, 1, 13, 11, tzinfo=UTC))
    simulator.mutate("metrics", updated=1, added=1, at=datetime(2024, 1, 13, 8, tzinfo=UTC))
    simulator.mutate("events", updated=0, added=3, at=datetime(2024, 1, 14, 6, tzinfo=UTC))
    simulator.mutate("catalog-items", updated=2, added=0, at=datetime(2024, 1, 12, 1, tzinfo=UTC))
    second = tick(defs, persistent_instance, first.cursor)
    assert requested(second) == {
        "2024-01-12": {"profiles", "catalog_items"},
        "2024-01-13": {"campaigns", "metrics"},
        "2024-01-14": {"events"},
        "2024-01-15": {"profiles"},
    }
    assert all(r.tags[TRIGGER_TAG] == CHANGE_SENSOR for r in second.run_requests or [])
    advanced = load_marks(second.cursor)
    assert advanced["profiles"] == datetime(2024, 1, 15, 9, tzinfo=UTC)
    assert advanced["events"] == datetime(2024, 1, 14, 6, tzinfo=UTC)
    assert advanced["metrics"] == datetime(2024, 1, 13, 8, tzinfo=UTC)
    assert advanced["lists"] == marks["lists"]

    # Second tick on the advanced cursor: nothing new, nothing repeated.
    assert requested(tick(defs, persistent_instance, second.cursor)) == {}

    # Running the requests brings DuckDB up to date: the materialized marks count even on the
    # first tick's (now stale) cursor, and a sensor starting afresh finds nothing to do either.
    for request in second.run_requests or []:
        assert run_request_now(defs, instance, request).success
    assert requested(tick(defs, persistent_instance, first.cursor)) == {}
    assert requested(tick(defs, persistent_instance, None)) == {}
    day = datetime(2024, 1, 12, tzinfo=UTC)
    assert simulator.ids("profiles", day, day + timedelta(days=1)) <= set(table_ids(db_path, "profiles"))


def test_sensor_defers_a_table_whose_changed_partition_is_in_flight(
    defs, simulator, persistent_instance, instance
) -> None:
    materialize_last_day(defs, instance, ("profiles", "lists"))
    first = tick(defs, persistent_instance, None)
    simulator.mutate("profiles", updated=2, added=0, at=datetime(2024, 1, 12, 10, tzinfo=UTC))
    simulator.mutate("lists", updated=1, added=0, at=datetime(2024, 1, 12, 11, tzinfo=UTC))
    run = add_run_in_flight(persistent_instance, "profiles", {"dagster/partition": "2024-01-12"})

    held = tick(defs, persistent_instance, first.cursor)
    assert requested(held) == {"2024-01-12": {"lists"}}
    # The profiles mark stays put, so the change is requested once the run in flight is over.
    assert load_marks(held.cursor)["profiles"] == load_marks(first.cursor)["profiles"]
    assert requested(tick(defs, persistent_instance, held.cursor)) == {}
    persistent_instance.report_run_failed(run)
    assert requested(tick(defs, persistent_instance, held.cursor)) == {"2024-01-12": {"profiles"}}


def test_sensor_skips_a_throttled_table_and_keeps_its_mark(
    defs, simulator, persistent_instance, instance
) -> None:
    materialize_last_day(defs, instance, ("profiles", "events"))
    first = tick(defs, persistent_instance, None)
    simulator.mutate("profiles", updated=1, added=0, at=datetime(2024, 1, 12, 10, tzinfo=UTC))
    simulator.mutate("events", updated=0, added=1, at=datetime(2024, 1, 12, 10, tzinfo=UTC))
    # Klaviyo answers 429 with an hour's Retry-After: the sensor must not wait (or hammer) it out.
    simulator.set_fault("429", path="profiles", retry_after=3600, count=1)
    throttled = tick(defs, persistent_instance, first.cursor)
    assert requested(throttled) == {"2024-01-12": {"events"}}
    assert simulator.stats.throttled == 1
    assert load_marks(throttled.cursor)["profiles"] == load_marks(first.cursor)["profiles"]
    again = tick(defs, persistent_instance, throttled.cursor)
    assert requested(again) == {"2024-01-12": {"profiles"}}


def test_sensor_leaves_tables_never_materialized_to_the_schedule(
    defs, simulator, persistent_instance
) -> None:
    result = tick(defs, persistent_instance, None)
    assert requested(result) == {}
    assert load_marks(result.cursor) == {}
    assert sum(simulator.stats.requests.values()) == 0


def test_cursor_round_trips_and_tolerates_garbage() -> None:
    marks = {"events": datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)}
    assert load_marks(dump_marks(marks)) == marks
    assert json.loads(dump_marks(marks))["marks"]["events"] == "2024-01-02T03:04:05.000006+00:00"
    assert load_marks("not json") == {} and load_marks(None) == {}
