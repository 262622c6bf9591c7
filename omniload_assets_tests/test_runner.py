"""How a range of days runs: one window run when no one keeps the history, per-day status otherwise."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from omniload_assets.assets import asset_key
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.runner import materialize_tables, window_run_config
from omniload_assets_tests.conftest import table_ids

FIRST, LAST = date(2024, 1, 3), date(2024, 1, 5)
DAYS = {"2024-01-03", "2024-01-04", "2024-01-05"}
EVENTS, TAGS = get_table("events"), get_table("tags")


def utc(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


def materializations(instance: dg.DagsterInstance, table: str) -> list[dg.EventLogRecord]:
    return list(instance.fetch_materializations(asset_key(get_table(table)), limit=1000).records)


def test_a_throwaway_instance_gets_one_run_with_one_materialization_per_table(
    defs, simulator, db_path: Path, instance
) -> None:
    outcomes = materialize_tables(defs, [EVENTS, TAGS], first_day=FIRST, last_day=LAST, instance=instance)
    assert [o.table for o in outcomes] == ["events", "tags"] and all(o.success for o in outcomes)
    assert len({o.run_id for o in outcomes}) == 1  # the partitioned and the whole table together
    window = simulator.ids("events", utc(FIRST), utc(LAST + timedelta(days=1)))
    assert window and set(table_ids(db_path, "events")) == window
    assert set(table_ids(db_path, "tags")) == simulator.ids("tags")
    [events] = materializations(instance, "events")
    assert events.partition_key is None
    meta = events.asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["window_start"].value == utc(FIRST).isoformat()
    assert meta["window_end"].value == utc(LAST + timedelta(days=1)).isoformat()
    assert meta["dagster/row_count"].value == len(window)


def test_partition_status_records_every_day_of_the_range_in_one_run(
    defs, simulator, db_path, instance
) -> None:
    outcomes = materialize_tables(
        defs, [EVENTS, TAGS], first_day=FIRST, last_day=LAST, instance=instance, partition_status=True
    )
    assert all(o.success for o in outcomes)
    by_table = {o.table: o.run_id for o in outcomes}
    assert by_table["events"] != by_table["tags"]  # a range run cannot hold the unpartitioned table
    events = materializations(instance, "events")
    assert {r.partition_key for r in events} == DAYS
    assert {r.run_id for r in events} == {by_table["events"]}
    window = simulator.ids("events", utc(FIRST), utc(LAST + timedelta(days=1)))
    assert set(table_ids(db_path, "events")) == window


def test_an_instance_that_keeps_history_gets_per_day_status_by_default(defs, simulator, tmp_path) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as kept:
        assert kept.is_persistent
        outcomes = materialize_tables(defs, [EVENTS], first_day=FIRST, last_day=LAST, instance=kept)
        assert all(o.success for o in outcomes)
        assert kept.get_materialized_partitions(asset_key(EVENTS)) == DAYS


def run_with_window(defs, instance, table: str, window: dict, **kwargs) -> dg.ExecuteInProcessResult:
    asset = defs.get_assets_def(asset_key(get_table(table)))
    return dg.materialize(
        [asset],
        instance=instance,
        resources=defs.resources,
        run_config={"ops": {asset.op.name: {"config": window}}},
        raise_on_error=False,
        **kwargs,
    )


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return str(failure.step_failure_data.error)


@pytest.mark.parametrize(
    ("table", "window", "partition_key", "message"),
    [
        ("events", {"start": "2024-01-03"}, None, "set both start and end of the window config"),
        ("events", {"start": "2024-01-05", "end": "2024-01-03"}, None, "is not after start"),
        ("events", {"start": "yesterday", "end": "2024-01-03"}, None, "'yesterday' is not an ISO 8601"),
        (
            "events",
            {"start": "2024-01-03", "end": "2024-01-04"},
            "2024-01-05",
            "a partitioned run loads its partitions' days",
        ),
        ("tags", {"start": "2024-01-03", "end": "2024-01-04"}, None, "klaviyo/tags is replaced whole"),
    ],
)
def test_a_window_that_cannot_apply_fails_the_run_before_a_request(
    defs, simulator, db_path, instance, table, window, partition_key, message
) -> None:
    result = run_with_window(defs, instance, table, window, partition_key=partition_key)
    assert not result.success
    assert message in failure_message(result)
    assert simulator.stats.total_requests == 0
    assert not db_path.exists()


def test_the_window_config_covers_whole_days_for_partitioned_tables_only(defs) -> None:
    assets = [defs.get_assets_def(asset_key(t)) for t in (EVENTS, TAGS)]
    config = window_run_config(assets, FIRST, LAST)
    assert config == {
        "ops": {
            assets[0].op.name: {
                "config": {"start": "2024-01-03T00:00:00+00:00", "end": "2024-01-06T00:00:00+00:00"}
            }
        }
    }
