"""The deletion sweep: marking and restoring on real DuckDB files, and the job against the simulator
(real HTTP, real Dagster runs, the `dagster` command line)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omniload_assets import settings
from omniload_assets.checks import DELETED
from omniload_assets.deletions import SWEEP_JOB, SWEEP_RESOURCE, build_sweep_job, sweep_op_name
from omniload_assets.klaviyo.catalog import TableSpec, get_table
from omniload_assets.runner import materialize_tables
from omniload_assets.warehouse import deletions
from omniload_assets.warehouse.connection import open_database
from omniload_assets.warehouse.deletions import SuspiciousListingError, SweepResult, apply_listing
from omniload_assets.warehouse.reads import active_ids, qualified_name
from omniload_assets.warehouse.writer import TableOwnerError, merge_into
from omniload_assets_tests.conftest import SIM_END, SIM_START, table_ids
from omniload_assets_tests.harness import error_messages, fast_resources
from omniload_assets_tests.simulator import KlaviyoSimulator

SCHEMA = "klaviyo"
FIRST_DAY, LAST_DAY = SIM_START.date(), (SIM_END - timedelta(days=1)).date()
#: The tables a sweep lists by default: every merge table but events.
SWEPT = [get_table(name) for name in settings.parse_sweep_tables(None)]


def archived(record: dict) -> bool:
    """Whether a campaign (``definition.archived`` in this revision) or flow is archived."""
    attributes = record["attributes"]
    return bool(attributes.get("archived", (attributes.get("definition") or {}).get("archived")))


# -- marking and restoring, on a DuckDB file ---------------------------------------------------------


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with open_database(tmp_path / "wh" / "klaviyo.duckdb") as connection:
        yield connection


def load(conn: duckdb.DuckDBPyConnection, tmp_path: Path, ids: list[str], table: str = "flows") -> None:
    """Merge rows ``ids`` into ``klaviyo.<table>`` as the IO manager does."""
    path = tmp_path / f"{table}-{len(list(tmp_path.iterdir()))}.parquet"
    rows = [{"id": i, "updated": datetime(2024, 1, 1, tzinfo=UTC)} for i in ids]
    pq.write_table(pa.Table.from_pylist(rows), path)
    merge_into(
        conn,
        schema=SCHEMA,
        table=table,
        files=[path],
        primary_key="id",
        incremental_key="updated",
        column_types={"id": "VARCHAR", "updated": "TIMESTAMPTZ"},
        source=table,
    )


def sweep(conn: duckdb.DuckDBPyConnection, ids: set[str], **options: Any) -> SweepResult:
    options.setdefault("listed_since", datetime.now(UTC) + timedelta(seconds=1))
    return apply_listing(conn, schema=SCHEMA, table="flows", ids=ids, source="flows", **options)


def marked(conn: duckdb.DuckDBPyConnection, table: str = "flows") -> dict[str, datetime]:
    target = qualified_name(conn, SCHEMA, table)
    return dict(
        conn.execute(f"SELECT id, _deleted_at FROM {target} WHERE _deleted_at IS NOT NULL").fetchall()
    )


def rows_of(conn: duckdb.DuckDBPyConnection, table: str = "flows") -> list[tuple]:
    return conn.execute(f"SELECT * FROM {qualified_name(conn, SCHEMA, table)} ORDER BY id").fetchall()


def test_unlisted_rows_are_marked_and_listed_again_restored(conn, tmp_path) -> None:
    load(conn, tmp_path, ["a", "b", "c", "d"])
    first = sweep(conn, {"a", "c", "x"})  # "x": in Klaviyo, not loaded (before the start date): ignored
    assert first == SweepResult("flows", True, listed=3, rows=4, newly_deleted=2, marked=2)
    assert set(marked(conn)) == {"b", "d"}
    stamps = marked(conn)
    again = sweep(conn, {"a", "c"})
    assert (again.newly_deleted, again.restored, again.marked) == (0, 0, 2)
    assert marked(conn) == stamps  # the time a row was found gone is kept
    back = sweep(conn, {"a", "b", "c"})
    assert (back.newly_deleted, back.restored, back.marked) == (0, 1, 1)
    assert set(marked(conn)) == {"d"}
    assert active_ids(conn, SCHEMA, "flows") == ["a", "b", "c"]
    assert len(rows_of(conn)) == 4  # nothing is deleted by default


def test_a_later_merge_of_a_marked_id_clears_its_mark(conn, tmp_path) -> None:
    load(conn, tmp_path, ["a", "b"])
    sweep(conn, {"a"})
    load(conn, tmp_path, ["b"])
    assert marked(conn) == {}


def test_hard_delete_removes_the_rows_instead(conn, tmp_path) -> None:
    load(conn, tmp_path, ["a", "b", "c"])
    sweep(conn, {"a", "b"})  # "c" marked first, then hard deletion is switched on
    result = sweep(conn, {"a"}, hard_delete=True)
    assert (result.newly_deleted, result.hard_deleted, result.marked) == (1, 2, 0)
    assert [r[0] for r in rows_of(conn)] == ["a"]


def test_an_empty_listing_of_a_table_holding_rows_marks_nothing_unless_allowed(conn, tmp_path) -> None:
    load(conn, tmp_path, ["a", "b"])
    before = rows_of(conn)
    with pytest.raises(SuspiciousListingError) as caught:
        sweep(conn, set())
    assert str(caught.value) == (
        "Klaviyo listed no flows but klaviyo.flows holds 2 rows; nothing was marked. If every record "
        "really is gone, sweep again with OMNILOAD_SWEEP_ALLOW_EMPTY=1 (or allow_empty: true in the "
        "klaviyo_sweep resource's run config)"
    )
    assert rows_of(conn) == before
    assert sweep(conn, set(), allow_empty=True).newly_deleted == 2


def test_rows_loaded_after_the_listing_began_are_left_to_the_next_sweep(conn, tmp_path) -> None:
    load(conn, tmp_path, ["a"])
    listed_since = datetime.now(UTC)
    load(conn, tmp_path, ["new"])  # created in Klaviyo after the listing passed it, merged before the marking
    result = sweep(conn, {"a"}, listed_since=listed_since)
    assert (result.newly_deleted, result.too_recent, result.marked) == (0, 1, 0)
    assert marked(conn) == {}


def test_a_failure_inside_the_transaction_leaves_the_table_as_it_was(conn, tmp_path, monkeypatch) -> None:
    load(conn, tmp_path, ["a", "b", "c"])
    sweep(conn, {"a", "b"})
    before = rows_of(conn)
    real = deletions._mark

    def mark_then_fail(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)  # restores "c"... and marks "a" and "b"
        raise RuntimeError("disk full")

    monkeypatch.setattr(deletions, "_mark", mark_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        sweep(conn, {"c"})
    assert rows_of(conn) == before
    monkeypatch.undo()
    assert sweep(conn, {"c"}).newly_deleted == 2  # the connection is usable: no transaction left open


def test_a_table_written_before_deletions_existed_gets_the_column(conn, tmp_path) -> None:
    load(conn, tmp_path, ["a", "b"])
    conn.execute(f"ALTER TABLE {qualified_name(conn, SCHEMA, 'flows')} DROP COLUMN _deleted_at")
    assert sweep(conn, {"a"}).marked == 1
    assert set(marked(conn)) == {"b"}


def test_a_missing_table_is_left_alone_and_another_sources_table_refused(conn, tmp_path) -> None:
    assert sweep(conn, {"a"}) == SweepResult("flows", exists=False)
    assert conn.execute("SELECT count(*) FROM duckdb_tables()").fetchone() == (0,)
    load(conn, tmp_path, ["a"], table="lists")
    with pytest.raises(TableOwnerError, match="holds Klaviyo lists"):
        apply_listing(
            conn, schema=SCHEMA, table="lists", ids=set(), listed_since=datetime.now(UTC), source="flows"
        )


# -- the job, against the simulator ----------------------------------------------------------------


def materialize(defs: dg.Definitions, instance: dg.DagsterInstance, specs: list[TableSpec]) -> None:
    outcomes = materialize_tables(defs, specs, first_day=FIRST_DAY, last_day=LAST_DAY, instance=instance)
    assert all(o.success for o in outcomes)


def delete_some(simulator: KlaviyoSimulator, spec: TableSpec) -> set[str]:
    """Delete two records of ``spec`` upstream: one archived and one not where both kinds are listed."""
    records = sorted(simulator.records(spec.name), key=lambda r: r["id"])
    if spec.filter_variants:
        picked = {
            next(r["id"] for r in records if archived(r)),
            next(r["id"] for r in records if not archived(r)),
        }
    else:
        picked = {records[0]["id"], records[-1]["id"]}
    for rid in picked:
        assert simulator.delete_record(spec.name, rid)
    return picked


def marked_ids(db_path: Path, table: str) -> set[str]:
    with duckdb.connect(str(db_path), read_only=True) as conn:
        target = qualified_name(conn, SCHEMA, table)
        return {
            r[0] for r in conn.execute(f"SELECT id FROM {target} WHERE _deleted_at IS NOT NULL").fetchall()
        }


def observations(result: dg.ExecuteInProcessResult, spec: TableSpec) -> dict[str, Any]:
    (observation,) = result.asset_observations_for_node(sweep_op_name(spec))
    return {k: v.value for k, v in observation.metadata.items()}


def test_one_sweep_marks_exactly_the_records_deleted_upstream_in_every_swept_table(
    defs, simulator, db_path, instance
) -> None:
    materialize(defs, instance, SWEPT)
    loaded = {spec.name: set(table_ids(db_path, spec.asset_name)) for spec in SWEPT}
    gone = {spec.name: delete_some(simulator, spec) for spec in SWEPT}
    simulator.reset_stats()

    result = defs.resolve_job_def(SWEEP_JOB).execute_in_process(instance=instance)

    assert result.success
    checks = {e.asset_key.path[-1]: e for e in result.get_asset_check_evaluations()}
    for spec in SWEPT:
        assert marked_ids(db_path, spec.asset_name) == gone[spec.name], spec.name
        assert set(table_ids(db_path, spec.asset_name)) == loaded[spec.name]  # marked, not removed
        meta = observations(result, spec)
        assert meta["ids_listed"] == len(simulator.ids(spec.name))
        assert (meta["rows_newly_deleted"], meta["rows_restored"], meta["rows_marked_deleted"]) == (2, 0, 2)
        assert meta["requests"] == simulator.stats.requests[spec.path]
        check = checks[spec.asset_name]
        assert check.check_name == DELETED and check.passed
        assert check.metadata["deleted_rows"].value == 2
    assert "/api/events" not in simulator.stats.requests  # events are opt-in

    again = defs.resolve_job_def(SWEEP_JOB).execute_in_process(instance=instance)
    assert again.success
    assert all(observations(again, spec)["rows_newly_deleted"] == 0 for spec in SWEPT)
    assert all(marked_ids(db_path, spec.asset_name) == gone[spec.name] for spec in SWEPT)


def test_a_record_that_comes_back_is_restored_by_the_sweep_and_by_a_merge(
    defs, simulator, db_path, instance
) -> None:
    specs = [get_table("flows"), get_table("lists")]
    materialize(defs, instance, specs)
    flow, listed = simulator.records("flows")[0], simulator.records("lists")[0]
    simulator.delete_record("flows", flow["id"])
    simulator.delete_record("lists", listed["id"])
    job = build_sweep_job(["flows", "lists"])
    assert job.execute_in_process(instance=instance, resources=defs.resources).success
    assert marked_ids(db_path, "flows") == {flow["id"]} and marked_ids(db_path, "lists") == {listed["id"]}

    simulator.add_record("flows", flow)
    result = job.execute_in_process(instance=instance, resources=defs.resources)
    assert observations(result, get_table("flows"))["rows_restored"] == 1
    assert marked_ids(db_path, "flows") == set()

    simulator.add_record("lists", listed)  # back, and loaded again by the next run before any sweep
    materialize(defs, instance, [get_table("lists")])
    assert marked_ids(db_path, "lists") == set()
    with duckdb.connect(str(db_path), read_only=True) as conn:
        assert listed["id"] in active_ids(conn, SCHEMA, "lists")


def test_a_sweep_that_fails_part_way_marks_nothing_in_that_table(defs, simulator, db_path, instance) -> None:
    profiles, templates = get_table("profiles"), get_table("templates")
    materialize(defs, instance, [profiles, templates])
    gone = {spec.name: delete_some(simulator, spec) for spec in (profiles, templates)}
    simulator.set_fault("503", path="profiles", after=2)  # profiles' third and last page never comes
    job = build_sweep_job(["profiles", "templates"])
    resources = fast_resources(defs, max_retries=1)

    result = job.execute_in_process(instance=instance, resources=resources, raise_on_error=False)

    assert not result.success
    assert "Klaviyo /api/profiles failed 2 times (last: HTTP 503)" in error_messages(result)
    assert marked_ids(db_path, "profiles") == set()
    assert not result.asset_observations_for_node(sweep_op_name(profiles))
    assert marked_ids(db_path, "templates") == gone["templates"]  # the other table's sweep ran on
    simulator.clear_faults()
    assert job.execute_in_process(instance=instance, resources=resources).success
    assert marked_ids(db_path, "profiles") == gone["profiles"]


def test_an_empty_listing_fails_the_table_unless_the_run_allows_it(
    defs, simulator, db_path, instance
) -> None:
    forms = get_table("forms")
    materialize(defs, instance, [forms])
    everything = simulator.ids("forms")
    for rid in everything:
        simulator.delete_record("forms", rid)
    job, only_forms = defs.resolve_job_def(SWEEP_JOB), [sweep_op_name(forms)]

    refused = job.execute_in_process(instance=instance, op_selection=only_forms, raise_on_error=False)

    assert not refused.success
    assert f"Klaviyo listed no forms but klaviyo.forms holds {len(everything)} rows" in error_messages(
        refused
    )
    assert marked_ids(db_path, "forms") == set()
    allowed = job.execute_in_process(
        instance=instance,
        op_selection=only_forms,
        run_config={"resources": {SWEEP_RESOURCE: {"config": {"allow_empty": True}}}},
    )
    assert allowed.success
    assert marked_ids(db_path, "forms") == everything


def test_events_are_swept_on_request_and_hard_delete_removes_rows(
    sim_env, simulator, db_path, instance, monkeypatch
) -> None:
    from omniload_assets.definitions import build_definitions

    monkeypatch.setenv("OMNILOAD_SWEEP_TABLES", "events,segments")
    monkeypatch.setenv("OMNILOAD_HARD_DELETE", "1")
    defs = build_definitions()
    specs = [get_table("events"), get_table("segments")]
    materialize(defs, instance, specs)
    loaded = {spec.name: set(table_ids(db_path, spec.asset_name)) for spec in specs}
    gone = {spec.name: delete_some(simulator, spec) for spec in specs}

    result = defs.resolve_job_def(SWEEP_JOB).execute_in_process(instance=instance)

    assert result.success
    for spec in specs:
        assert set(table_ids(db_path, spec.asset_name)) == loaded[spec.name] - gone[spec.name]
        meta = observations(result, spec)
        assert (meta["rows_hard_deleted"], meta["rows_marked_deleted"], meta["mode"]) == (2, 0, "hard delete")


def test_a_table_not_materialized_yet_costs_no_request(defs, simulator, db_path, instance) -> None:
    result = build_sweep_job(["segments"]).execute_in_process(instance=instance, resources=defs.resources)
    assert result.success
    assert not simulator.stats.requests.get("/api/segments")
    assert not db_path.exists()


def test_the_sweep_runs_from_the_dagster_command_line(
    sim_env, simulator, db_path, instance, tmp_path
) -> None:
    from omniload_assets.definitions import build_definitions

    flows = get_table("flows")
    materialize(build_definitions(), instance, [flows])
    gone = delete_some(simulator, flows)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, **sim_env, "DAGSTER_HOME": str(home), "OMNILOAD_SWEEP_TABLES": "flows"}
    dagster = str(Path(sys.executable).with_name("dagster"))
    command = [dagster, "job", "execute", "-m", "omniload_assets", "-j", SWEEP_JOB]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert marked_ids(db_path, "flows") == gone
