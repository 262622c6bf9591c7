"""`omniload ingest`, the installed console script, run as a subprocess against the simulator."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from omniload_assets.cli import (
    DAGSTER,
    OTHER,
    OURS,
    ChainedError,
    build_parser,
    choose_display,
    failure_reason,
    main,
    pick_reason,
    plan_ingest,
)
from omniload_assets.klaviyo.catalog import TABLES
from omniload_assets.klaviyo.client import ClientStats
from omniload_assets.klaviyo.errors import KlaviyoAuthError
from omniload_assets.progress import BarDisplay, LogDisplay, NullDisplay
from omniload_assets.warehouse.reads import qualified_name
from omniload_assets_tests.conftest import SIM_END, SIM_START, assert_tables_match_simulator

OMNILOAD = Path(sys.executable).parent / "omniload"
FLAGS = (
    "--source-table",
    "--source-uri",
    "--dest-uri",
    "--dest-table",
    "--interval-start",
    "--interval-end",
    "--extract-parallelism",
    "--progress",
    "--verbose",
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def run(tmp_path: Path):
    """Run the installed ``omniload`` in ``tmp_path`` with a clean environment plus ``env``."""
    if not OMNILOAD.exists():
        pytest.fail(f"{OMNILOAD} is missing: run `.venv/bin/pip install -e '.[dev]'`")

    def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        clean = {
            k: v for k, v in os.environ.items() if not k.startswith(("OMNILOAD_", "KLAVIYO_", "DAGSTER_"))
        }
        clean["OMNILOAD_STAGING_DIR"] = str(tmp_path / "staging")
        clean.update(env or {})
        return subprocess.run(
            [str(OMNILOAD), *args], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=120
        )

    return _run


def ids_in(database: Path, schema: str, table: str) -> list[str]:
    with duckdb.connect(str(database), read_only=True) as conn:
        return [
            r[0] for r in conn.execute(f"SELECT id FROM {qualified_name(conn, schema, table)}").fetchall()
        ]


def tables_in(database: Path) -> set[str]:
    with duckdb.connect(str(database), read_only=True) as conn:
        rows = conn.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall()
    return {f"{schema}.{table}" for schema, table in rows}


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert lines and "error:" in lines[-1]
    return lines[-1]


# -- the seed's command, end to end -------------------------------------------------------------


def test_the_seed_command_loads_events_into_the_dest_table(run, simulator, tmp_path) -> None:
    # The seed's command, with the simulator's key (its URL comes from KLAVIYO_BASE_URL) and an
    # interval end: up to now, Dagster would record one materialization per day since 2022 (~40 s).
    result = run(
        "ingest",
        "--source-table",
        "events",
        "--source-uri",
        f"klaviyo://?api_key={simulator.api_key}",
        "--dest-uri",
        "duckdb:///klaviyo.duckdb",
        "--interval-start",
        "2024-01-02",
        "--interval-end",
        "2024-01-10",
        "--dest-table",
        "dest.events",
        "--extract-parallelism",
        "20",
        env={"KLAVIYO_BASE_URL": simulator.base_url},
    )
    assert result.returncode == 0, result.stderr
    database = tmp_path / "klaviyo.duckdb"
    ids = ids_in(database, "dest", "events")
    assert not [i for i, n in Counter(ids).items() if n > 1]
    assert set(ids) == simulator.ids("events", utc(2024, 1, 2), utc(2024, 1, 10))
    assert set(ids) != simulator.ids("events")  # the interval held some events out
    assert tables_in(database) == {"dest.events"}  # the custom name only, no klaviyo.events
    # Not a terminal: plain progress lines on stderr, a one-line summary on stdout.
    assert "events: extracting" in result.stderr
    assert "events: extracted" in result.stderr and "records" in result.stderr
    assert result.stdout.startswith("omniload: loaded events into dest.events")
    assert f"{len(ids):,} rows written" in result.stdout
    assert simulator.api_key not in result.stdout + result.stderr


def test_a_datetime_interval_loads_its_whole_days_and_shows_429_waits(run, simulator, tmp_path) -> None:
    simulator.set_fault("429", count=2, path="catalog-items", retry_after=0)
    database = tmp_path / "out" / "warehouse.duckdb"
    result = run(
        "ingest",
        "--source-table",
        "catalog_items",  # the asset's spelling works too
        "--dest-uri",
        str(database),
        "--interval-start",
        "2024-01-03T12:00:00Z",
        "--interval-end",
        "2024-01-04T06:00:00+00:00",
        "--progress",
        "bar",
        env={"KLAVIYO_API_KEY": simulator.api_key, "KLAVIYO_BASE_URL": simulator.base_url},
    )
    assert result.returncode == 0, result.stderr
    ids = ids_in(database, "klaviyo", "catalog_items")  # the default schema and table
    assert sorted(ids) == sorted(simulator.ids("catalog-items", utc(2024, 1, 3), utc(2024, 1, 5)))
    # The bar's last frame (wrapped at 80 columns off a terminal): pages, records, records/s, 429s.
    shown = " ".join(result.stderr.split())
    assert "pages" in shown and "records (" in shown and "/s)" in shown
    assert "429 waits: 2" in shown
    assert "2 429 waits" in result.stdout


def test_a_replace_table_lands_whole_and_the_run_is_kept_in_dagster_home(run, simulator, tmp_path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    result = run(
        "ingest",
        "--source-table",
        "tags",
        "--source-uri",
        f"klaviyo://?api_key={simulator.api_key}",
        "--dest-uri",
        "duckdb:///tags.duckdb",
        "--dest-table",
        "marketing_tags",
        "--progress",
        "off",
        env={"KLAVIYO_BASE_URL": simulator.base_url, "DAGSTER_HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr
    assert "interval does not apply" not in result.stderr  # --progress off: nothing on stderr
    assert set(ids_in(tmp_path / "tags.duckdb", "klaviyo", "marketing_tags")) == simulator.ids("tags")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["klaviyo", "tags"]))
        assert event is not None
        assert event.asset_materialization.metadata["dagster/table_name"].value == "klaviyo.marketing_tags"


def test_a_rejected_key_fails_with_a_one_line_reason(run, simulator, tmp_path) -> None:
    result = run(
        "ingest",
        "--source-table",
        "events",
        "--source-uri",
        "klaviyo://?api_key=pk_wrong_key_123",
        "--dest-uri",
        "duckdb:///klaviyo.duckdb",
        "--interval-start",
        "2024-01-02",
        "--interval-end",
        "2024-01-03",
        env={"KLAVIYO_BASE_URL": simulator.base_url},
    )
    line = assert_one_line_error(result, 1)
    assert line.startswith("omniload: error: ingest of events failed:")
    assert "401" in line
    assert "pk_wrong_key_123" not in result.stderr
    assert result.stdout == ""


# -- several tables in one command --------------------------------------------------------------


def ingest_events_and_tags(
    run, start: str, end: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``omniload ingest --source-table events,tags`` into ``klaviyo.duckdb`` over ``[start, end)``."""
    args = ["--dest-uri", "duckdb:///klaviyo.duckdb", "--interval-start", start, "--interval-end", end]
    return run("ingest", "--source-table", "events,tags", *args, env=env)


@pytest.mark.parametrize("instance", ["ephemeral", "dagster_home"])
def test_several_tables_load_in_one_command_with_a_summary_line_each(
    run, simulator, tmp_path, instance
) -> None:
    env = {"KLAVIYO_API_KEY": simulator.api_key, "KLAVIYO_BASE_URL": simulator.base_url}
    if instance == "dagster_home":  # two runs: the partitioned tables, then the rest
        (tmp_path / "dagster_home").mkdir()
        env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    result = ingest_events_and_tags(run, "2024-01-03", "2024-01-05", env)
    assert result.returncode == 0, result.stderr
    database = tmp_path / "klaviyo.duckdb"
    events, tags = ids_in(database, "klaviyo", "events"), ids_in(database, "klaviyo", "tags")
    assert not [i for i, n in Counter(events + tags).items() if n > 1]
    assert set(events) == simulator.ids("events", utc(2024, 1, 3), utc(2024, 1, 5))
    assert set(events) != simulator.ids("events")  # the interval held some events out
    assert set(tags) == simulator.ids("tags")  # replaced whole: the interval does not apply
    assert tables_in(database) == {"klaviyo.events", "klaviyo.tags"}
    assert "events, tags 2024-01-03..2024-01-04 (2 days; tags replaced whole) -> schema klaviyo" in (
        result.stderr
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"omniload: loaded events into klaviyo.events in {database}: ")
    assert f": {len(events):,} rows written" in lines[0]
    assert lines[1].startswith(f"omniload: loaded tags into klaviyo.tags in {database}: ")
    assert f": {len(tags):,} rows written" in lines[1]
    if instance == "dagster_home":
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as home:
            assert len(home.get_runs()) == 2
            # Its UI shows each day as materialized.
            days = home.get_materialized_partitions(dg.AssetKey(["klaviyo", "events"]))
            assert days == {"2024-01-03", "2024-01-04"}


def test_all_loads_the_15_tables_each_as_the_simulator_holds_it(run, simulator, tmp_path) -> None:
    database = tmp_path / "warehouse" / "klaviyo.duckdb"
    result = run(
        "ingest",
        "--source-table",
        "all",
        "--dest-uri",
        str(database),
        "--interval-start",
        SIM_START.date().isoformat(),  # the simulator's whole (10-day) history
        "--interval-end",
        SIM_END.date().isoformat(),
        "--progress",
        "off",
        env={"KLAVIYO_API_KEY": simulator.api_key, "KLAVIYO_BASE_URL": simulator.base_url},
    )
    assert result.returncode == 0, result.stderr
    assert_tables_match_simulator(database, simulator, TABLES)
    assert tables_in(database) == {f"klaviyo.{t.asset_name}" for t in TABLES}
    lines = result.stdout.splitlines()
    assert [line.split()[2] for line in lines] == [t.name for t in TABLES]  # omniload: loaded <table>
    for line, spec in zip(lines, TABLES, strict=True):
        assert line.startswith(f"omniload: loaded {spec.name} into klaviyo.{spec.asset_name} in {database}: ")
        assert "rows written" in line and "?" not in line.split(":")[2]


def test_a_failed_table_among_several_is_named(run, simulator, tmp_path) -> None:
    simulator.set_fault("429", retry_after=6 * 3600, path="tags")  # a daily quota: fails at once
    env = {"KLAVIYO_API_KEY": simulator.api_key, "KLAVIYO_BASE_URL": simulator.base_url}
    result = ingest_events_and_tags(run, "2024-01-03", "2024-01-04", env)
    line = assert_one_line_error(result, 1)
    assert line.startswith("omniload: error: ingest of tags failed:")
    assert "quota is exhausted" in line
    assert result.stdout == ""


def test_a_list_of_tables_is_deduplicated_in_order(monkeypatch) -> None:
    monkeypatch.setenv("KLAVIYO_API_KEY", "pk_x")
    monkeypatch.delenv("OMNILOAD_DUCKDB_SCHEMA", raising=False)
    now = utc(2024, 3, 1)
    args = ["ingest", "--interval-start", "2024-01-01", "--dest-uri", "/data/x.duckdb", "--source-table"]
    plan = plan_ingest(build_parser().parse_args([*args, "catalog_items, events,catalog-items,"]), now=now)
    assert [s.name for s in plan.specs] == ["catalog-items", "events"]
    assert (plan.schema, plan.tables) == ("klaviyo", ("catalog_items", "events"))
    plan = plan_ingest(build_parser().parse_args([*args, "events,profiles,tags"]), now=now)
    assert plan.describe() == (
        "events, profiles, tags 2024-01-01..2024-02-29 (60 days; tags replaced whole) "
        "-> schema klaviyo in /data/x.duckdb"
    )
    plan = plan_ingest(build_parser().parse_args([*args, "tags,coupons"]), now=now)
    assert (
        plan.describe()
        == "tags, coupons (replaced whole; the interval does not apply) -> schema klaviyo in /data/x.duckdb"
    )
    assert plan_ingest(build_parser().parse_args([*args, "all"]), now=now).specs == tuple(TABLES)
    assert plan_ingest(build_parser().parse_args([*args, "tags,all"]), now=now).specs[0].name == "tags"
    # One table: as before, with the destination table in the line.
    plan = plan_ingest(build_parser().parse_args([*args, "events", "--dest-table", "dest.ev"]), now=now)
    assert (
        plan.describe() == "events 2024-01-01..2024-02-29 (60 daily partitions) -> dest.ev in /data/x.duckdb"
    )


def test_dest_table_with_several_tables_is_a_usage_error_and_writes_nothing(run, tmp_path) -> None:
    result = run(
        "ingest",
        "--source-table",
        "events,profiles",
        "--dest-table",
        "dest.events",
        "--dest-uri",
        "duckdb:///klaviyo.duckdb",
        env={"KLAVIYO_API_KEY": "pk_x", "OMNILOAD_DUCKDB_SCHEMA": "raw"},
    )
    line = assert_one_line_error(result, 2)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--dest-table names one table's destination" in line
    assert "keep their own names, in schema 'raw'" in line
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no DuckDB file, no staging


def test_an_unknown_table_in_a_list_is_named(run) -> None:
    result = run("ingest", "--source-table", "events,evnts,tags", env={"KLAVIYO_API_KEY": "pk_x"})
    line = assert_one_line_error(result, 2)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "unknown --source-table 'evnts'" in line
    assert all(t.name in line for t in TABLES)


# -- usage errors: one line, status 2, before Dagster is even loaded -----------------------------


KEY = {"KLAVIYO_API_KEY": "pk_x"}
EVENTS = ["--source-table", "events"]
BAD_FLAGS: dict[str, tuple[list[str], dict[str, str], str]] = {
    "unknown-table": (["--source-table", "evnts"], KEY, "unknown --source-table 'evnts'"),
    "bad-date": ([*EVENTS, "--interval-start", "2022-13-01"], KEY, "'2022-13-01' is not a date"),
    "missing-key": (EVENTS, {}, "no Klaviyo API key"),
    "uri-without-key": ([*EVENTS, "--source-uri", "klaviyo://?key=pk_x"], {}, "has no api_key"),
    "not-duckdb": ([*EVENTS, "--dest-uri", "postgres://h/db"], KEY, "not a DuckDB destination"),
    "parallelism": ([*EVENTS, "--extract-parallelism", "0"], KEY, "from 1 to 64"),
    "dest-table": ([*EVENTS, "--dest-table", "a.b.c"], KEY, "must be schema.table"),
    "dest-table-several": (
        ["--source-table", "events,tags", "--dest-table", "x"],
        KEY,
        "--dest-table names one table's destination",
    ),
    "unknown-in-list": (["--source-table", "events, evnts"], KEY, "unknown --source-table 'evnts'"),
    "reversed": (
        [*EVENTS, "--interval-start", "2024-02-01", "--interval-end", "2024-01-01"],
        KEY,
        "is not after --interval-start",
    ),
    "future": (
        [*EVENTS, "--interval-start", "2999-01-01", "--interval-end", "3000-01-01"],
        KEY,
        "in the future",
    ),
    "no-table": ([], {}, "the following arguments are required: --source-table"),
}


@pytest.mark.parametrize("case", ["unknown-table", "bad-date", "missing-key"])
def test_bad_flags_fail_with_one_line(run, case) -> None:
    args, env, expected = BAD_FLAGS[case]
    result = run("ingest", *args, env=env)
    line = assert_one_line_error(result, 2)
    assert expected in line
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_every_bad_flag_is_one_line_in_process(case, capsys, monkeypatch) -> None:
    """The same checks without a subprocess each (they run before Dagster is loaded)."""
    args, env, expected = BAD_FLAGS[case]
    for name in ("KLAVIYO_API_KEY", "OMNILOAD_START_DATE", "OMNILOAD_DUCKDB_PATH", "OMNILOAD_DUCKDB_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        status = main(["ingest", *args])
    except SystemExit as exit_:
        status = exit_.code
    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]


def test_an_unknown_table_lists_the_15_valid_names(run) -> None:
    line = assert_one_line_error(run("ingest", "--source-table", "nope", env={"KLAVIYO_API_KEY": "pk_x"}), 2)
    assert all(t.name in line for t in TABLES)


def test_help_documents_every_flag(run) -> None:
    result = run("ingest", "--help")
    assert result.returncode == 0
    for flag in FLAGS:
        assert flag in result.stdout
    assert "klaviyo://?api_key=" in result.stdout and "duckdb:///" in result.stdout
    assert all(t.name in result.stdout for t in TABLES)
    top = run("--help")
    assert top.returncode == 0 and "ingest" in top.stdout


def test_the_interval_defaults_to_the_start_date_until_now(monkeypatch) -> None:
    monkeypatch.setenv("KLAVIYO_API_KEY", "pk_x")
    monkeypatch.setenv("OMNILOAD_START_DATE", "2024-03-01")
    now = utc(2024, 5, 6, 7, 8)
    plan = plan_ingest(build_parser().parse_args(["ingest", "--source-table", "events"]), now=now)
    assert (plan.first_day, plan.last_day) == (date(2024, 3, 1), date(2024, 5, 6))
    assert (plan.schema, plan.tables, plan.api_key) == ("klaviyo", ("events",), "pk_x")
    args = [
        "ingest",
        "--source-table",
        "events",
        "--interval-start",
        "2024-05-01",
        "--interval-end",
        "2025-01-01",
    ]
    assert plan_ingest(build_parser().parse_args(args), now=now).last_day == date(2024, 5, 6)  # up to today
    args[-1] = "2024-05-03T00:00:00+02:00"  # 2024-05-02T22:00 UTC: the 2nd is the last day
    assert plan_ingest(build_parser().parse_args(args), now=now).last_day == date(2024, 5, 2)


# -- the progress displays, in process ----------------------------------------------------------


def test_the_displays_show_pages_records_rate_and_429_waits() -> None:
    stats = ClientStats()
    stats.add(pages=3, records=2500, requests=5, throttled=2, throttle_wait_s=1.5)
    out = io.StringIO()
    with LogDisplay(out, interval_s=0.0) as log:
        log.started("events", stats)
        log.advanced("events", stats)
        log.finished("events", stats)
    lines = out.getvalue().splitlines()
    assert lines[0] == "omniload: events: extracting"
    assert "3 pages, 2,500 records (" in lines[1] and "429 waits: 2 (1.5 s)" in lines[1]
    assert lines[-1].startswith("omniload: events: extracted 3 pages")
    out = io.StringIO()
    with BarDisplay(out) as bar:
        bar.started("events", stats)
        bar.advanced("events", stats)
        bar.finished("events", stats)
    assert (
        "events" in out.getvalue() and "2,500 records" in out.getvalue() and "429 waits: 2" in out.getvalue()
    )


def test_auto_progress_is_a_bar_on_a_terminal_and_lines_otherwise() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(choose_display("auto", io.StringIO()), LogDisplay)
    assert isinstance(choose_display("auto", Terminal()), BarDisplay)
    assert isinstance(choose_display("off", Terminal()), NullDisplay)


def test_the_failure_reason_is_our_error_behind_dagsters_wrappers() -> None:
    try:
        try:
            raise KlaviyoAuthError(
                "Klaviyo rejected key pk_secret (401)\nmore", status=401, path="/api/events"
            )
        except KlaviyoAuthError as inner:
            raise dg.DagsterExecutionStepExecutionError("Error occurred while executing op") from inner
    except Exception as outer:
        assert failure_reason(outer, "pk_secret") == "Klaviyo rejected key *** (401)"


def test_the_failure_reason_names_the_class_of_an_error_that_is_not_ours() -> None:
    try:
        try:
            raise OSError("disk full\nmore")
        except OSError as inner:
            raise dg.DagsterInvariantViolationError("wrapped") from inner
    except Exception as outer:
        assert failure_reason(outer) == "OSError: disk full"
    assert failure_reason(dg.DagsterInvariantViolationError("")) == "DagsterInvariantViolationError"


def test_the_key_advice_of_a_failure_names_where_the_key_came_from() -> None:
    exc = KlaviyoAuthError("rejected; set KLAVIYO_API_KEY to a valid private API key", status=401, path="/")
    assert failure_reason(exc).endswith("set KLAVIYO_API_KEY to a valid private API key")
    assert failure_reason(exc, key_origin="--source-uri").endswith(
        "pass a valid private API key in --source-uri (klaviyo://?api_key=pk_...)"
    )


def test_a_reason_prefers_our_error_then_any_but_dagsters() -> None:
    dagster, other, ours = ChainedError(DAGSTER, "d"), ChainedError(OTHER, "o"), ChainedError(OURS, "ours")
    assert pick_reason([dagster, other, ours], "none") == "ours"
    assert pick_reason([dagster, other], "none") == "o"
    assert pick_reason([dagster], "none") == "d"
    assert pick_reason([], "none") == "none"
