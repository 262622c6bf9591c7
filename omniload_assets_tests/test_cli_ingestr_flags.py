"""``omniload ingest`` takes ``ingestr ingest``'s flags: parsed and checked, and run against the
simulator, in process (``cli.main``); a dry run and a --full-refresh load go through the installed
console script end to end."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from omniload_assets.assets import asset_key
from omniload_assets.cli import build_parser, main, plan_ingest
from omniload_assets.ingestr_flags import REFUSED_FLAGS
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.runner import plan_runs, window_run_config
from omniload_assets.warehouse.reads import qualified_name
from omniload_assets_tests.test_cli import OMNILOAD, assert_one_line_error, ids_in

EVENTS, TAGS, PROFILES = get_table("events"), get_table("tags"), get_table("profiles")
NOW = datetime(2024, 3, 1, tzinfo=UTC)
BASE = ["ingest", "--interval-start", "2024-01-01", "--dest-uri", "/data/x.duckdb"]
#: Every flag of ``ingestr ingest`` (ingestr's cmd/ingest.go and its former Python main.py), and
#: whether it takes a value.
INGESTR_FLAGS = {
    **dict.fromkeys(
        ["--source-uri", "--dest-uri", "--source-table", "--dest-table", "--incremental-key"]
        + ["--incremental-predicate", "--incremental-strategy", "--interval-start", "--interval-end"]
        + ["--primary-key", "--partition-by", "--cluster-by", "--schema-contract", "--schema-naming"]
        + ["--progress", "--page-size", "--loader-file-size", "--loader-file-format", "--extract-parallelism"]
        + ["--extract-partition-by", "--extract-partition-interval", "--sql-limit", "--sql-exclude-columns"]
        + ["--sql-backend", "--sql-reflection-level", "--columns", "--mask", "--pipelines-dir"]
        + ["--staging-bucket", "--staging-dataset", "--flush-interval", "--flush-records", "--metrics-addr"]
        + ["--query-annotations", "--yield-limit"],
        True,
    ),
    **dict.fromkeys(
        ["--yes", "--full-refresh", "--disable-prestaging", "--no-inference", "--trim-whitespace"]
        + ["--no-load-timestamp", "--debug", "--stream"],
        False,
    ),
}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def plan(*args: str):
    return plan_ingest(build_parser().parse_args([*BASE, *args]), now=NOW)


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMNILOAD_START_DATE", "OMNILOAD_DUCKDB_PATH", "OMNILOAD_DUCKDB_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KLAVIYO_API_KEY", "pk_x")


# -- parsing and checking, in process ------------------------------------------------------------


def test_the_write_flags_become_each_tables_op_config() -> None:
    p = plan("--source-table", "events", "--incremental-strategy", "delete+insert", "--primary-key", "uuid")
    assert p.write.run_config(EVENTS) == {"incremental_strategy": "delete+insert", "primary_key": ["uuid"]}
    assert p.resume is True
    p = plan("--source-table", "events,tags", "--incremental-strategy", "append")
    assert [p.write.run_config(s) for s in p.specs] == [{"incremental_strategy": "append"}] * 2
    # --full-refresh: the table becomes this run's rows whatever the strategy, no checkpoints.
    p = plan("--source-table", "events,tags", "--full-refresh", "--incremental-strategy", "merge")
    assert p.write.run_config(EVENTS) == {"full_refresh": True, "incremental_strategy": "replace"}
    assert p.write.run_config(TAGS) == {"full_refresh": True}  # replace is the table's own
    assert p.resume is False
    # A composite key, repeated and comma-separated; name:type entries pass on as they are.
    p = plan("--source-table", "profiles", "--primary-key", "email,phone_number", "--primary-key", "id")
    assert p.write.primary_key == ("email", "phone_number", "id")
    p = plan("--source-table", "profiles", "--columns", "email, first_name", "--columns", "created:date")
    assert p.write.run_config(PROFILES) == {"columns": ["email", "first_name", "created:date"]}
    assert p.write.selected(PROFILES) == ["id", "email", "first_name", "created", "updated"]
    p = plan("--source-table", "profiles", "--sql-exclude-columns", "properties,location")
    columns = p.write.run_config(PROFILES)["columns"]
    assert "properties" not in columns and "location" not in columns and "email" in columns
    assert set(columns) == set(PROFILES.column_types()) - {"properties", "location"}


def test_the_table_s_own_values_change_nothing() -> None:
    plain = plan("--source-table", "events")
    same = plan(
        "--source-table",
        "events",
        "--yes",
        "--incremental-strategy",
        "none",
        "--incremental-key",
        "datetime",
        "--primary-key",
        "id",
        "--loader-file-format",
        "parquet",
        "--schema-naming",
        "snake_case",
        "--schema-contract",
        "evolve",
    )
    assert same.write.run_config(EVENTS) == {} == plain.write.run_config(EVENTS)
    assert same.describe() == plain.describe()
    assert plan("--source-table", "events", "--incremental-strategy", "merge").write.run_config(EVENTS) == {}


def test_page_size_staging_and_progress_aliases(tmp_path: Path) -> None:
    p = plan("--source-table", "tags", "--page-size", "5", "--pipelines-dir", str(tmp_path / "pipes"))
    assert (p.page_size, p.staging_dir) == (5, str(tmp_path / "pipes"))
    assert "pages of up to 5 records" in p.describe()
    for given, mode in (("interactive", "bar"), ("log", "log"), ("off", "off")):
        args = build_parser().parse_args([*BASE, "--source-table", "tags", "--progress", given])
        assert args.progress == mode
    assert build_parser().parse_args([*BASE, "--source-table", "tags", "--debug"]).verbose is True


USAGE_ERRORS: dict[str, tuple[list[str], str]] = {
    "delete-insert-without-key": (
        ["--source-table", "events,tags", "--incremental-strategy", "delete+insert"],
        "which tags do not have",
    ),
    "scd2": (["--source-table", "events", "--incremental-strategy", "scd2"], "scd2 (a row per version)"),
    "removed-strategy": (
        ["--source-table", "events", "--incremental-strategy", "truncate+insert"],
        "removed from ingestr; use replace",
    ),
    "unknown-strategy": (["--source-table", "events", "--incremental-strategy", "upsert"], "not a strategy"),
    "other-incremental-key": (
        ["--source-table", "events", "--incremental-key", "timestamp"],
        "Klaviyo filters events by a fixed key, which is 'datetime'",
    ),
    "no-incremental-key": (
        ["--source-table", "tags", "--incremental-key", "updated"],
        "which does not exist",
    ),
    "primary-key-column": (
        ["--source-table", "events", "--primary-key", "email"],
        "events has no column 'email'",
    ),
    "primary-key-tables": (
        ["--source-table", "events,profiles", "--primary-key", "id"],
        "--primary-key names columns of one table",
    ),
    "columns-column": (["--source-table", "events", "--columns", "id,emial"], "has no column 'emial'"),
    "columns-rename": (["--source-table", "events", "--columns", "id:text:uid"], "renaming is not supported"),
    "columns-type": (["--source-table", "events", "--columns", "uuid:integr"], "'integr' is not a type"),
    "exclude-key": (
        ["--source-table", "events", "--sql-exclude-columns", "id"],
        "always keeps its key columns",
    ),
    "page-size": (["--source-table", "events", "--page-size", "0"], "argument --page-size: '0' is not"),
    "progress-json": (["--source-table", "events", "--progress", "json"], "json (ingestr's machine-readable"),
    "loader-format": (["--source-table", "events", "--loader-file-format", "csv"], "omniload stages Parquet"),
    "schema-naming": (["--source-table", "events", "--schema-naming", "direct"], "fixed snake_case"),
    "schema-contract": (["--source-table", "events", "--schema-contract", "freeze"], "always evolves"),
}


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_a_flag_that_cannot_apply_is_one_usage_line(case, capsys) -> None:
    args, expected = USAGE_ERRORS[case]
    try:
        status = main([*BASE, *args])
    except SystemExit as exit_:
        status = exit_.code
    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


@pytest.mark.parametrize("flag", REFUSED_FLAGS)
def test_each_refused_ingestr_flag_says_why_in_one_line(flag, capsys) -> None:
    takes_value, reason = REFUSED_FLAGS[flag]
    with pytest.raises(SystemExit) as exit_:
        main([*BASE, "--source-table", "events", flag, *(["x"] if takes_value else [])])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"omniload ingest: error: {flag}: {reason} (see omniload ingest --help)"]
    assert reason.startswith(("cannot apply: ", "not supported: "))


def test_every_ingestr_flag_is_known_to_ingest_and_documented(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    text = capsys.readouterr().out
    for flag in INGESTR_FLAGS:
        assert flag in text, flag
    # None is unknown to argparse: each is taken, or refused with its reason (not "unrecognized").
    for flag, takes_value in INGESTR_FLAGS.items():
        with contextlib.suppress(SystemExit):
            main([*BASE, "--source-table", "events", "--dry-run", flag, *(["x"] if takes_value else [])])
        assert "unrecognized arguments" not in capsys.readouterr().err, flag


def test_write_options_reach_every_asset_in_either_run(defs) -> None:
    assets = [defs.get_assets_def(asset_key(t)) for t in (EVENTS, TAGS)]
    write = {"events": {"full_refresh": True}, "tags": {"incremental_strategy": "append"}}
    config = window_run_config(assets, utc(2024, 1, 3).date(), utc(2024, 1, 4).date(), True, write)
    events, tags = (a.op.name for a in assets)
    assert config["ops"][events]["config"] == {
        "start": "2024-01-03T00:00:00+00:00",
        "end": "2024-01-05T00:00:00+00:00",
        "full_refresh": True,
    }
    assert config["ops"][tags]["config"] == {"incremental_strategy": "append"}  # unpartitioned too
    # With partition status (a $DAGSTER_HOME instance): a partition-range run, then the rest.
    days = (utc(2024, 1, 3).date(), utc(2024, 1, 4).date())
    ranged, whole = plan_runs(assets, days, True, {}, False, write)
    assert ranged[2]["ops"] == {events: {"config": {"resume": False, "full_refresh": True}}}
    assert whole[2]["ops"] == {tags: {"config": {"incremental_strategy": "append"}}}
    # Without write options an unpartitioned asset gets no op config, as before.
    (single,) = plan_runs(assets, days, False, {"loggers": {}}, True, None)
    window = {"start": "2024-01-03T00:00:00+00:00", "end": "2024-01-05T00:00:00+00:00"}
    assert single[2] == {"loggers": {}, "ops": {events: {"config": window}}}


# -- runs against the simulator: in process, and twice as the installed console script ------------

#: The variables a run reads or (``cli.set_environment``) writes: cleared before each run, as for a
#: subprocess started with a clean environment.
OWN_VARIABLES = ("OMNILOAD_", "KLAVIYO_", "DAGSTER_")
PACKAGE_LOGGER = logging.getLogger("omniload_assets")
Run = Callable[..., subprocess.CompletedProcess[str]]


@contextlib.contextmanager
def restored_environ() -> Iterator[None]:
    """``os.environ`` exactly as it was on entry, once the block ends (however it ends)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def sim_environ(simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No OMNILOAD_*/KLAVIYO_*/DAGSTER_* but the simulator's key and URL and a staging directory in
    ``tmp_path`` (the working directory); on exit ``os.environ``, the package logger's level and the
    warning filters (``ingest`` sets both) are as they were."""
    monkeypatch.chdir(tmp_path)
    level = PACKAGE_LOGGER.level
    with restored_environ(), warnings.catch_warnings():
        for name in [name for name in os.environ if name.startswith(OWN_VARIABLES)]:
            del os.environ[name]
        os.environ["OMNILOAD_STAGING_DIR"] = str(tmp_path / "staging")
        os.environ["KLAVIYO_API_KEY"] = simulator.api_key
        os.environ["KLAVIYO_BASE_URL"] = simulator.base_url
        try:
            yield
        finally:
            PACKAGE_LOGGER.setLevel(level)


def ingest_argv(database: Path, args: Sequence[str]) -> list[str]:
    return ["ingest", "--dest-uri", str(database), "--progress", "off", *args]


@pytest.fixture
def run(sim_environ, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """``omniload ingest`` in this process (``cli.main``), into ``database`` (``tmp_path/k.duckdb``),
    with ``env`` set for the call only: each call starts from the environment a subprocess gets."""

    def _run(
        *args: str, env: dict[str, str] | None = None, database: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = ingest_argv(database or tmp_path / "k.duckdb", args)
        handlers = list(PACKAGE_LOGGER.handlers)
        capsys.readouterr()
        with restored_environ():
            os.environ.update(env or {})
            try:
                status = main(argv)
            except SystemExit as exit_:  # argparse: a usage error
                status = exit_.code
        assert PACKAGE_LOGGER.handlers == handlers  # ingest removes the display handler it adds
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(argv, status, out, err)

    return _run


@pytest.fixture
def run_installed(sim_environ, tmp_path: Path) -> Run:
    """The installed ``omniload ingest`` in a subprocess, with the environment ``run`` gives a call."""

    def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(OMNILOAD), *ingest_argv(tmp_path / "k.duckdb", args)],
            cwd=tmp_path,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=180,
        )

    return _run


def interval(first: str, end: str) -> list[str]:
    return ["--interval-start", first, "--interval-end", end]


def execute(database: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(database)) as conn:
        return conn.execute(sql).fetchall()


def plant_events(database: Path) -> None:
    """Two events Klaviyo does not have: one on 2024-01-03 (inside the reloads below), one on the 9th."""
    with duckdb.connect(str(database)) as conn:
        table = qualified_name(conn, "klaviyo", "events")
        conn.execute(
            f"INSERT INTO {table} (id, datetime) VALUES "
            "('planted-in', TIMESTAMPTZ '2024-01-03 12:00:00+00'), "
            "('planted-out', TIMESTAMPTZ '2024-01-09 12:00:00+00')"
        )


def runs_in(home: Path) -> int:
    """How many runs the Dagster instance in ``home`` (a $DAGSTER_HOME) holds."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return len(instance.get_run_records())


def test_the_installed_command_prints_a_dry_run_without_a_request(run_installed, simulator, tmp_path) -> None:
    result = run_installed(
        "--source-table",
        "events,tags",
        "--dry-run",
        "--incremental-strategy",
        "append",
        *interval("2024-01-02", "2024-01-04"),
    )
    assert result.returncode == 0, result.stderr
    assert simulator.stats.total_requests == 0
    assert not (tmp_path / "k.duckdb").exists()
    lines = result.stdout.splitlines()
    assert lines[0] == "omniload: dry run: no request made, nothing written"
    assert "interval: 2024-01-02..2024-01-03 (2 UTC days)" in result.stdout
    assert (
        "  events -> klaviyo.events: strategy append; incremental key datetime; primary key id; columns all"
        in lines
    )
    assert any(
        line.startswith("  tags -> klaviyo.tags: strategy append, the interval does not apply")
        for line in lines
    )


def test_yes_pipelines_dir_and_page_size(run, simulator, tmp_path) -> None:
    # --yes is accepted, and --pipelines-dir is where the run stages.
    result = run("--source-table", "tags", "--yes", "--pipelines-dir", str(tmp_path / "pipes"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("omniload: loaded tags into klaviyo.tags")
    assert set(ids_in(tmp_path / "k.duckdb", "klaviyo", "tags")) == simulator.ids("tags")
    assert (tmp_path / "pipes").is_dir() and not (tmp_path / "staging").exists()
    assert simulator.stats.pages == 1  # 25 tags, pages of 50
    # --page-size sets the records per request.
    simulator.reset_stats()
    result = run("--source-table", "tags", "--page-size", "5")
    assert result.returncode == 0, result.stderr
    stats = simulator.stats
    assert stats.pages == 5 and stats.records == 25
    assert set(ids_in(tmp_path / "k.duckdb", "klaviyo", "tags")) == simulator.ids("tags")


@pytest.mark.parametrize("instance", ["ephemeral", "dagster_home"])
def test_full_refresh_makes_the_table_this_runs_rows(
    run, run_installed, simulator, tmp_path, instance
) -> None:
    env = {}
    if instance == "dagster_home":
        (tmp_path / "home").mkdir()
        env["DAGSTER_HOME"] = str(tmp_path / "home")
    database = tmp_path / "k.duckdb"
    assert run("--source-table", "events", *interval("2024-01-02", "2024-01-06"), env=env).returncode == 0
    plant_events(database)
    # The ephemeral run is the installed console script's, end to end: it takes the flag.
    refresh = run_installed if instance == "ephemeral" else run
    days = interval("2024-01-03", "2024-01-05")
    result = refresh("--source-table", "events", "--full-refresh", *days, env=env)
    assert result.returncode == 0, result.stderr
    ids = ids_in(database, "klaviyo", "events")
    assert sorted(ids) == sorted(simulator.ids("events", utc(2024, 1, 3), utc(2024, 1, 5)))
    if instance == "dagster_home":  # both commands ran on the instance in $DAGSTER_HOME
        assert runs_in(tmp_path / "home") == 2


STRATEGY_RESULTS = {
    # The table after loading 2024-01-02..05, planting two events, and loading 03..04 again.
    "merge": lambda loaded, again: loaded | {"planted-in", "planted-out"},
    "replace": lambda loaded, again: again,
    "append": lambda loaded, again: loaded | {"planted-in", "planted-out"},
    "delete+insert": lambda loaded, again: loaded | {"planted-out"},
}


def test_each_incremental_strategy_writes_as_ingestr_does(run, simulator, tmp_path) -> None:
    loaded_db = tmp_path / "loaded.duckdb"
    result = run("--source-table", "events", *interval("2024-01-02", "2024-01-06"), database=loaded_db)
    assert result.returncode == 0, result.stderr
    plant_events(loaded_db)
    loaded = simulator.ids("events", utc(2024, 1, 2), utc(2024, 1, 6))
    again = simulator.ids("events", utc(2024, 1, 3), utc(2024, 1, 5))
    for strategy, expected in STRATEGY_RESULTS.items():
        database = tmp_path / f"{strategy}.duckdb"  # each strategy reloads its own copy
        shutil.copyfile(loaded_db, database)
        reload = ["--source-table", "events", "--incremental-strategy", strategy]
        result = run(*reload, *interval("2024-01-03", "2024-01-05"), database=database)
        assert result.returncode == 0, (strategy, result.stderr)
        ids = Counter(ids_in(database, "klaviyo", "events"))
        assert set(ids) == expected(loaded, again), strategy
        twice = {i for i, n in ids.items() if n > 1}
        assert twice == (again if strategy == "append" else set()), strategy  # only append keeps both


@pytest.mark.parametrize("instance", ["ephemeral", "dagster_home"])
def test_a_strategy_reaches_an_unpartitioned_table(run, simulator, tmp_path, instance) -> None:
    env = {}
    if instance == "dagster_home":
        (tmp_path / "home").mkdir()
        env["DAGSTER_HOME"] = str(tmp_path / "home")
    for _ in range(2):
        result = run(
            "--source-table",
            "events,tags",
            "--incremental-strategy",
            "append",
            *interval("2024-01-03", "2024-01-04"),
            env=env,
        )
        assert result.returncode == 0, result.stderr
    tags = Counter(ids_in(tmp_path / "k.duckdb", "klaviyo", "tags"))
    assert set(tags) == simulator.ids("tags") and set(tags.values()) == {2}
    if instance == "dagster_home":  # each command ran the partitioned table, then the other
        assert runs_in(tmp_path / "home") == 4


def test_primary_key_merges_by_the_given_columns(run, simulator, tmp_path) -> None:
    database = tmp_path / "k.duckdb"
    assert run("--source-table", "events", *interval("2024-01-03", "2024-01-04")).returncode == 0
    # One stored event gets another id and an older time: only a merge by uuid finds it again.
    (changed,) = execute(
        database,
        "UPDATE klaviyo.events SET id = 'changed-id', datetime = datetime - INTERVAL 1 HOUR "
        "WHERE id = (SELECT min(id) FROM klaviyo.events) RETURNING uuid",
    )
    result = run("--source-table", "events", "--primary-key", "uuid", *interval("2024-01-03", "2024-01-04"))
    assert result.returncode == 0, result.stderr
    ids = ids_in(database, "klaviyo", "events")
    assert sorted(ids) == sorted(simulator.ids("events", utc(2024, 1, 3), utc(2024, 1, 4)))
    assert execute(database, f"SELECT count(*) FROM klaviyo.events WHERE uuid = '{changed[0]}'") == [(1,)]


def test_columns_select_and_type_the_columns_written(run, simulator, tmp_path) -> None:
    database = tmp_path / "k.duckdb"
    result = run(
        "--source-table",
        "profiles",
        "--columns",
        "email,first_name,created:date",
        *interval("2024-01-01", "2024-01-11"),
    )
    assert result.returncode == 0, result.stderr
    columns = dict(
        execute(
            database,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'profiles' "
            "AND column_name NOT LIKE '\\_%' ESCAPE '\\'",
        )
    )
    assert columns == {
        "id": "VARCHAR",
        "email": "VARCHAR",
        "first_name": "VARCHAR",
        "created": "DATE",
        "updated": "TIMESTAMP WITH TIME ZONE",
    }
    assert set(ids_in(database, "klaviyo", "profiles")) == simulator.ids("profiles")


def test_sql_exclude_columns_leaves_them_out(run, simulator, tmp_path) -> None:
    database = tmp_path / "k.duckdb"
    result = run(
        "--source-table",
        "profiles",
        "--sql-exclude-columns",
        "properties,location",
        *interval("2024-01-01", "2024-01-11"),
    )
    assert result.returncode == 0, result.stderr
    names = {
        r[0]
        for r in execute(
            database, "SELECT column_name FROM information_schema.columns WHERE table_name = 'profiles'"
        )
    }
    assert "properties" not in names and "location" not in names and {"id", "email", "updated"} <= names


def test_a_refused_flag_is_one_line_and_touches_nothing(run, simulator, tmp_path) -> None:
    result = run("--source-table", "events", "--partition-by", "datetime")
    line = assert_one_line_error(result, 2)
    assert line == (
        "omniload ingest: error: --partition-by: cannot apply: DuckDB tables have no partition key "
        "(see omniload ingest --help)"
    )
    assert simulator.stats.total_requests == 0 and not (tmp_path / "k.duckdb").exists()
