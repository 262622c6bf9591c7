"""Faults Klaviyo and the machine produce: every run completes with exactly the right rows, or fails
cleanly leaving the table as it was, with a message that says what happened and what to do.

Real HTTP against the simulator's fault modes, real DuckDB files, real Dagster runs.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from omniload_assets.assets import asset_key
from omniload_assets.klaviyo.catalog import TableSpec, get_table
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets.klaviyo.errors import KlaviyoPaginationError
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager
from omniload_assets_tests.conftest import SIM_END, SIM_START, table_rows
from omniload_assets_tests.harness import (
    IN_WRITE,
    LOCK_WAIT_MARKER,
    LineWatcher,
    assert_unchanged_outside_checkpoints,
    child_command,
    error_messages,
    expected_ids,
    fast_resources,
    ids_in,
    incremental_values,
    range_tags,
    snapshot,
    start_child,
    truth_incremental_values,
)
from omniload_assets_tests.records import iter_records

FIRST_DAY = SIM_START.date()
LAST_DAY = (SIM_END - timedelta(days=1)).date()
EVENTS, PROFILES, TAGS = get_table("events"), get_table("profiles"), get_table("tags")
#: When mutations happen: after every generated record, so an update is never older than the row.
LATE = datetime(2024, 1, 10, 12, tzinfo=UTC)


def run(
    defs: dg.Definitions, specs: list[TableSpec], resources: dict, instance: dg.DagsterInstance
) -> list[dg.ExecuteInProcessResult]:
    """One run over the whole simulator window for the partitioned tables, one for the rest."""
    assets = [defs.get_assets_def(asset_key(s)) for s in specs]
    results = []
    for group, tags in (
        ([a for a in assets if a.partitions_def is not None], range_tags(FIRST_DAY, LAST_DAY)),
        ([a for a in assets if a.partitions_def is None], {}),
    ):
        if group:
            results.append(
                dg.materialize(group, resources=resources, instance=instance, tags=tags, raise_on_error=False)
            )
    return results


def assert_exact(sim, db_path: Path, specs: list[TableSpec]) -> None:
    """Every table holds exactly the simulator's records, once each, with current incremental keys."""
    for spec in specs:
        ids = ids_in(db_path, spec.asset_name)
        dupes = [i for i, n in Counter(ids).items() if n > 1]
        assert not dupes, f"{spec.name}: duplicate ids {dupes[:5]}"
        expected = expected_ids(sim, spec, SIM_START, SIM_END)
        assert expected, spec.name
        assert set(ids) == expected, (
            f"{spec.name}: missing {len(expected - set(ids))}, extra {set(ids) - expected}"
        )
        if spec.incremental_key:
            stored = incremental_values(db_path, spec)
            assert stored == truth_incremental_values(sim, spec, expected), spec.name


def metadata(results: list[dg.ExecuteInProcessResult]) -> dict[str, dict]:
    """Materialization metadata by table name."""
    out = {}
    for result in results:
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            out[mat.asset_key.path[-1]] = {k: v.value for k, v in mat.metadata.items()}
    return out


# -- transient HTTP faults: the run completes with exactly the right rows -----------------------


def test_5xx_on_5_to_20_percent_of_requests_still_lands_exactly_the_right_rows(
    defs, simulator, db_path, instance
) -> None:
    for kind, rate in (("500", 0.05), ("502", 0.05), ("503", 0.05), ("504", 0.05)):
        simulator.set_fault(kind, rate=rate)
    specs = [EVENTS, PROFILES, TAGS]
    results = run(defs, specs, fast_resources(defs, page_size=25), instance)
    assert all(r.success for r in results), [error_messages(r) for r in results]
    injected = sum(simulator.stats.faults.values())
    assert injected >= 5, f"only {injected} faults fired: the test would prove nothing"
    assert_exact(simulator, db_path, specs)
    meta = metadata(results)
    assert sum(m["retries"] for m in meta.values()) == injected


@pytest.mark.parametrize(
    ("kind", "options"),
    [("drop", {}), ("truncate", {}), ("truncate", {"malformed": True})],
    ids=["dropped-mid-body", "truncated-json", "malformed-json"],
)
def test_broken_bodies_are_retried_and_every_row_lands_once(
    defs, simulator, db_path, instance, kind, options
) -> None:
    simulator.set_fault(kind, rate=0.15, **options)
    specs = [EVENTS, TAGS]
    results = run(defs, specs, fast_resources(defs), instance)
    assert all(r.success for r in results), [error_messages(r) for r in results]
    assert simulator.stats.faults.get(kind, 0) >= 3
    assert_exact(simulator, db_path, specs)


def test_a_429_storm_with_retry_after_is_waited_out(defs, simulator, db_path, instance) -> None:
    simulator.set_fault("429", rate=0.5, count=3, retry_after=1)
    specs = [EVENTS, TAGS]
    results = run(defs, specs, fast_resources(defs), instance)
    assert all(r.success for r in results), [error_messages(r) for r in results]
    assert simulator.stats.throttled == 3
    assert_exact(simulator, db_path, specs)
    meta = metadata(results)
    assert sum(m["throttled_429"] for m in meta.values()) == 3
    assert sum(m["throttle_wait_s"] for m in meta.values()) >= 3.0


@pytest.mark.parametrize("retry_after", [1, 7, 30])
def test_client_sleeps_exactly_what_retry_after_asks_over_real_http(simulator, retry_after) -> None:
    """Retry-After of 1-30 s is honoured (sleep recorded rather than slept, the HTTP is real)."""
    simulator.set_fault("429", count=2, retry_after=retry_after, after=1)
    sleeps: list[float] = []
    stats = ClientStats()
    window = TimeWindow(SIM_START, SIM_END)
    with KlaviyoClient(
        simulator.api_key, base_url=simulator.base_url, pace=False, sleep=sleeps.append, max_retry_after_s=60
    ) as client:
        got = [
            r["id"]
            for batch in iter_records(client, EVENTS, window, page_size=200, stats=stats)
            for r in batch
        ]
    assert sorted(got) == sorted(simulator.ids("events", SIM_START, SIM_END))
    assert len(sleeps) == 2
    assert all(retry_after <= s <= retry_after + 0.25 for s in sleeps)
    assert stats.throttled == 2 and stats.retries == 0


def test_daily_quota_429_fails_fast_and_leaves_the_table_as_it_was(
    defs, simulator, db_path, instance
) -> None:
    resources = fast_resources(defs)
    assert all(r.success for r in run(defs, [EVENTS], resources, instance))
    before = snapshot(db_path, ["events"])
    simulator.mutate("events", updated=5, added=5, at=LATE)
    simulator.set_fault("429", retry_after=6 * 3600, after=2)
    simulator.reset_stats()
    started = time.monotonic()
    (result,) = run(defs, [EVENTS], resources, instance)
    elapsed = time.monotonic() - started
    assert not result.success
    message = error_messages(result)
    assert "quota is exhausted" in message and "21600" in message and "max_retry_after_s" in message
    # No request is retried after a daily-quota 429: at most one per concurrent worker got one.
    assert 1 <= simulator.stats.throttled <= defs.resources["klaviyo"].extract_parallelism
    assert elapsed < 30, f"the run waited {elapsed:.0f} s for a quota that resets in hours"
    # What the run had completely fetched is committed (issue 19), and nothing else changed.
    assert_unchanged_outside_checkpoints(db_path, before)


def test_daily_quota_can_be_waited_out_when_configured(simulator) -> None:
    """``max_retry_after_s`` raised: the client waits the hours instead (sleep recorded)."""
    simulator.set_fault("429", count=1, retry_after=5 * 3600)
    sleeps: list[float] = []
    with KlaviyoClient(
        simulator.api_key,
        base_url=simulator.base_url,
        pace=False,
        sleep=sleeps.append,
        max_retry_after_s=86400,
    ) as client:
        got = {r["id"] for batch in iter_records(client, TAGS) for r in batch}
    assert got == simulator.ids("tags")
    assert len(sleeps) == 1 and 5 * 3600 <= sleeps[0] <= 5 * 3600 + 0.25


def test_slow_responses_past_the_timeout_are_retried(defs, simulator, db_path, instance) -> None:
    simulator.set_fault("slow", count=2, seconds=5, after=1)
    specs = [EVENTS]
    results = run(defs, specs, fast_resources(defs, timeout_s=0.5, page_size=100), instance)
    assert all(r.success for r in results), [error_messages(r) for r in results]
    assert simulator.stats.faults["slow"] == 2
    assert metadata(results)["events"]["retries"] == 2
    assert_exact(simulator, db_path, specs)


def test_responses_always_slower_than_the_timeout_fail_clearly(defs, simulator, db_path, instance) -> None:
    resources = fast_resources(defs, timeout_s=0.3, max_retries=2)
    assert all(r.success for r in run(defs, [TAGS], resources, instance))
    before = snapshot(db_path, ["tags"])
    simulator.set_fault("slow", seconds=5)
    (result,) = run(defs, [TAGS], resources, instance)
    assert not result.success
    message = error_messages(result)
    assert "failed 3 times" in message
    assert "no response within timeout_s=0.3" in message and "raise timeout_s" in message
    assert snapshot(db_path, ["tags"]) == before


def test_a_repeated_cursor_stops_the_run_with_a_loop_message(defs, simulator, db_path, instance) -> None:
    # One worker: with several, an idle one may take over the rest of the window from the looping
    # page (which is correct, and loses nothing) before the loop guard sees the cursor again.
    resources = fast_resources(defs, extract_parallelism=1)
    assert all(r.success for r in run(defs, [EVENTS], resources, instance))
    before = snapshot(db_path, ["events"])
    simulator.mutate("events", updated=3, added=3, at=LATE)
    simulator.set_fault("repeat_cursor", count=1, after=4)
    (result,) = run(defs, [EVENTS], resources, instance)
    assert not result.success
    assert "same next page twice" in error_messages(result)
    assert_unchanged_outside_checkpoints(db_path, before)  # but what its checkpoints committed


def test_retries_used_up_fail_the_run_naming_the_endpoint_and_the_fix(
    defs, simulator, db_path, instance
) -> None:
    resources = fast_resources(defs, max_retries=2)
    assert all(r.success for r in run(defs, [EVENTS, TAGS], resources, instance))
    before = snapshot(db_path, ["events", "tags"])
    simulator.set_fault("503", after=3)
    for result in run(defs, [EVENTS, TAGS], resources, instance):
        assert not result.success
        message = error_messages(result)
        assert "failed 3 times (last: HTTP 503)" in message and "raise max_retries" in message
    assert_unchanged_outside_checkpoints(db_path, before)  # but what its checkpoints committed


# -- kill -9 inside the DuckDB write -------------------------------------------------------------


@pytest.mark.parametrize("table", ["events", "tags"])
def test_kill_9_inside_the_write_leaves_no_partial_batch_and_the_rerun_completes(
    defs, simulator, db_path, instance, sim_env, table
) -> None:
    spec = get_table(table)
    resources = fast_resources(defs)
    assert all(r.success for r in run(defs, [spec], resources, instance))
    before = snapshot(db_path, [spec.asset_name])
    simulator.mutate(table, updated=5, added=5, at=LATE)

    cmd = child_command([table], first=FIRST_DAY, last=LAST_DAY, pause_in_write=True)
    if not spec.partitioned:
        cmd = child_command([table], pause_in_write=True)
    child = LineWatcher(start_child(cmd, sim_env))
    child.wait_for(IN_WRITE)  # the rows are written, the transaction is open
    os.killpg(child.proc.pid, signal.SIGKILL)
    assert child.finish() == -signal.SIGKILL

    # The killed transaction left nothing behind: the table is exactly as it was.
    assert snapshot(db_path, [spec.asset_name]) == before
    with duckdb.connect(str(db_path)) as conn:  # the file opens for writing: no stale lock
        leftovers = conn.execute(
            "SELECT table_name FROM duckdb_tables() "
            "WHERE table_name LIKE '%__new' OR table_name LIKE '__omniload%'"
        ).fetchall()
    assert leftovers == []
    results = run(defs, [spec], resources, instance)
    assert all(r.success for r in results)
    assert_exact(simulator, db_path, [spec])


# -- concurrent runs against one DuckDB file -----------------------------------------------------


def _run_children_against_a_held_lock(db_path: Path, sim_env: dict, commands: list[list[str]]) -> list[str]:
    """Start every command while this process holds the DuckDB file, wait until each one waits on
    the lock (so their writes really contend), release it, and return their outputs."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    holder = duckdb.connect(str(db_path))
    try:
        children = [LineWatcher(start_child(cmd, sim_env)) for cmd in commands]
        for child in children:
            child.wait_for(LOCK_WAIT_MARKER)
    finally:
        holder.close()
    outputs = []
    for child in children:
        code = child.finish()
        assert code == 0, child.text()
        outputs.append(child.text())
    return outputs


def test_a_backfill_beside_two_runs_of_one_partition_all_finish_with_the_table_of_one_run(
    defs, simulator, db_path, sim_env, instance, tmp_path
) -> None:
    """A range backfill, and two runs of one of its days at once (a sensor run, a retry), in three
    processes whose writes queue on the DuckDB lock: all succeed; the table is the same as one run's."""
    simulator.mutate("events", updated=10, added=5, at=LATE)
    backfill = child_command(["events", "profiles"], first=FIRST_DAY, last=LAST_DAY)
    sensor_run = child_command(["events"], partition=LATE.date().isoformat())
    _run_children_against_a_held_lock(db_path, sim_env, [backfill, sensor_run, sensor_run])
    assert_exact(simulator, db_path, [EVENTS, PROFILES])

    # The same range loaded by one run alone, into another file: identical rows.
    reference = tmp_path / "reference.duckdb"
    resources = {
        **fast_resources(defs, page_size=200),
        "klaviyo_duckdb": KlaviyoDuckDBIOManager(database=str(reference), schema="klaviyo"),
    }
    assert all(r.success for r in run(defs, [EVENTS, PROFILES], resources, instance))
    for table in ("events", "profiles"):
        assert table_rows(db_path, table) == table_rows(reference, table)


# -- schema drift --------------------------------------------------------------------------------


def test_schema_drift_adds_columns_keeps_every_row_and_never_fails(
    defs, simulator, db_path, instance
) -> None:
    resources = fast_resources(defs)
    assert all(r.success for r in run(defs, [EVENTS], resources, instance))
    ordered = sorted(simulator.records("events"), key=lambda r: (r["attributes"]["datetime"], r["id"]))
    early, middle, late, other = ordered[5], ordered[len(ordered) // 2], ordered[-5], ordered[-20]
    # A new attribute appears mid-window (and is an object on a later page).
    simulator.set_attribute("events", middle["id"], "coupon_code", "SAVE10")
    simulator.set_attribute("events", late["id"], "coupon_code", {"code": "X", "pct": 10})
    # A field changes type between pages: number first, string later.
    simulator.set_attribute("events", early["id"], "score", 5)
    simulator.set_attribute("events", late["id"], "score", "five")
    # A documented BIGINT arrives as text that is not a number.
    simulator.set_attribute("events", other["id"], "timestamp", "soon")
    # A record without some attributes at all.
    bare = dict(ordered[100])
    bare["attributes"] = {"datetime": bare["attributes"]["datetime"]}
    simulator.add_record("events", bare)
    # An undocumented attribute named like the primary key must not overwrite it.
    simulator.set_attribute("events", ordered[200]["id"], "id", "not-the-id")

    results = run(defs, [EVENTS], resources, instance)
    assert all(r.success for r in results), [error_messages(r) for r in results]
    assert_exact(simulator, db_path, [EVENTS])
    added = set(metadata(results)["events"]["columns_added"].split(", "))
    assert {"coupon_code", "score", "timestamp__raw", "id__attribute"} <= added
    with duckdb.connect(str(db_path), read_only=True) as conn:

        def value(rid: str, column: str) -> object:
            row = conn.execute(
                f'SELECT "{column}" FROM klaviyo.klaviyo.events WHERE id = ?', [rid]
            ).fetchone()
            assert row is not None, rid
            return row[0]

        assert value(middle["id"], "coupon_code") == '"SAVE10"'
        assert value(late["id"], "coupon_code") == '{"code":"X","pct":10}'
        assert value(early["id"], "score") == "5"
        assert value(late["id"], "score") == '"five"'
        assert value(other["id"], "timestamp") is None
        assert value(other["id"], "timestamp__raw") == '"soon"'
        assert value(bare["id"], "uuid") is None
        assert value(bare["id"], "event_properties") is None
        assert value(ordered[200]["id"], "id__attribute") == '"not-the-id"'
        assert value(ordered[0]["id"], "coupon_code") is None


# -- the client's guards, over real HTTP ---------------------------------------------------------


def test_a_first_page_linking_to_itself_is_caught_before_refetching_it(simulator) -> None:
    simulator.set_fault("repeat_cursor", count=1)
    with (
        KlaviyoClient(simulator.api_key, base_url=simulator.base_url, pace=False) as client,
        pytest.raises(KlaviyoPaginationError, match="same next page twice"),
    ):
        list(iter_records(client, TAGS, page_size=5))
    assert simulator.stats.pages == 1
