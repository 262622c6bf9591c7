"""The schedules and the change sensor leave deferred tables alone, reading the deferrals from DuckDB."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb

from omniload_assets.assets import IO_MANAGER_KEY, asset_key
from omniload_assets.automation import TRIGGER_TAG, incremental_tables, replace_tables
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.runner import RANGE_END_TAG, RANGE_START_TAG
from omniload_assets.sensors import load_marks
from omniload_assets.settings import CHANGE_SENSOR, INCREMENTAL_SCHEDULE, REPLACE_SCHEDULE
from omniload_assets.warehouse.checkpoints import clear_deferral, defer
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager
from omniload_assets_tests.conftest import SIM_END
from omniload_assets_tests.simulator import KlaviyoSimulator

AT = datetime(2024, 1, 10, 7, 0, tzinfo=UTC)
LAST_DAY = (SIM_END - timedelta(days=1)).date()


class Captured(logging.Handler):
    """The messages a schedule or sensor logs, by level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


def schema_of(defs: dg.Definitions) -> str:
    manager = defs.resources[IO_MANAGER_KEY]
    assert isinstance(manager, KlaviyoDuckDBIOManager)
    return manager.schema_name


def write_deferrals(db_path: Path, schema: str, untils: dict[str, datetime], reason: str = "quota") -> None:
    with duckdb.connect(str(db_path)) as conn:
        for source, until in untils.items():
            defer(conn, schema, source, until, f"{reason} of {source}", "run-1")


def evaluate(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    name: str,
    *,
    at: datetime = AT,
    resources: dict[str, object] | None = None,
) -> tuple[dg.ScheduleExecutionData, Captured]:
    """Evaluate the schedule ``name`` at ``at``; the context is closed after (it opens an instance of
    its own, which would otherwise linger as Dagster's current one)."""
    schedule = next(s for s in defs.schedules or [] if s.name == name)
    captured = Captured()
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=at, resources=resources or dict(defs.resources)
    ) as context:
        context.log.addHandler(captured)
        return schedule.evaluate_tick(context), captured


def selected(request: dg.RunRequest) -> set[str]:
    assert request.asset_selection is not None
    return {k.path[-1] for k in request.asset_selection}


# -- schedules -----------------------------------------------------------------------------------


def test_the_incremental_schedule_leaves_a_deferred_table_out(
    defs, db_path: Path, persistent_instance
) -> None:
    until = AT + timedelta(hours=20)
    write_deferrals(db_path, schema_of(defs), {"events": until, "catalog-items": until, "tags": until})
    data, log = evaluate(defs, persistent_instance, INCREMENTAL_SCHEDULE)
    (request,) = data.run_requests or []
    # Keyed by Klaviyo name (catalog-items), selected by asset name (catalog_items); tags is not here.
    assert selected(request) == {t.asset_name for t in incremental_tables()} - {"events", "catalog_items"}
    assert (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]) == ("2024-01-07", "2024-01-10")
    assert request.tags[TRIGGER_TAG] == INCREMENTAL_SCHEDULE
    (info,) = [m for m in log.at(logging.INFO) if "left out" in m]
    assert "catalog-items until 2024-01-11 03:00 UTC (quota of catalog-items)" in info
    assert "events until 2024-01-11 03:00 UTC (quota of events)" in info


def test_the_replace_schedule_leaves_a_deferred_table_out(defs, db_path: Path, persistent_instance) -> None:
    write_deferrals(
        db_path, schema_of(defs), {"tags": AT + timedelta(days=1), "list-profiles": AT + timedelta(1)}
    )
    data, _ = evaluate(defs, persistent_instance, REPLACE_SCHEDULE)
    (request,) = data.run_requests or []
    assert selected(request) == {t.asset_name for t in replace_tables()} - {"tags", "list_profiles"}
    assert "coupons" in selected(request)


def test_a_deferral_that_is_over_is_ignored(defs, db_path: Path, persistent_instance) -> None:
    write_deferrals(db_path, schema_of(defs), {"events": AT, "tags": AT - timedelta(days=1)})  # over at AT
    for name in (INCREMENTAL_SCHEDULE, REPLACE_SCHEDULE):
        data, log = evaluate(defs, persistent_instance, name)
        (request,) = data.run_requests or []
        assert request.asset_selection is None, name  # the whole job, as without deferrals
        assert not [m for m in log.at(logging.INFO) if "left out" in m]
    # An hour earlier the same deferral is in force.
    data, _ = evaluate(defs, persistent_instance, INCREMENTAL_SCHEDULE, at=AT - timedelta(hours=1))
    (request,) = data.run_requests or []
    assert "events" not in selected(request)


def test_every_table_deferred_skips_naming_when_one_can_run_again(
    defs, db_path: Path, persistent_instance
) -> None:
    untils = {t.name: AT + timedelta(days=2) for t in incremental_tables()}
    untils["profiles"] = datetime(2024, 1, 11, 3, 0, tzinfo=UTC)
    write_deferrals(db_path, schema_of(defs), untils, reason="Klaviyo quota exhausted")
    data, _ = evaluate(defs, persistent_instance, INCREMENTAL_SCHEDULE)
    assert not data.run_requests
    message = data.skip_message or ""
    assert message.startswith(
        "every table is deferred: profiles until 2024-01-11 03:00 UTC (Klaviyo quota exhausted of profiles), "
    )
    assert "\n" not in message
    assert all(
        f"{t.name} until 2024-01-12 07:00 UTC" in message
        for t in incremental_tables()
        if t.name != "profiles"
    )
    # The replace tables are not deferred: their schedule runs.
    data, _ = evaluate(defs, persistent_instance, REPLACE_SCHEDULE)
    (request,) = data.run_requests or []
    assert request.asset_selection is None


def test_without_a_database_file_the_schedules_request_as_usual(
    defs, db_path: Path, persistent_instance
) -> None:
    for name in (INCREMENTAL_SCHEDULE, REPLACE_SCHEDULE):
        data, log = evaluate(defs, persistent_instance, name)
        (request,) = data.run_requests or []
        assert request.asset_selection is None
        assert log.at(logging.WARNING) == []
    assert not db_path.exists()  # reading the deferrals created nothing


def test_a_locked_database_does_not_hold_the_schedules_back(defs, db_path: Path, persistent_instance) -> None:
    write_deferrals(db_path, schema_of(defs), {"events": AT + timedelta(days=1)})
    # Another process holds the file (as a running load does): DuckDB lets no one else open it.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
            "sys.stdin.read()",
            str(db_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        manager = KlaviyoDuckDBIOManager(database=str(db_path), schema=schema_of(defs), lock_timeout_s=0.2)
        data, log = evaluate(
            defs, persistent_instance, INCREMENTAL_SCHEDULE, resources={IO_MANAGER_KEY: manager}
        )
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    (request,) = data.run_requests or []
    assert request.asset_selection is None  # every table, though events is deferred: it could not be read
    (warning,) = log.at(logging.WARNING)
    assert "cannot read the deferrals" in warning and "locked by another process" in warning


# -- the change sensor ---------------------------------------------------------------------------


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    sensor = defs.resolve_sensor_def(CHANGE_SENSOR)
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def requested(result: dg.SensorResult) -> dict[str, set[str]]:
    return {
        r.partition_key or "": {k.path[-1] for k in r.asset_selection or []}
        for r in result.run_requests or []
    }


def test_the_sensor_does_not_probe_a_deferred_table_and_keeps_its_mark(
    defs, simulator: KlaviyoSimulator, db_path: Path, persistent_instance, instance
) -> None:
    assets = [defs.get_assets_def(asset_key(get_table(t))) for t in ("profiles", "events")]
    landed = dg.materialize(
        assets, partition_key=LAST_DAY.isoformat(), instance=instance, resources=defs.resources
    )
    assert landed.success
    first = tick(defs, persistent_instance, None)
    simulator.mutate("profiles", updated=1, added=1, at=datetime(2024, 1, 12, 10, tzinfo=UTC))
    simulator.mutate("events", updated=0, added=1, at=datetime(2024, 1, 12, 10, tzinfo=UTC))
    # The deferral outlives the tick (the sensor's clock is the wall clock).
    write_deferrals(db_path, schema_of(defs), {"profiles": datetime.now(UTC) + timedelta(days=1)})

    simulator.reset_stats()
    held = tick(defs, persistent_instance, first.cursor)
    assert requested(held) == {"2024-01-12": {"events"}}
    assert simulator.stats.requests.get(get_table("profiles").path, 0) == 0  # no Klaviyo request for it
    assert simulator.stats.requests[get_table("events").path] >= 1
    assert load_marks(held.cursor)["profiles"] == load_marks(first.cursor)["profiles"]

    # Once the deferral is gone, the change is found and requested.
    with duckdb.connect(str(db_path)) as conn:
        clear_deferral(conn, schema_of(defs), "profiles")
    assert requested(tick(defs, persistent_instance, held.cursor)) == {"2024-01-12": {"profiles"}}
