"""Long runs commit complete days as they go, and a failed run is resumed (issue 19).

Real materializations against the simulator and a real DuckDB file: a run that fails part way
leaves whole days committed (never a half-fetched one) and recorded in ``_omniload_checkpoints``;
the identical run then fetches only the rest and the table equals the simulator's.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from omniload_assets.assets import asset_key
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.runner import partition_range_tags
from omniload_assets.warehouse.checkpoints import CHECKPOINTS_TABLE, DEFERRALS_TABLE
from omniload_assets.warehouse.reads import qualified_name
from omniload_assets_tests.conftest import SIM_END, SIM_START, table_ids
from omniload_assets_tests.simulator import KlaviyoSimulator

FIRST_DAY, LAST_DAY = SIM_START.date(), (SIM_END - timedelta(days=1)).date()
EVENTS = get_table("events")


@pytest.fixture
def every_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints as soon as a day completes (production: every few minutes)."""
    monkeypatch.setenv("OMNILOAD_CHECKPOINT_EVERY_S", "0")


def ledger(db_path: Path) -> list[tuple[datetime, datetime, str]]:
    with duckdb.connect(str(db_path), read_only=True) as conn:
        return conn.execute(
            f"SELECT stretch_start, stretch_end, run_id FROM {qualified_name(conn, 'klaviyo', CHECKPOINTS_TABLE)} "
            "ORDER BY 1"
        ).fetchall()


def events_by_day(db_path: Path) -> dict[date, set[str]]:
    with duckdb.connect(str(db_path), read_only=True) as conn:
        rows = conn.execute(
            f"SELECT id, datetime FROM {qualified_name(conn, 'klaviyo', 'events')}"
        ).fetchall()
    found: dict[date, set[str]] = {}
    for event_id, when in rows:
        found.setdefault(when.astimezone(UTC).date(), set()).add(event_id)
    return found


def materialize_events(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    resources: dict[str, object] | None = None,
    run_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [defs.get_assets_def(asset_key(EVENTS))],
        instance=instance,
        resources=resources or defs.resources,
        tags=partition_range_tags(FIRST_DAY, LAST_DAY),
        raise_on_error=False,
        run_config=run_config,
    )


def failing_resources(defs: dg.Definitions) -> dict[str, object]:
    """Small pages and one retry: the fault strikes part way and the run gives up at once; one
    request at a time, so the days complete in order (many workers page many pieces at once)."""
    klaviyo = defs.resources["klaviyo"].model_copy(
        update={"max_retries": 1, "retry_backoff_s": 0.01, "page_size": 50, "extract_parallelism": 1}
    )
    return {**defs.resources, "klaviyo": klaviyo}


def test_a_run_failing_part_way_commits_whole_days_and_the_same_run_resumes(
    defs, simulator: KlaviyoSimulator, db_path, instance, every_page
) -> None:
    pages = len(simulator.ids("events")) // 50
    simulator.set_fault("503", rate=1.0, after=pages * 6 // 10)  # permanent from 60% of the pages
    failed = materialize_events(defs, instance, failing_resources(defs))
    assert not failed.success
    committed = ledger(db_path)
    assert committed, "the failed run committed nothing"
    days = events_by_day(db_path)
    for start, end, _run in committed:  # every committed day is whole: all its events, no other
        day = start.astimezone(UTC)
        while day < end:
            want = simulator.ids("events", day, day + timedelta(days=1))
            assert days.get(day.date(), set()) == want, day
            day += timedelta(days=1)
    loaded = set(table_ids(db_path, "events"))
    assert loaded < simulator.ids("events")

    simulator.clear_faults()
    before = simulator.stats.requests.get("/api/events", 0)
    resumed = materialize_events(defs, instance, failing_resources(defs))
    assert resumed.success
    requests = simulator.stats.requests.get("/api/events", 0) - before
    assert set(table_ids(db_path, "events")) == simulator.ids("events")
    meta = resumed.asset_materializations_for_node(resumed.all_node_events[0].node_name)[-1].metadata
    assert meta["resumed"].value is True
    assert meta["days_skipped"].value >= 1
    assert not ledger(db_path), "a successful run forgets its range's checkpoints"
    full = pages + 10
    assert requests < full * 0.6

    again = materialize_events(defs, instance, failing_resources(defs))
    assert again.success
    meta = again.asset_materializations_for_node(again.all_node_events[0].node_name)[-1].metadata
    assert meta["resumed"].value is False


def test_a_quota_429_commits_what_is_complete_and_defers_the_endpoint(
    defs, simulator: KlaviyoSimulator, db_path, instance, every_page
) -> None:
    pages = len(simulator.ids("events")) // 50
    simulator.set_fault("429", rate=1.0, after=pages // 2, retry_after=7200)
    result = materialize_events(defs, instance, failing_resources(defs))
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error
    message = str(failure.cause.message if failure.cause else failure.message)
    assert "until about" in message and "resumes" in message, message
    assert ledger(db_path)
    with duckdb.connect(str(db_path), read_only=True) as conn:
        (source, until), *_ = conn.execute(
            f"SELECT source, until FROM {qualified_name(conn, 'klaviyo', DEFERRALS_TABLE)}"
        ).fetchall()
    assert source == "events"
    assert until > datetime.now(UTC) + timedelta(hours=1, minutes=55)


def test_no_resume_fetches_everything(
    defs, simulator: KlaviyoSimulator, db_path, instance, every_page
) -> None:
    pages = len(simulator.ids("events")) // 50
    simulator.set_fault("503", rate=1.0, after=pages // 2)
    assert not materialize_events(defs, instance, failing_resources(defs)).success
    assert ledger(db_path)
    simulator.clear_faults()
    op = defs.get_assets_def(asset_key(EVENTS)).op.name
    result = materialize_events(
        defs, instance, failing_resources(defs), {"ops": {op: {"config": {"resume": False}}}}
    )
    assert result.success
    meta = result.asset_materializations_for_node(op)[-1].metadata
    assert meta["resumed"].value is False
    assert set(table_ids(db_path, "events")) == simulator.ids("events")
