"""Asset checks on real DuckDB tables: primary key unique and not null (blocking), deleted rows; and
the freshness policies that replaced the hand-made freshness check."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from omniload_assets import settings
from omniload_assets.assets import asset_key
from omniload_assets.checks import DELETED, NOT_NULL, UNIQUE, check_names
from omniload_assets.klaviyo.catalog import TABLES, get_table
from omniload_assets.warehouse.reads import qualified_name

CHECKS = (UNIQUE, NOT_NULL)


def evaluations(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}


def materialize(defs: dg.Definitions, instance: dg.DagsterInstance, table: str) -> dg.ExecuteInProcessResult:
    """Materialize a table the way its job does: the asset, then its checks, in one run."""
    spec = get_table(table)
    asset = defs.get_assets_def(asset_key(spec))
    checks = defs.get_asset_checks_def(dg.AssetCheckKey(asset_key(spec), UNIQUE))
    result = dg.materialize(
        [asset, checks],
        instance=instance,
        resources=defs.resources,
        partition_key="2024-01-10" if spec.partitioned else None,
    )
    assert result.success
    return result


def run_checks(defs: dg.Definitions, instance: dg.DagsterInstance, table: str) -> dg.ExecuteInProcessResult:
    """Only the checks of ``table``, as the UI's "Execute checks" does (a failed blocking check
    fails the run: its result is still there)."""
    spec = get_table(table)
    asset = defs.get_assets_def(asset_key(spec))
    checks = defs.get_asset_checks_def(dg.AssetCheckKey(asset_key(spec), UNIQUE))
    return dg.materialize(
        [asset, checks],
        instance=instance,
        resources=defs.resources,
        selection=dg.AssetSelection.checks_for_assets(asset),
        raise_on_error=False,
    )


def execute(db_path: Path, table: str, sql: str) -> None:
    with duckdb.connect(str(db_path)) as conn:
        conn.execute(sql.format(table=qualified_name(conn, "klaviyo", table)))


def test_every_table_has_the_two_checks_and_merge_tables_the_deleted_rows_one(defs: dg.Definitions) -> None:
    keys = set(defs.resolve_asset_graph().asset_check_keys)
    expected = {dg.AssetCheckKey(asset_key(t), c) for t in TABLES for c in CHECKS}
    expected |= {dg.AssetCheckKey(asset_key(t), DELETED) for t in TABLES if t.strategy == "merge"}
    assert keys == expected
    assert DELETED not in check_names(get_table("tags")) and DELETED in check_names(get_table("flows"))


@pytest.mark.parametrize("table", ["profiles", "tags"])
def test_checks_pass_on_a_healthy_table_right_after_it_is_written(defs, instance, table: str) -> None:
    result = materialize(defs, instance, table)
    found = evaluations(result)
    assert set(found) == {(get_table(table).asset_name, c) for c in check_names(get_table(table))}
    name = get_table(table).asset_name
    assert found[(name, UNIQUE)].passed and found[(name, NOT_NULL)].passed
    assert found[(name, UNIQUE)].metadata["duplicated_keys"].value == 0
    assert found[(name, UNIQUE)].metadata["rows"].value > 0


def test_checks_fail_on_a_duplicated_id(defs, instance, db_path: Path) -> None:
    materialize(defs, instance, "profiles")
    with duckdb.connect(str(db_path), read_only=True) as conn:
        table = qualified_name(conn, "klaviyo", "profiles")
        (dupe,) = conn.execute(f"SELECT id FROM {table} ORDER BY id LIMIT 1").fetchone()
    execute(db_path, "profiles", f"INSERT INTO {{table}} SELECT * FROM {{table}} WHERE id = '{dupe}'")
    found = evaluations(run_checks(defs, instance, "profiles"))
    unique = found[("profiles", UNIQUE)]
    assert not unique.passed
    assert unique.severity == dg.AssetCheckSeverity.ERROR
    assert unique.metadata["duplicated_keys"].value == 1
    assert unique.metadata["sample"].value == dupe
    assert found[("profiles", NOT_NULL)].passed


def test_checks_fail_on_a_null_id(defs, instance, db_path: Path) -> None:
    materialize(defs, instance, "tags")
    execute(db_path, "tags", "INSERT INTO {table} (id, name) VALUES (NULL, 'orphan')")
    found = evaluations(run_checks(defs, instance, "tags"))
    assert not found[("tags", NOT_NULL)].passed
    assert found[("tags", NOT_NULL)].metadata["null_keys"].value == 1
    assert found[("tags", UNIQUE)].passed  # NULL is missing, not a duplicate


def test_checks_fail_when_the_table_is_missing(defs, instance) -> None:
    found = evaluations(run_checks(defs, instance, "events"))
    assert {c for (_, c), e in found.items() if not e.passed} == {*CHECKS, DELETED}


def test_deleted_rows_reports_the_marked_rows_and_passes(defs, instance, db_path: Path) -> None:
    first = evaluations(materialize(defs, instance, "profiles"))[("profiles", DELETED)]
    assert first.passed and first.metadata["deleted_rows"].value == 0
    rows = first.metadata["rows"].value
    execute(
        db_path,
        "profiles",
        "UPDATE {table} SET _deleted_at = now() WHERE id IN (SELECT id FROM {table} LIMIT 3)",
    )
    found = evaluations(run_checks(defs, instance, "profiles"))[("profiles", DELETED)]
    assert found.passed  # information, not a failure: accounts delete records
    assert found.metadata["deleted_rows"].value == 3
    assert found.metadata["active_rows"].value == rows - 3
    assert found.metadata["deleted_share"].value == round(3 / rows, 4)


def test_freshness_is_dagsters_policy_from_the_setting(sim_env, monkeypatch: pytest.MonkeyPatch) -> None:
    from omniload_assets.definitions import build_definitions

    monkeypatch.setenv("OMNILOAD_FRESHNESS_HOURS", "48,metrics=720")
    defs = build_definitions()

    def policy(table: str) -> dg.FreshnessPolicy | None:
        key = asset_key(get_table(table))
        return defs.get_assets_def(key).specs_by_key[key].freshness_policy

    assert policy("events") == dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=48))
    assert policy("metrics") == dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=720))
    assert policy("list-profiles") == dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=48))
    # The policy replaced the hand-made check of the same name.
    assert "freshness" not in {k.name for k in defs.resolve_asset_graph().asset_check_keys}


def test_freshness_setting_parses_per_table_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNILOAD_FRESHNESS_HOURS", "12, catalog_items=720 ,events=1.5")
    assert settings.freshness_max_age_hours("events") == 1.5
    assert settings.freshness_max_age_hours("catalog-items") == 720
    assert settings.freshness_max_age_hours("profiles") == 12
    monkeypatch.setenv("OMNILOAD_FRESHNESS_HOURS", "events=soon")
    with pytest.raises(settings.SettingsError, match="OMNILOAD_FRESHNESS_HOURS"):
        settings.freshness_max_age_hours("events")


def test_materialization_metadata_shows_what_the_run_did(defs, instance) -> None:
    result = materialize(defs, instance, "profiles")
    (event,) = result.asset_materializations_for_node("klaviyo__profiles")
    meta = event.metadata
    for name in (
        "dagster/row_count",
        "rows_inserted",
        "rows_updated",
        "rows_restored",
        "rows_marked_deleted",
        "window_start",
        "window_end",
        "requests",
        "throttled_429",
        "throttle_wait_s",
        "duration_s",
        "preview",
    ):
        assert name in meta, name
    assert meta["duration_s"].value >= meta["extract_s"].value > 0
    assert meta["requests"].value >= 1
