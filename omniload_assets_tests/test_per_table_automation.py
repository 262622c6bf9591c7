"""Per-table automation (``automation.per_table``): a table's own schedule, cron and lookback, left
out of the shared schedules or of the change sensor; bad overrides fail with one line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from omniload_assets import KlaviyoOptions, klaviyo_definitions
from omniload_assets.automation import INCREMENTAL_JOB, REPLACE_JOB, TRIGGER_TAG
from omniload_assets.factory import resolve_layout
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.runner import RANGE_END_TAG, RANGE_START_TAG
from omniload_assets.sensors import load_marks
from omniload_assets.settings import CHANGE_SENSOR, SettingsError
from omniload_assets.warehouse.checkpoints import defer
from omniload_assets_tests.conftest import SIM_END
from omniload_assets_tests.simulator import KlaviyoSimulator
from omniload_assets_tests.test_component import dg_project

AT = datetime(2024, 1, 10, 7, 0, tzinfo=UTC)
LAST_DAY = (SIM_END - timedelta(days=1)).date()
TABLES = ["events", "profiles", "metrics", "lists", "tags", "coupons"]
PER_TABLE = {
    "events": {"cron": "*/10 * * * *", "lookback_days": 1},
    "profiles": {"lookback_days": 0},
    "lists": {"schedule": False},
    "coupons": {"cron": "0 5 * * *"},
}


@pytest.fixture
def clean_env(sim_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The simulator's environment, without variables that would choose other tables or automation."""
    for name in (
        "OMNILOAD_TABLES",
        "OMNILOAD_AUTOMATION",
        "OMNILOAD_LOOKBACK_DAYS",
        "OMNILOAD_SCHEDULE_CRON",
    ):
        monkeypatch.delenv(name, raising=False)
    return sim_env


@pytest.fixture
def overridden(clean_env: dict[str, str]) -> dg.Definitions:
    return klaviyo_definitions(KlaviyoOptions(tables=TABLES, automation={"per_table": PER_TABLE}))


def schedules_of(defs: dg.Definitions) -> dict[str, dg.ScheduleDefinition]:
    return {s.name: s for s in defs.schedules or []}


def evaluate(
    defs: dg.Definitions, instance: dg.DagsterInstance, name: str, at: datetime = AT
) -> dg.ScheduleExecutionData:
    schedule = schedules_of(defs)[name]
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=at, resources=defs.resources
    ) as context:
        return schedule.evaluate_tick(context)


def one_request(defs: dg.Definitions, instance: dg.DagsterInstance, name: str) -> dg.RunRequest:
    (request,) = evaluate(defs, instance, name).run_requests or []
    return request


def selected(request: dg.RunRequest) -> list[str]:
    return sorted(k.to_user_string() for k in request.asset_selection or [])


def days(request: dg.RunRequest) -> tuple[str, str]:
    return request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]


# -- schedules ------------------------------------------------------------------------------------


def test_overridden_tables_get_their_own_schedules(overridden: dg.Definitions, persistent_instance) -> None:
    schedules = schedules_of(overridden)
    assert set(schedules) == {
        "klaviyo_incremental_schedule",
        "klaviyo_replace_schedule",
        "klaviyo_events_schedule",
        "klaviyo_profiles_schedule",
        "klaviyo_coupons_schedule",
        "klaviyo_deletion_sweep_schedule",
    }
    crons = {name: s.cron_schedule for name, s in schedules.items()}
    assert crons["klaviyo_events_schedule"] == "*/10 * * * *"
    assert crons["klaviyo_profiles_schedule"] == "0 * * * *"  # the set's incremental cron
    assert crons["klaviyo_coupons_schedule"] == "0 5 * * *"
    assert crons["klaviyo_incremental_schedule"] == "0 * * * *"
    for name in ("klaviyo_events_schedule", "klaviyo_profiles_schedule", "klaviyo_incremental_schedule"):
        assert schedules[name].job_name == INCREMENTAL_JOB
    assert schedules["klaviyo_coupons_schedule"].job_name == REPLACE_JOB
    # The jobs still cover every table: only the schedules are split.
    incremental = overridden.resolve_job_def(INCREMENTAL_JOB).asset_layer.executable_asset_keys
    assert {k.to_user_string() for k in incremental} == {
        f"klaviyo/{t}" for t in ("events", "profiles", "metrics", "lists")
    }

    # The shared schedules keep the rest: metrics (lists is left out), tags.
    shared = one_request(overridden, persistent_instance, "klaviyo_incremental_schedule")
    assert selected(shared) == ["klaviyo/metrics"]
    assert days(shared) == ("2024-01-07", "2024-01-10")
    assert selected(one_request(overridden, persistent_instance, "klaviyo_replace_schedule")) == [
        "klaviyo/tags"
    ]

    events = one_request(overridden, persistent_instance, "klaviyo_events_schedule")
    assert selected(events) == ["klaviyo/events"]
    assert days(events) == ("2024-01-09", "2024-01-10")
    assert events.tags[TRIGGER_TAG] == "klaviyo_events_schedule"
    assert events.run_key == f"klaviyo_events_schedule:2024-01-09..2024-01-10@{AT.isoformat()}"
    profiles = one_request(overridden, persistent_instance, "klaviyo_profiles_schedule")
    assert selected(profiles) == ["klaviyo/profiles"] and days(profiles) == ("2024-01-10", "2024-01-10")
    coupons = one_request(overridden, persistent_instance, "klaviyo_coupons_schedule")
    assert selected(coupons) == ["klaviyo/coupons"] and RANGE_START_TAG not in coupons.tags


def test_a_tables_own_schedule_skips_in_flight_runs_and_deferrals(
    overridden: dg.Definitions, persistent_instance, db_path: Path
) -> None:
    run = dg.DagsterRun(
        job_name=INCREMENTAL_JOB,
        status=dg.DagsterRunStatus.STARTED,
        asset_selection=frozenset({dg.AssetKey(["klaviyo", "events"])}),
        tags={"dagster/partition": "2024-01-10"},
    )
    persistent_instance.add_run(run)
    held = evaluate(overridden, persistent_instance, "klaviyo_events_schedule")
    assert not held.run_requests
    assert held.skip_message == "a run of klaviyo/events over 2024-01-09..2024-01-10 is still in flight"
    # The shared schedule no longer holds events: the run does not hold it back.
    assert selected(one_request(overridden, persistent_instance, "klaviyo_incremental_schedule")) == [
        "klaviyo/metrics"
    ]
    persistent_instance.report_run_canceled(run)

    db_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(db_path)) as conn:
        defer(conn, "klaviyo", "events", AT + timedelta(hours=20), "quota", "run-1")
    deferred = evaluate(overridden, persistent_instance, "klaviyo_events_schedule")
    assert not deferred.run_requests
    assert (deferred.skip_message or "").startswith(
        "every table is deferred: events until 2024-01-11 03:00 UTC"
    )
    assert len(evaluate(overridden, persistent_instance, "klaviyo_profiles_schedule").run_requests or []) == 1


def test_another_prefix_names_a_tables_schedule_after_it(clean_env, persistent_instance) -> None:
    options = KlaviyoOptions(
        tables=["events", "catalog-items", "tags"],
        key_prefix="raw/klaviyo",
        automation={"per_table": {"catalog_items": {"lookback_days": 2}, "tags": {"cron": "@daily"}}},
    )
    defs = klaviyo_definitions(options)
    assert set(schedules_of(defs)) == {
        "raw_klaviyo_incremental_schedule",
        "raw_klaviyo_catalog_items_schedule",
        "raw_klaviyo_tags_schedule",
        "raw_klaviyo_deletion_sweep_schedule",
    }
    items = one_request(defs, persistent_instance, "raw_klaviyo_catalog_items_schedule")
    assert selected(items) == ["raw/klaviyo/catalog_items"] and days(items) == ("2024-01-08", "2024-01-10")
    assert selected(one_request(defs, persistent_instance, "raw_klaviyo_incremental_schedule")) == [
        "raw/klaviyo/events"
    ]
    tags = one_request(defs, persistent_instance, "raw_klaviyo_tags_schedule")
    assert selected(tags) == ["raw/klaviyo/tags"]
    assert schedules_of(defs)["raw_klaviyo_tags_schedule"].job_name == "raw_klaviyo_replace_job"


def test_per_table_switches_override_the_sets(clean_env) -> None:
    options = KlaviyoOptions(
        tables=["events", "profiles", "metrics", "tags"],
        automation={
            "schedules": False,
            "sensor": False,
            "running": ["incremental_schedule"],
            "per_table": {"events": {"schedule": True, "sensor": True}, "metrics": {"cron": "0 6 * * *"}},
        },
    )
    layout = resolve_layout(options)
    assert [t.name for t in layout.sensed_tables()] == ["events"]
    assert [t.name for t in layout.shared_incremental_tables()] == ["events"]
    defs = klaviyo_definitions(options)
    schedules = schedules_of(defs)
    # Schedules off, but events is switched back on and metrics has its own; no replace schedule.
    assert set(schedules) == {
        "klaviyo_incremental_schedule",
        "klaviyo_metrics_schedule",
        "klaviyo_deletion_sweep_schedule",
    }
    # A table's own schedule starts RUNNING with the shared schedule of its kind.
    assert schedules["klaviyo_metrics_schedule"].default_status == dg.DefaultScheduleStatus.RUNNING
    assert {s.name for s in defs.sensors or []} == {CHANGE_SENSOR}
    # Every table off: no sensor at all.
    off = KlaviyoOptions(tables=["events"], automation={"per_table": {"events": {"sensor": False}}})
    assert not klaviyo_definitions(off).sensors


# -- the change sensor ---------------------------------------------------------------------------


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    sensor = defs.resolve_sensor_def(CHANGE_SENSOR)
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def test_the_sensor_does_not_probe_a_table_whose_sensor_is_off(
    clean_env, simulator: KlaviyoSimulator, persistent_instance, instance
) -> None:
    options = KlaviyoOptions(
        tables=["events", "profiles"], automation={"per_table": {"profiles": {"sensor": False}}}
    )
    defs = klaviyo_definitions(options)
    assets = [defs.get_assets_def(dg.AssetKey(["klaviyo", t])) for t in ("events", "profiles")]
    landed = dg.materialize(
        assets, partition_key=LAST_DAY.isoformat(), instance=instance, resources=defs.resources
    )
    assert landed.success
    simulator.reset_stats()
    first = tick(defs, persistent_instance, None)
    assert set(load_marks(first.cursor)) == {"events"}
    simulator.mutate("profiles", updated=1, added=1, at=datetime(2024, 1, 12, 10, tzinfo=UTC))
    simulator.mutate("events", updated=0, added=1, at=datetime(2024, 1, 12, 10, tzinfo=UTC))
    second = tick(defs, persistent_instance, first.cursor)
    assert [(r.partition_key, selected(r)) for r in second.run_requests or []] == [
        ("2024-01-12", ["klaviyo/events"])
    ]
    requests = simulator.stats.requests
    assert requests.get(get_table("profiles").path, 0) == 0  # never asked Klaviyo about profiles
    assert requests[get_table("events").path] >= 2  # both ticks probed events


# -- bad overrides ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tables", "per_table", "message"),
    [
        (
            None,
            {"event": {"cron": "0 * * * *"}},
            "automation.per_table: 'event' is not a table the automation",
        ),
        (
            ["events"],
            {"tags": {"schedule": False}},
            "automation.per_table: 'tags' is not a table the automation",
        ),
        (
            None,
            {"tags": {"lookback_days": 2}},
            "automation.per_table.tags.lookback_days: tags is replaced whole",
        ),
        (None, {"events": {"cron": "hourly"}}, "automation.per_table.events.cron='hourly' is not a cron"),
        (None, {"events": {"lookback_days": -1}}, "automation.per_table.events.lookback_days='-1' is not"),
        (
            None,
            {"events": {"schedule": False, "cron": "@daily"}},
            "automation.per_table.events: schedule is false",
        ),
        (
            None,
            {"coupons": {"sensor": True}},
            "automation.per_table.coupons.sensor: coupons is replaced whole",
        ),
        (
            ["lists", "list-profiles"],
            {"list_profiles": {"cron": "@daily"}, "list-profiles": {"cron": "@hourly"}},
            "automation.per_table: list-profiles is given twice",
        ),
    ],
)
def test_a_bad_override_fails_with_one_line_naming_it(
    clean_env, tables: list[str] | None, per_table: dict, message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        klaviyo_definitions(KlaviyoOptions(tables=tables, automation={"per_table": per_table}))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


# -- the component -------------------------------------------------------------------------------

COMPONENT_YAML = """\
type: omniload_assets.KlaviyoComponent
attributes:
  tables: [events, profiles, tags]
  database: second.duckdb
  key_prefix: klaviyo_second
  automation:
    per_table:
      events: {cron: "*/10 * * * *", lookback_days: 1}
      profiles: {schedule: false, sensor: false}
      tags: {cron: "0 5 * * *"}
"""


def test_the_component_takes_per_table_automation_in_yaml(
    clean_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    defs_folder = dg_project(project, "kproject_per_table")
    (defs_folder / "second").mkdir()
    (defs_folder / "second" / "defs.yaml").write_text(COMPONENT_YAML, encoding="utf-8")
    monkeypatch.syspath_prepend(str(project))
    defs = dg.load_from_defs_folder(path_within_project=project)
    schedules = schedules_of(defs)
    # events and tags have their own schedules, profiles none: no shared incremental or replace one.
    assert set(schedules) == {
        "klaviyo_second_events_schedule",
        "klaviyo_second_tags_schedule",
        "klaviyo_second_deletion_sweep_schedule",
    }
    assert schedules["klaviyo_second_events_schedule"].cron_schedule == "*/10 * * * *"
    assert schedules["klaviyo_second_tags_schedule"].cron_schedule == "0 5 * * *"
    assert {s.name for s in defs.sensors or []} == {"klaviyo_second_change_sensor"}
    dg.Definitions.validate_loadable(defs)
