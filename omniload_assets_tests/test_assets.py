"""All 15 tables through real Dagster materializations into a real DuckDB file, against the simulator."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from omniload_assets.assets import asset_key
from omniload_assets.klaviyo.catalog import TABLES, get_table
from omniload_assets.runner import materialize_tables, partition_range_tags
from omniload_assets_tests.conftest import (
    SIM_END,
    SIM_START,
    assert_tables_match_simulator,
    table_ids,
    table_rows,
)

FIRST_DAY = SIM_START.date()
LAST_DAY = (SIM_END - timedelta(days=1)).date()


def test_assets_carry_owners_from_the_environment(sim_env, monkeypatch) -> None:
    from omniload_assets.definitions import build_definitions
    from omniload_assets.settings import SettingsError

    monkeypatch.setenv("OMNILOAD_ASSET_OWNERS", "team:data, ana@example.com")
    spec = build_definitions().get_assets_def(asset_key(get_table("events"))).specs_by_key
    assert list(spec[asset_key(get_table("events"))].owners) == ["team:data", "ana@example.com"]
    monkeypatch.setenv("OMNILOAD_ASSET_OWNERS", "data")
    with pytest.raises(SettingsError, match="OMNILOAD_ASSET_OWNERS: 'data' is not an owner"):
        build_definitions()


def test_an_unknown_executor_is_refused_naming_the_choices(sim_env, monkeypatch) -> None:
    from omniload_assets.definitions import build_definitions
    from omniload_assets.settings import SettingsError

    monkeypatch.setenv("OMNILOAD_EXECUTOR", "threads")
    with pytest.raises(SettingsError, match="'threads' is not one of in_process, multiprocess"):
        build_definitions()


def test_definitions_hold_one_asset_per_table(defs: dg.Definitions) -> None:
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {f"klaviyo/{t.asset_name}" for t in TABLES}
    events = defs.get_assets_def(asset_key(get_table("events")))
    assert events.partitions_def is not None
    assert events.backfill_policy == dg.BackfillPolicy.single_run()
    assert defs.get_assets_def(asset_key(get_table("tags"))).partitions_def is None
    schema = events.specs_by_key[asset_key(get_table("events"))].metadata["dagster/column_schema"]
    assert {"id", "datetime", "metric_id", "profile_id", "event_properties"} <= {
        c.name for c in schema.columns
    }


def test_a_child_asset_depends_on_its_parent_and_is_replaced_whole(defs: dg.Definitions) -> None:
    """The lineage graph shows klaviyo/lists -> klaviyo/list_profiles, flow_actions -> flow_messages."""
    for spec in TABLES:
        key = asset_key(spec)
        asset = defs.get_assets_def(key)
        deps = {dep.asset_key for dep in asset.specs_by_key[key].deps}
        assert deps == ({asset_key(get_table(spec.parent))} if spec.parent else set()), spec.name
        if spec.parent:
            assert asset.partitions_def is None, spec.name
    key = asset_key(get_table("flow-messages"))
    assert {d.asset_key.to_user_string() for d in defs.get_assets_def(key).specs_by_key[key].deps} == {
        "klaviyo/flow_actions"
    }
    key = asset_key(get_table("list-profiles"))
    metadata = defs.get_assets_def(key).specs_by_key[key].metadata
    assert metadata["klaviyo/parent"] == "klaviyo/lists"
    assert metadata["klaviyo/endpoint"] == "/api/lists/{id}/profiles"
    assert metadata["klaviyo/scope"] == "lists:read, profiles:read"
    columns = [c.name for c in metadata["dagster/column_schema"].columns]
    assert columns == ["id", "list_id", "profile_id", "joined_group_at"]


def test_all_tables_land_complete_without_duplicates(defs, simulator, db_path, instance) -> None:
    outcomes = materialize_tables(defs, TABLES, first_day=FIRST_DAY, last_day=LAST_DAY, instance=instance)
    assert all(o.success for o in outcomes)
    assert_tables_match_simulator(db_path, simulator, TABLES)


def test_one_partition_extracts_exactly_its_day(defs, simulator, db_path, instance) -> None:
    events = defs.get_assets_def(asset_key(get_table("events")))
    result = dg.materialize([events], partition_key="2024-01-05", instance=instance, resources=defs.resources)
    assert result.success
    day = datetime(2024, 1, 5, tzinfo=UTC)
    assert set(table_ids(db_path, "events")) == simulator.ids("events", day, day + timedelta(days=1))
    meta = result.asset_materializations_for_node(events.op.name)[0].metadata
    assert meta["dagster/row_count"].value == len(simulator.ids("events", day, day + timedelta(days=1)))
    assert meta["rows_inserted"].value == meta["dagster/row_count"].value
    assert meta["window_start"].value == day.isoformat()
    assert meta["requests"].value >= 1


@pytest.mark.parametrize("table", ["profiles", "lists", "segments", "metrics", "catalog-items"])
def test_boundary_records_land_in_exactly_one_partition(defs, simulator, db_path, instance, table) -> None:
    spec = get_table(table)
    asset = defs.get_assets_def(asset_key(spec))
    for day in (date(2024, 1, 9), date(2024, 1, 10)):
        assert dg.materialize(
            [asset], partition_key=day.isoformat(), instance=instance, resources=defs.resources
        ).success
    ids = table_ids(db_path, spec.asset_name)
    assert len(ids) == len(set(ids))
    expected = simulator.ids(table, datetime(2024, 1, 9, tzinfo=UTC), datetime(2024, 1, 11, tzinfo=UTC))
    assert set(ids) == expected
    midnight = datetime(2024, 1, 10, tzinfo=UTC)
    on_boundary = {
        r["id"]
        for r in simulator.records(table)
        if r["attributes"].get(spec.incremental_key)
        and datetime.fromisoformat(r["attributes"][spec.incremental_key]).astimezone(UTC) == midnight
    }
    assert on_boundary, f"the simulator has no {table} record exactly at {midnight}"
    assert on_boundary <= set(ids)


def test_mutations_merge_without_duplicates_or_stale_values(defs, simulator, db_path, instance) -> None:
    tables = [get_table(n) for n in ("events", "profiles", "campaigns", "catalog-variants", "tags")]
    materialize_tables(defs, tables, first_day=FIRST_DAY, last_day=LAST_DAY, instance=instance)
    at = datetime(2024, 1, 10, 15, 30, tzinfo=UTC)
    changes = {t.name: simulator.mutate(t.name, updated=3, added=2, at=at) for t in tables}
    # First only the day of the change, then the whole range again: old partitions must not undo it.
    materialize_tables(defs, tables, first_day=LAST_DAY, last_day=LAST_DAY, instance=instance)
    materialize_tables(defs, tables, first_day=FIRST_DAY, last_day=LAST_DAY, instance=instance)
    assert_tables_match_simulator(db_path, simulator, tables)
    for spec in tables:
        ids = table_ids(db_path, spec.asset_name)
        assert set(changes[spec.name]["added"]) <= set(ids)
    # The updated profiles carry the simulator's current values.
    current = {r["id"]: r for r in simulator.records("profiles")}
    rows = {r[0]: r for r in table_rows(db_path, "profiles")}
    for pid in changes["profiles"]["updated"]:
        assert pid in rows
    with duckdb.connect(str(db_path), read_only=True) as conn:
        for pid in changes["profiles"]["updated"]:
            (updated,) = conn.execute(
                "SELECT updated FROM klaviyo.klaviyo.profiles WHERE id = ?", [pid]
            ).fetchone()
            assert updated == datetime.fromisoformat(current[pid]["attributes"]["updated"]).astimezone(UTC)


def test_a_failed_run_leaves_the_table_as_it_was(defs, simulator, db_path, instance) -> None:
    events = defs.get_assets_def(asset_key(get_table("events")))
    tags = defs.get_assets_def(asset_key(get_table("tags")))
    assert dg.materialize(
        [events], instance=instance, resources=defs.resources, tags=partition_range_tags(FIRST_DAY, LAST_DAY)
    ).success
    assert dg.materialize([tags], instance=instance, resources=defs.resources).success
    before = {t: table_rows(db_path, t) for t in ("events", "tags")}
    simulator.mutate("events", updated=5, added=5, at=datetime(2024, 1, 4, tzinfo=UTC))
    simulator.mutate("tags", updated=2, added=2, at=datetime(2024, 1, 4, tzinfo=UTC))
    # Small pages, so the fault strikes after some pages of the run have been fetched and staged.
    simulator.set_fault("503", rate=1.0, after=3)
    klaviyo = defs.resources["klaviyo"].model_copy(update={"max_retries": 1, "page_size": 10})
    resources = {**defs.resources, "klaviyo": klaviyo}
    for asset, tags_ in ((events, partition_range_tags(FIRST_DAY, LAST_DAY)), (tags, {})):
        result = dg.materialize(
            [asset], instance=instance, resources=resources, tags=tags_, raise_on_error=False
        )
        assert not result.success
    assert {t: table_rows(db_path, t) for t in ("events", "tags")} == before


def test_downstream_assets_load_tables_as_arrow_pandas_and_duckdb(defs, simulator, db_path, instance) -> None:
    events = defs.get_assets_def(asset_key(get_table("events")))
    seen: dict[str, object] = {}

    @dg.asset(ins={"events": dg.AssetIn(key=asset_key(get_table("events")))})
    def event_count_arrow(events: pa.Table) -> None:
        seen["arrow"] = events.num_rows

    @dg.asset(ins={"events": dg.AssetIn(key=asset_key(get_table("events")))})
    def event_count_pandas(events: pd.DataFrame) -> None:
        seen["pandas"] = len(events.index)

    @dg.asset(ins={"events": dg.AssetIn(key=asset_key(get_table("events")))})
    def event_count_duckdb(events: duckdb.DuckDBPyRelation) -> None:
        seen["duckdb"] = events.aggregate("count(*)").fetchall()[0][0]

    tags = partition_range_tags(FIRST_DAY, LAST_DAY)
    assert dg.materialize([events], instance=instance, resources=defs.resources, tags=tags).success
    downstream = [event_count_arrow, event_count_pandas, event_count_duckdb]
    result = dg.materialize(
        [events, *downstream], selection=downstream, instance=instance, resources=defs.resources
    )
    assert result.success
    expected = len(simulator.ids("events", SIM_START, SIM_END))
    assert seen == {"arrow": expected, "pandas": expected, "duckdb": expected}


@pytest.mark.parametrize(("value", "expected"), [("400MB", "381.4 MiB"), (None, None)])
def test_writes_run_under_the_duckdb_memory_limit_setting(
    sim_env, monkeypatch, instance, value, expected
) -> None:
    from omniload_assets.definitions import build_definitions
    from omniload_assets.warehouse import io_manager

    monkeypatch.setenv("OMNILOAD_DUCKDB_MEMORY_LIMIT", value or "none")
    seen: list[str] = []
    replace_table = io_manager.replace_table

    def spy(conn: duckdb.DuckDBPyConnection, **kwargs: object) -> object:
        seen.append(conn.execute("SELECT current_setting('memory_limit')").fetchone()[0])
        return replace_table(conn, **kwargs)

    monkeypatch.setattr(io_manager, "replace_table", spy)
    defs = build_definitions()
    tags = defs.get_assets_def(asset_key(get_table("tags")))
    assert dg.materialize([tags], instance=instance, resources=defs.resources).success
    with duckdb.connect() as conn:
        default = conn.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    assert seen == [expected or default]
