"""The run config's write options (ingestr's --full-refresh, --incremental-strategy, --primary-key,
--columns) through real materializations against the simulator into a real DuckDB file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

from omniload_assets.assets import asset_key
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.runner import partition_range_tags
from omniload_assets.warehouse.reads import qualified_name
from omniload_assets_tests.conftest import SIM_END, SIM_START, table_ids
from omniload_assets_tests.harness import ledger
from omniload_assets_tests.simulator import KlaviyoSimulator

FIRST_DAY, LAST_DAY = SIM_START.date(), (SIM_END - timedelta(days=1)).date()
DAGSTER = str(Path(sys.executable).with_name("dagster"))


def day(iso: str) -> datetime:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC)


def run(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    table: str,
    config: dict[str, Any] | None = None,
    *,
    days: tuple[date, date] | None = None,
    partition_key: str | None = None,
    resources: dict[str, Any] | None = None,
) -> dg.ExecuteInProcessResult:
    """One run of ``table``'s asset with ``config`` as its run config, over a partition range,
    one partition, or (neither) no partition."""
    asset = defs.get_assets_def(asset_key(get_table(table)))
    return dg.materialize(
        [asset],
        instance=instance,
        resources=resources or defs.resources,
        tags=partition_range_tags(*days) if days else None,
        partition_key=partition_key,
        run_config={"ops": {asset.op.name: {"config": config}}} if config else None,
        raise_on_error=False,
    )


def metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """The values of the run's (last) materialization's metadata."""
    [node] = {e.node_name for e in result.all_node_events}
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[-1].metadata.items()}


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The message of the error that failed the run's step."""
    [failure] = result.get_step_failure_events()
    error = failure.event_specific_data.error
    return (error.cause.message if error.cause else error.message).strip()


def first_ids(simulator: KlaviyoSimulator, table: str, start: str, count: int = 1) -> list[str]:
    """``count`` ids of ``table`` whose incremental key lies on the day ``start``."""
    ids = sorted(simulator.ids(table, day(start), day(start) + timedelta(days=1)))
    assert len(ids) >= count, f"the simulator has fewer than {count} {table} on {start}"
    return ids[:count]


def column_names(db_path: Path, table: str) -> dict[str, str]:
    with duckdb.connect(str(db_path), read_only=True) as conn:
        return dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
                "'klaviyo' AND table_name = ? ORDER BY ordinal_position",
                [table],
            ).fetchall()
        )


# -- full_refresh ---------------------------------------------------------------------------------


def test_full_refresh_of_a_partition_range_drops_rows_deleted_upstream_in_those_days_only(
    defs, simulator: KlaviyoSimulator, db_path, instance
) -> None:
    assert run(defs, instance, "events", days=(FIRST_DAY, LAST_DAY)).success
    gone_inside = [
        *first_ids(simulator, "events", "2024-01-03"),
        *first_ids(simulator, "events", "2024-01-04"),
    ]
    gone_outside = first_ids(simulator, "events", "2024-01-07")
    for event_id in (*gone_inside, *gone_outside):
        assert simulator.delete_record("events", event_id)
    days = (date(2024, 1, 3), date(2024, 1, 4))
    # A merge never learns of a deletion: the rows stay.
    assert run(defs, instance, "events", days=days).success
    assert set(gone_inside) <= set(table_ids(db_path, "events"))

    result = run(defs, instance, "events", {"full_refresh": True}, days=days)
    assert result.success
    ids = table_ids(db_path, "events")
    assert len(ids) == len(set(ids))
    assert not set(gone_inside) & set(ids)
    assert set(gone_outside) <= set(ids)  # other days are left alone
    assert set(ids) == simulator.ids("events") | set(gone_outside)
    meta = metadata(result)
    assert (meta["strategy"], meta["full_refresh"]) == ("merge", True)
    assert meta["rows_deleted"] == len(simulator.ids("events", day("2024-01-03"), day("2024-01-05"))) + 2
    assert "resumed" not in meta  # no checkpoints were kept


def test_full_refresh_of_tags_rebuilds_the_table(defs, simulator, db_path, instance) -> None:
    assert run(defs, instance, "tags").success
    assert run(defs, instance, "tags", {"incremental_strategy": "append"}).success
    counts = Counter(table_ids(db_path, "tags"))
    assert set(counts.values()) == {2}  # appended: every tag twice
    gone = sorted(simulator.ids("tags"))[0]
    assert simulator.delete_record("tags", gone)

    result = run(defs, instance, "tags", {"full_refresh": True})
    assert result.success
    ids = table_ids(db_path, "tags")
    assert sorted(ids) == sorted(simulator.ids("tags"))
    assert gone not in ids
    assert (metadata(result)["strategy"], metadata(result)["full_refresh"]) == ("replace", True)


def test_a_failed_full_refresh_keeps_no_checkpoint_and_leaves_the_table_as_it_was(
    defs, simulator: KlaviyoSimulator, db_path, instance, monkeypatch
) -> None:
    assert run(defs, instance, "events", days=(FIRST_DAY, LAST_DAY)).success
    before = sorted(table_ids(db_path, "events"))
    monkeypatch.setenv("OMNILOAD_CHECKPOINT_EVERY_S", "0")  # a merge run would commit every day
    klaviyo = defs.resources["klaviyo"].model_copy(
        update={"max_retries": 1, "retry_backoff_s": 0.01, "page_size": 50, "extract_parallelism": 1}
    )
    simulator.set_fault("503", rate=1.0, after=len(simulator.ids("events")) // 50 // 2)
    resources = {**defs.resources, "klaviyo": klaviyo}
    config = {"full_refresh": True}
    result = run(defs, instance, "events", config, days=(FIRST_DAY, LAST_DAY), resources=resources)
    assert not result.success
    assert ledger(db_path) == []
    assert sorted(table_ids(db_path, "events")) == before


# -- incremental_strategy -----------------------------------------------------------------------


def test_append_inserts_every_fetched_row_again(defs, simulator, db_path, instance) -> None:
    assert run(defs, instance, "events", partition_key="2024-01-05").success
    result = run(defs, instance, "events", {"incremental_strategy": "append"}, partition_key="2024-01-05")
    assert result.success
    expected = simulator.ids("events", day("2024-01-05"), day("2024-01-06"))
    assert Counter(table_ids(db_path, "events")) == Counter({i: 2 for i in expected})
    meta = metadata(result)
    assert (meta["strategy"], meta["full_refresh"], meta["rows_inserted"]) == ("append", False, len(expected))


def test_delete_insert_of_a_window_replaces_its_rows_and_moved_keys(
    defs, simulator: KlaviyoSimulator, db_path, instance
) -> None:
    assert run(defs, instance, "profiles", days=(FIRST_DAY, LAST_DAY)).success
    [gone] = first_ids(simulator, "profiles", "2024-01-10")
    [kept] = first_ids(simulator, "profiles", "2024-01-02")
    simulator.delete_record("profiles", gone)
    simulator.delete_record("profiles", kept)
    # Profiles updated on the 10th move there from earlier days: their old rows must not stay.
    moved = simulator.mutate("profiles", updated=3, added=2, at=day("2024-01-10") + timedelta(hours=6))
    config = {"incremental_strategy": "delete+insert"}
    result = run(defs, instance, "profiles", config, partition_key="2024-01-10")
    assert result.success
    ids = table_ids(db_path, "profiles")
    assert len(ids) == len(set(ids))
    assert gone not in ids and kept in ids
    assert set(moved["updated"]) | set(moved["added"]) <= set(ids)
    assert set(ids) == simulator.ids("profiles") | {kept}
    meta = metadata(result)
    assert meta["strategy"] == "delete+insert"
    assert meta["rows_deleted"] >= len(moved["updated"]) + 1


def test_replace_swaps_the_whole_table_and_is_refused_in_a_partitioned_run(
    defs, simulator, db_path, instance
) -> None:
    assert run(defs, instance, "events", partition_key="2024-01-05").success
    result = run(defs, instance, "events", {"incremental_strategy": "replace"}, partition_key="2024-01-06")
    assert not result.success
    assert failure_message(result).endswith(
        "events: incremental_strategy replace swaps the whole table for the rows of this run's partitions "
        "only; run without partitions, or rebuild the days with delete+insert or full_refresh"
    )
    window = {"start": "2024-01-06", "end": "2024-01-07", "incremental_strategy": "replace"}
    result = run(defs, instance, "events", window)  # no partition: the ingestr way
    assert result.success
    assert set(table_ids(db_path, "events")) == simulator.ids("events", day("2024-01-06"), day("2024-01-07"))
    assert metadata(result)["strategy"] == "replace"
    assert "_deleted_at" in column_names(db_path, "events")  # still a merge table for the sweep


# -- primary_key, columns, the window override -----------------------------------------------------


def test_primary_key_override_deduplicates_by_it(defs, simulator, db_path, instance) -> None:
    result = run(defs, instance, "events", {"primary_key": ["metric_id"]}, partition_key="2024-01-05")
    assert result.success
    newest: dict[str, datetime] = {}
    for record in simulator.records("events"):
        when = datetime.fromisoformat(record["attributes"]["datetime"])
        metric = record["relationships"]["metric"]["data"]["id"]
        if day("2024-01-05") <= when < day("2024-01-06") and when > newest.get(metric, SIM_START):
            newest[metric] = when
    with duckdb.connect(str(db_path), read_only=True) as conn:
        stored = conn.execute(
            f"SELECT metric_id, datetime FROM {qualified_name(conn, 'klaviyo', 'events')}"
        ).fetchall()
    assert len(newest) > 1
    assert dict(stored) == newest
    assert metadata(result)["primary_key"] == "metric_id"


def test_columns_write_a_subset_and_name_type_sets_a_type(defs, simulator, db_path, instance) -> None:
    result = run(defs, instance, "events", {"columns": ["metric_id"]}, partition_key="2024-01-05")
    assert result.success
    assert list(column_names(db_path, "events")) == [
        "id",
        "datetime",
        "metric_id",
        "_loaded_at",
        "_run_id",
        "_deleted_at",
    ]
    assert set(table_ids(db_path, "events")) == simulator.ids("events", day("2024-01-05"), day("2024-01-06"))
    assert metadata(result)["columns_written"] == "id, datetime, metric_id"

    assert run(defs, instance, "metrics", {"columns": ["created:date"]}).success
    types = column_names(db_path, "metrics")
    assert types["created"] == "DATE"
    assert {"name", "updated", "integration"} <= set(types)  # a typed entry selects nothing


def test_a_window_config_covering_the_partition_replaces_its_days(defs, simulator, db_path, instance) -> None:
    window = {"start": "2024-01-04", "end": "2024-01-06"}
    result = run(defs, instance, "events", window, partition_key="2024-01-05")
    assert result.success
    assert set(table_ids(db_path, "events")) == simulator.ids("events", day("2024-01-04"), day("2024-01-06"))
    assert metadata(result)["window_start"] == day("2024-01-04").isoformat()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"incremental_strategy": "upsert"},
            "events: incremental_strategy 'upsert' is not one of merge, replace, append, delete+insert",
        ),
        (
            {"primary_key": ["nope"]},
            "events: primary_key 'nope' is not a column of events; its columns: id, timestamp, datetime, "
            "uuid, event_properties, metric_id, profile_id, attributions_ids",
        ),
        ({"primary_key": []}, "events: primary_key is empty; name a column, e.g. id"),
        (
            {"columns": ["metric_id", "nope"]},
            "events: column 'nope' is not a column of events; its columns: id, timestamp, datetime, "
            "uuid, event_properties, metric_id, profile_id, attributions_ids",
        ),
        (
            {"columns": ["uuid:uuid); DROP TABLE x"]},
            "events: column type 'uuid); DROP TABLE x' of uuid is not a type; use one of text, bigint, "
            "double, bool, timestamp, date, time, decimal, wei, json, complex, binary or a DuckDB type",
        ),
        (
            {"start": "2024-01-05T06:00:00Z", "end": "2024-01-06"},
            "a partitioned run loads its partitions' days [2024-01-05T00:00:00+00:00, "
            "2024-01-06T00:00:00+00:00): a window config must cover them",
        ),
    ],
    ids=["strategy", "primary_key", "empty primary_key", "column", "column type", "window"],
)
def test_a_bad_option_fails_the_run_with_one_line_before_a_request(
    defs, simulator, db_path, instance, config, message
) -> None:
    result = run(defs, instance, "events", config, partition_key="2024-01-05")
    assert not result.success
    said = failure_message(result)
    assert message in said
    assert "\n" not in said
    assert simulator.stats.total_requests == 0
    assert not db_path.exists()


# -- the same run config from `dagster asset materialize --config-json` ----------------------------


def test_full_refresh_from_the_dagster_command_line(
    defs, sim_env, simulator: KlaviyoSimulator, db_path, instance, tmp_path
) -> None:
    assert run(defs, instance, "events", days=(FIRST_DAY, LAST_DAY)).success
    [gone_inside] = first_ids(simulator, "events", "2024-01-03")
    [gone_outside] = first_ids(simulator, "events", "2024-01-08")
    for event_id in (gone_inside, gone_outside):
        simulator.delete_record("events", event_id)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, **sim_env, "DAGSTER_HOME": str(home)}
    op = defs.get_assets_def(asset_key(get_table("events"))).op.name
    config = json.dumps({"ops": {op: {"config": {"full_refresh": True}}}})
    args = ["asset", "materialize", "-m", "omniload_assets.definitions", "--select", "klaviyo/events"]
    args += ["--partition-range", "2024-01-03...2024-01-04", "--config-json", config]
    result = subprocess.run(
        [DAGSTER, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ids = set(table_ids(db_path, "events"))
    assert gone_inside not in ids and gone_outside in ids
    assert ids == simulator.ids("events") | {gone_outside}
