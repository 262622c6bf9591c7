"""Long runs commit complete days as they go, and a failed run is resumed (issue 19).

Real materializations against the simulator and a real DuckDB file: a run that fails part way
leaves whole days committed (never a half-fetched one) and recorded in ``_omniload_checkpoints``;
the identical run then fetches only the rest and the table equals the simulator's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from omniload_assets.assets import asset_key
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets.runner import partition_range_tags
from omniload_assets.warehouse.checkpoints import DEFERRALS_TABLE
from omniload_assets.warehouse.reads import qualified_name
from omniload_assets_tests.conftest import SIM_END, SIM_START, table_ids
from omniload_assets_tests.harness import ledger
from omniload_assets_tests.simulator import KlaviyoSimulator

FIRST_DAY, LAST_DAY = SIM_START.date(), (SIM_END - timedelta(days=1)).date()
EVENTS = get_table("events")


@pytest.fixture
def every_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints as soon as a day completes (production: every few minutes)."""
    monkeypatch.setenv("OMNILOAD_CHECKPOINT_EVERY_S", "0")


def events_between(db_path: Path, stretches: list[tuple[datetime, datetime, str]]) -> set[str]:
    """Ids of the table's events, checking each lies in one of ``stretches``."""
    with duckdb.connect(str(db_path), read_only=True) as conn:
        rows = conn.execute(
            f"SELECT id, datetime FROM {qualified_name(conn, 'klaviyo', 'events')}"
        ).fetchall()
    outside = [i for i, when in rows if not any(start <= when < end for start, end, _ in stretches)]
    assert not outside, f"{len(outside)} events outside the committed stretches"
    return {event_id for event_id, _ in rows}


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


def test_a_run_failing_part_way_commits_complete_stretches_and_the_same_run_resumes(
    defs, simulator: KlaviyoSimulator, db_path, instance, every_page
) -> None:
    pages = len(simulator.ids("events")) // 50
    simulator.set_fault("503", rate=1.0, after=pages * 6 // 10)  # permanent from 60% of the pages
    failed = materialize_events(defs, instance, failing_resources(defs))
    assert not failed.success
    committed = ledger(db_path)
    assert committed, "the failed run committed nothing"
    # The table holds exactly the events of the committed stretches: each whole, none beyond.
    assert events_between(db_path, committed) == {
        event_id for start, end, _run in committed for event_id in simulator.ids("events", start, end)
    }
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


OMNILOAD = Path(sys.executable).parent / "omniload"


def cli_env(simulator: KlaviyoSimulator, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMNILOAD_", "KLAVIYO_", "DAGSTER_"))}
    env.update(
        {
            "KLAVIYO_API_KEY": simulator.api_key,
            "KLAVIYO_BASE_URL": simulator.base_url,
            "OMNILOAD_STAGING_DIR": str(tmp_path / "staging"),
            "OMNILOAD_CHECKPOINT_EVERY_S": "0",
        }
    )
    return env


@pytest.fixture
def big_simulator() -> Iterator[KlaviyoSimulator]:
    """30 pages of 1,000 events (the CLI's page size)."""
    with KlaviyoSimulator(
        seed=5, start=SIM_START, end=SIM_END, rate_limits=False, scale={"events": 30_000}
    ) as sim:
        yield sim


def test_omniload_ingest_killed_mid_run_resumes_with_the_identical_command(
    big_simulator: KlaviyoSimulator, tmp_path: Path
) -> None:
    simulator = big_simulator
    db_path = tmp_path / "klaviyo.duckdb"
    # One request at a time: every page's complete days are committed before the next request goes.
    command = [
        str(OMNILOAD),
        "ingest",
        "--source-table",
        "events",
        "--dest-uri",
        f"duckdb:///{db_path}",
        "--interval-start",
        FIRST_DAY.isoformat(),
        "--interval-end",
        SIM_END.date().isoformat(),
        "--extract-parallelism",
        "1",
        "--progress",
        "log",
    ]
    env = cli_env(simulator, tmp_path)
    pages = len(simulator.ids("events")) // 1000
    stall = simulator.set_fault("slow", after=pages * 8 // 10, seconds=20, path="/api/events")
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as run:
        try:
            assert stall.fired.wait(60), "the run never reached 80% of its requests"
        finally:
            run.kill()  # SIGKILL: no cleanup, no last checkpoint
        run.communicate()
    assert run.returncode == -signal.SIGKILL
    committed = ledger(db_path)
    assert committed
    partial = set(table_ids(db_path, "events"))
    assert partial and partial < simulator.ids("events")
    simulator.clear_faults()

    before = simulator.stats.requests.get("/api/events", 0)
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "events: resuming run" in resumed.stderr
    assert set(table_ids(db_path, "events")) == simulator.ids("events")
    requests = simulator.stats.requests.get("/api/events", 0) - before
    assert requests <= pages * 3 // 10, requests  # the last 20% and the day it was in
    assert not ledger(db_path)


# 60 days: Dagster records two events per day of a partition range run (about 25 ms a day).
YEAR_START, YEAR_END = datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 3, 2, tzinfo=UTC)


@pytest.fixture
def year_simulator() -> Iterator[KlaviyoSimulator]:
    """60 days of events in 20 pages: the workers each page a stretch of them."""
    scale = {"events": 20_000}
    with KlaviyoSimulator(seed=9, start=YEAR_START, end=YEAR_END, rate_limits=False, scale=scale) as sim:
        yield sim


def test_dagster_asset_materialize_out_of_quota_reports_committed_days_and_resumes(
    year_simulator: KlaviyoSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator = year_simulator
    db_path = tmp_path / "klaviyo.duckdb"
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **cli_env(simulator, tmp_path),
        "DAGSTER_HOME": str(home),
        "OMNILOAD_START_DATE": YEAR_START.date().isoformat(),
        "OMNILOAD_DUCKDB_PATH": str(db_path),
    }
    dagster = str(Path(sys.executable).with_name("dagster"))
    command = [dagster, "asset", "materialize", "-m", "omniload_assets", "--select", "klaviyo/events"]
    command += ["--partition-range", "2023-01-01...2023-03-01"]
    simulator.set_fault("429", after=12, retry_after=7200, path="/api/events")
    failed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    assert "days are committed and the same run resumes from them" in failed.stderr
    assert "schedules and the sensor wait until" in failed.stderr
    with duckdb.connect(str(db_path), read_only=True) as conn:
        (source, until), *_ = conn.execute(
            f"SELECT source, until FROM {qualified_name(conn, 'klaviyo', DEFERRALS_TABLE)}"
        ).fetchall()
    assert source == "events"
    assert until > datetime.now(UTC) + timedelta(hours=1, minutes=55)  # the quota's 7,200 s
    committed = joined(ledger(db_path))
    committed_days = {
        d
        for d in day_keys(committed)
        if any(s <= day_bounds(d)[0] and day_bounds(d)[1] <= e for s, e, _ in committed)
    }
    assert committed_days
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        materialized = instance.get_materialized_partitions(asset_key(EVENTS))
    assert materialized == committed_days  # the partition bar shows what the failed run committed

    in_committed = sum(len(simulator.ids("events", start, end)) for start, end, _ in committed)

    simulator.clear_faults()
    before = simulator.stats.records
    resumed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "events: resuming run" in resumed.stderr
    assert set(table_ids(db_path, "events")) == simulator.ids("events")
    served = simulator.stats.records - before
    assert served <= len(simulator.ids("events")) - in_committed + 1000  # the committed stretches skipped


def joined(stretches: list[tuple[datetime, datetime, str]]) -> list[tuple[datetime, datetime, str]]:
    """Touching stretches (of successive checkpoints) as one."""
    out: list[tuple[datetime, datetime, str]] = []
    for start, end, run in sorted(stretches):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(end, out[-1][1]), run)
        else:
            out.append((start, end, run))
    return out


def day_keys(stretches: list[tuple[datetime, datetime, str]]) -> set[str]:
    """The days the stretches touch."""
    days = set()
    for start, end, _ in stretches:
        day = start.astimezone(UTC).date()
        while datetime.combine(day, datetime.min.time(), UTC) < end:
            days.add(day.isoformat())
            day += timedelta(days=1)
    return days


def day_bounds(iso: str) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(iso).replace(tzinfo=UTC)
    return start, start + timedelta(days=1)


def test_checkpoints_older_than_the_max_age_are_not_resumed_from(
    defs, db_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stretches committed 30 h ago are ignored at the default 24 h, and kept when 48 h is allowed."""
    from omniload_assets.checkpointing import plan_resume
    from omniload_assets.warehouse.checkpoints import record_stretches
    from omniload_assets.warehouse.connection import open_database
    from omniload_assets.warehouse.writer import transaction

    window = TimeWindow(SIM_START, SIM_END)
    old = TimeWindow(SIM_START, SIM_START + timedelta(days=3))
    warehouse = defs.resources["klaviyo_duckdb"]
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with open_database(str(db_path)) as conn, transaction(conn):
        record_stretches(
            conn, "klaviyo", "events", window, [old], "run-1", now=datetime.now(UTC) - timedelta(hours=30)
        )
    assert plan_resume(warehouse, EVENTS, window, resume=True).done == []
    monkeypatch.setenv("OMNILOAD_CHECKPOINT_MAX_AGE_H", "48")
    assert plan_resume(warehouse, EVENTS, window, resume=True).done == [old]
    assert plan_resume(warehouse, EVENTS, window, resume=False).done == []


def test_no_resume_reaches_every_partitioned_asset_of_the_cli_run(defs) -> None:
    from omniload_assets.cli import build_parser, plan_ingest
    from omniload_assets.runner import window_run_config

    args = build_parser().parse_args(
        ["ingest", "--source-table", "events", "--source-uri", "klaviyo://?api_key=pk_x"]
    )
    assert plan_ingest(args).resume is True
    args = build_parser().parse_args(
        ["ingest", "--source-table", "events", "--source-uri", "klaviyo://?api_key=pk_x", "--no-resume"]
    )
    assert plan_ingest(args).resume is False
    assets = [defs.get_assets_def(asset_key(t)) for t in (EVENTS, get_table("tags"))]
    config = window_run_config(assets, None, None, resume=False)
    assert config == {"ops": {assets[0].op.name: {"config": {"resume": False}}}}
    assert window_run_config(assets, None, None) == {}
