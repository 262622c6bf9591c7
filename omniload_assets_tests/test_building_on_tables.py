"""The README's "Building on the tables" examples as real materializations: downstream assets that
take a Klaviyo table as pandas, polars or a DuckDB relation, see rows marked deleted, take only
their partition's rows, and sit in another code location merged with this one.

(test_assets.py checks that a whole table arrives as Arrow, pandas and a relation.)
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from omniload_assets.assets import asset_key
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.partitions import daily_partitions
from omniload_assets.runner import partition_range_tags
from omniload_assets.warehouse.reads import qualified_name
from omniload_assets_tests.conftest import SIM_END, SIM_START
from omniload_assets_tests.simulator import KlaviyoSimulator

EVENTS = dg.AssetIn(key=dg.AssetKey(["klaviyo", "events"]))
PROFILES = dg.AssetIn(key=dg.AssetKey(["klaviyo", "profiles"]))
RANGE = partition_range_tags(SIM_START.date(), (SIM_END - timedelta(days=1)).date())

try:
    import polars as pl
except ImportError:  # optional: only the polars example needs it
    pl = None


# -- the README's assets ------------------------------------------------------------------------


@dg.asset(ins={"events": EVENTS})
def event_count(events: pa.Table) -> int:
    return events.num_rows


@dg.asset(ins={"profiles": PROFILES})
def profiles_per_locale(profiles: pd.DataFrame) -> pd.Series:
    return profiles[profiles["_deleted_at"].isna()]["locale"].value_counts()


@dg.asset(ins={"events": EVENTS})
def events_per_day(events: duckdb.DuckDBPyRelation) -> list[tuple]:
    return events.query(
        "events",
        "SELECT CAST(datetime AT TIME ZONE 'UTC' AS DATE) AS day, count(*) AS events "
        "FROM events WHERE _deleted_at IS NULL GROUP BY day ORDER BY day",
    ).fetchall()


def build_events_of_the_day() -> dg.AssetsDefinition:
    """The README's partitioned asset, made once the environment (OMNILOAD_START_DATE) is set, as
    a code location's module is imported. Its ``context`` is not annotated here: under this module's
    ``from __future__ import annotations`` Dagster sees the annotation as a string and refuses it
    (the README's module has no such import)."""

    @dg.asset(partitions_def=daily_partitions(), ins={"events": EVENTS})
    def events_of_the_day(context, events: pa.Table) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"day": context.partition_key, "events": events.num_rows})

    return events_of_the_day


# -- helpers -----------------------------------------------------------------------------------------


def load(defs: dg.Definitions, instance: dg.DagsterInstance, *tables: str) -> list[dg.AssetsDefinition]:
    """Materialize ``tables`` over the simulator's days in one run; their asset definitions."""
    assets = [defs.get_assets_def(asset_key(get_table(t))) for t in tables]
    assert dg.materialize(assets, instance=instance, resources=defs.resources, tags=RANGE).success
    return assets


def mark_deleted(db_path: Path, table: str) -> str:
    """Mark one row deleted, as the deletion sweep does; its id."""
    with duckdb.connect(str(db_path)) as conn:
        name = qualified_name(conn, "klaviyo", table)
        (gone,) = conn.execute(f"SELECT min(id) FROM {name}").fetchone()
        conn.execute(f"UPDATE {name} SET _deleted_at = now() WHERE id = ?", [gone])
    return gone


def downstream(
    defs: dg.Definitions, instance: dg.DagsterInstance, upstream: list[dg.AssetsDefinition], *assets: object
) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        [*upstream, *assets], selection=list(assets), instance=instance, resources=defs.resources
    )
    assert result.success
    return result


def event_days(simulator: KlaviyoSimulator, leave_out: str) -> Counter[date]:
    return Counter(
        datetime.fromisoformat(e["attributes"]["datetime"]).astimezone(UTC).date()
        for e in simulator.records("events")
        if e["id"] != leave_out and SIM_START <= datetime.fromisoformat(e["attributes"]["datetime"]) < SIM_END
    )


# -- tests -----------------------------------------------------------------------------------------


def test_downstream_assets_see_rows_marked_deleted_until_they_filter_them(
    defs, simulator, db_path, instance
) -> None:
    upstream = load(defs, instance, "events", "profiles")
    gone_event, gone_profile = mark_deleted(db_path, "events"), mark_deleted(db_path, "profiles")
    result = downstream(defs, instance, upstream, event_count, events_per_day, profiles_per_locale)
    events = simulator.ids("events", SIM_START, SIM_END)
    assert result.output_for_node("event_count") == len(events)  # the marked row included
    per_day = {day: n for day, n in result.output_for_node("events_per_day")}
    assert per_day == dict(event_days(simulator, leave_out=gone_event))
    assert sum(per_day.values()) == len(events) - 1
    profiles = [
        r for r in simulator.records("profiles") if r["id"] in simulator.ids("profiles", SIM_START, SIM_END)
    ]
    locales = Counter(r["attributes"]["locale"] for r in profiles if r["id"] != gone_profile)
    assert result.output_for_node("profiles_per_locale").to_dict() == {
        k: v for k, v in locales.items() if k is not None
    }


@pytest.mark.skipif(pl is None, reason="polars is not installed")
def test_a_downstream_asset_takes_a_table_as_polars(defs, simulator, db_path, instance) -> None:
    @dg.asset(ins={"profiles": PROFILES})
    def profiles_with_email(profiles: pl.DataFrame) -> int:
        return profiles.filter(pl.col("_deleted_at").is_null() & pl.col("email").is_not_null()).height

    upstream = load(defs, instance, "profiles")
    gone = mark_deleted(db_path, "profiles")
    result = downstream(defs, instance, upstream, profiles_with_email)
    in_window = simulator.ids("profiles", SIM_START, SIM_END)
    expected = [
        r["id"]
        for r in simulator.records("profiles")
        if r["id"] in in_window and r["id"] != gone and r["attributes"]["email"] is not None
    ]
    assert expected
    assert result.output_for_node("profiles_with_email") == len(expected)


def test_a_partitioned_downstream_asset_gets_its_days_rows(defs, simulator, instance) -> None:
    events_of_the_day = build_events_of_the_day()
    upstream = load(defs, instance, "events")
    assert events_of_the_day.partitions_def == upstream[0].partitions_def
    for day in ("2024-01-05", "2024-01-09"):
        result = dg.materialize(
            [*upstream, events_of_the_day],
            selection=[events_of_the_day],
            partition_key=day,
            instance=instance,
            resources=defs.resources,
        )
        assert result.success
        (materialization,) = result.asset_materializations_for_node(events_of_the_day.op.name)
        start = datetime.fromisoformat(day).replace(tzinfo=UTC)
        expected = simulator.ids("events", start, start + timedelta(days=1))
        assert expected
        assert materialization.metadata["events"].value == len(expected)
        assert materialization.metadata["day"].value == day


def test_assets_of_another_code_location_merge_with_these(defs, simulator, instance) -> None:
    merged = dg.Definitions.merge(dg.Definitions(assets=[event_count]), defs)
    graph = merged.resolve_asset_graph()
    assert graph.get(event_count.key).parent_keys == {dg.AssetKey(["klaviyo", "events"])}
    upstream = load(merged, instance, "events")
    result = downstream(merged, instance, upstream, event_count)
    assert result.output_for_node("event_count") == len(simulator.ids("events", SIM_START, SIM_END))
