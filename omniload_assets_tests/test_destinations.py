"""Destinations and table names: what ``--dest-uri`` / ``OMNILOAD_DUCKDB_PATH`` and ``--dest-table`` refuse.

Real DuckDB files throughout; the CLI cases run the installed ``omniload`` script (test_cli's ``run``).
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniload_assets.assets import asset_key
from omniload_assets.cli import UsageError, database_from_dest_uri, split_dest_table
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.warehouse.connection import (
    DuckDBPathError,
    check_destination,
    check_writable,
    mask_database,
    show_database,
)
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager
from omniload_assets.warehouse.writer import MAX_NAME_LENGTH, TableNameError, check_name
from omniload_assets_tests import test_cli
from omniload_assets_tests.harness import fast_resources, reason
from omniload_assets_tests.test_cli import assert_one_line_error, ids_in
from omniload_assets_tests.test_writer import lock_held_by_other_process, release

run = test_cli.run
KEY = {"KLAVIYO_API_KEY": "pk_x"}
EVENTS = ["ingest", "--source-table", "events", "--interval-start", "2024-01-01"]
TOKEN = "SeCrEt0TokenValue9"


def a_duckdb_file(path: Path) -> Path:
    with duckdb.connect(str(path)) as conn:
        conn.execute("CREATE TABLE t AS SELECT range AS i FROM range(1000)")
    return path


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Existing paths that are not a usable DuckDB database, and what the refusal says."""
    text = tmp_path / "notes.duckdb"
    text.write_text("id,name\n1,a\n")
    empty = tmp_path / "empty.duckdb"
    empty.touch()
    truncated = tmp_path / "truncated.duckdb"
    whole = a_duckdb_file(tmp_path / "whole.duckdb").read_bytes()
    truncated.write_bytes(whole[:5000])
    return {
        "text": (text, "is not a DuckDB database (it has no DuckDB header)"),
        "empty": (empty, "is not a DuckDB database (it is empty)"),
        "truncated": (truncated, "is a DuckDB file DuckDB cannot open"),
        "proc-file": (Path("/proc/version"), "virtual filesystem that stores no files"),
        "proc-new": (Path("/proc/klaviyo.duckdb"), "virtual filesystem that stores no files"),
        "device": (Path("/dev/null"), "is not a regular file"),
    }


BAD = ["text", "empty", "truncated", "proc-file", "proc-new", "device"]


# -- destinations that are not a usable DuckDB database (issue 3) ------------------------------


@pytest.mark.parametrize("case", BAD)
def test_the_cli_refuses_a_destination_that_is_not_a_duckdb_database_before_dagster_runs(
    run, tmp_path, case
) -> None:
    path, why = bad_files(tmp_path)[case]
    before = path.read_bytes() if path.is_file() and not str(path).startswith("/proc") else None
    line = assert_one_line_error(run(*EVENTS, "--dest-uri", str(path), env=KEY), 2)
    assert why in line and str(path) in line and "--dest-uri" in line
    if before is not None:
        assert path.read_bytes() == before


@pytest.mark.parametrize("case", BAD)
def test_the_io_manager_refuses_it_before_extracting(tmp_path, case) -> None:
    path, why = bad_files(tmp_path)[case]
    with pytest.raises(DuckDBPathError, match="OMNILOAD_DUCKDB_PATH") as info:
        check_writable(path)
    message = str(info.value)
    assert "\n" not in message
    assert why in message or (case == "proc-new" and "/proc of DuckDB file" in message)  # not root


def test_a_run_into_a_text_file_fails_before_any_request(sim_env, simulator, instance, tmp_path) -> None:
    from omniload_assets.definitions import build_definitions

    path, _ = bad_files(tmp_path)["text"]
    resources = {
        **fast_resources(build_definitions()),
        "klaviyo_duckdb": KlaviyoDuckDBIOManager(database=str(path), schema="klaviyo"),
    }
    tags = build_definitions().get_assets_def(asset_key(get_table("tags")))
    result = dg.materialize([tags], resources=resources, instance=instance, raise_on_error=False)
    assert not result.success
    assert "has no DuckDB header" in reason(result)
    assert simulator.stats.total_requests == 0


def test_a_valid_database_held_by_another_process_is_accepted(tmp_path) -> None:
    db = a_duckdb_file(tmp_path / "held.duckdb")
    with lock_held_by_other_process(db) as holder:
        assert check_writable(db) == str(db)
        assert check_destination(db) == str(db)
        assert database_from_dest_uri(f"duckdb:///{db}") == str(db)
        release(holder)
    with duckdb.connect(str(db)) as conn:  # in this process too: a connection already open is fine
        assert check_writable(db) == str(db)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1000,)


# -- in-memory destinations (issue 2) -----------------------------------------------------------


@pytest.mark.parametrize("uri", [":memory:", "duckdb:///:memory:", ":memory:scratch"])
def test_an_in_memory_destination_is_refused(run, uri) -> None:
    line = assert_one_line_error(run(*EVENTS, "--dest-uri", uri, env=KEY), 2)
    assert "in-memory DuckDB database" in line and "--dest-uri" in line
    with pytest.raises(DuckDBPathError, match="in-memory DuckDB database.*OMNILOAD_DUCKDB_PATH"):
        check_writable(uri)


def test_the_io_manager_refuses_an_in_memory_database(sim_env, simulator, instance) -> None:
    from omniload_assets.definitions import build_definitions

    defs = build_definitions()
    resources = {
        **fast_resources(defs),
        "klaviyo_duckdb": KlaviyoDuckDBIOManager(database=":memory:", schema="klaviyo"),
    }
    tags = defs.get_assets_def(asset_key(get_table("tags")))
    result = dg.materialize([tags], resources=resources, instance=instance, raise_on_error=False)
    assert not result.success
    assert "in-memory DuckDB database" in reason(result)
    assert simulator.stats.total_requests == 0


# -- messages name what was used (issue 6) and mask secrets (issue 5) ----------------------------


def test_a_bad_dest_uri_says_dest_uri_and_a_bad_variable_names_the_variable(run, tmp_path) -> None:
    line = assert_one_line_error(run(*EVENTS, "--dest-uri", "", env=KEY), 2)
    assert "--dest-uri" in line and "OMNILOAD_DUCKDB_PATH" not in line
    line = assert_one_line_error(run(*EVENTS, "--dest-uri", str(tmp_path), env=KEY), 2)
    assert "is a directory; point --dest-uri at a file" in line and "OMNILOAD_DUCKDB_PATH" not in line
    line = assert_one_line_error(run(*EVENTS, env={**KEY, "OMNILOAD_DUCKDB_PATH": ":memory:"}), 2)
    assert "point OMNILOAD_DUCKDB_PATH at a file" in line and "--dest-uri" not in line


@pytest.mark.parametrize(
    "uri",
    [
        f":memory:?motherduck_token={TOKEN}",
        f"postgres://klaviyo:{TOKEN}@db.example.com/warehouse",
        f"duckdb://klaviyo:{TOKEN}@db.example.com/warehouse",
        f"notes.txt?motherduck_token={TOKEN}",
        f"md:?{TOKEN}",
    ],
)
def test_error_messages_mask_tokens_and_passwords(run, tmp_path, uri) -> None:
    (tmp_path / f"notes.txt?motherduck_token={TOKEN}").write_text("not a database")
    if uri.startswith("md:"):  # accepted (MotherDuck); what a message would show is masked
        assert TOKEN not in show_database(uri) and show_database(uri) == "md:?***"
        return
    result = run(*EVENTS, "--dest-uri", uri, env=KEY)
    assert_one_line_error(result, 2)
    assert TOKEN not in result.stderr + result.stdout
    assert "***" in result.stderr


def test_mask_database_hides_every_query_value_and_userinfo() -> None:
    assert mask_database(f"md:klaviyo?motherduck_token={TOKEN}") == "md:klaviyo?motherduck_token=***"
    assert mask_database(f"md:klaviyo?attach_mode=single&token={TOKEN}") == (
        "md:klaviyo?attach_mode=***&token=***"
    )
    assert mask_database(f"s3://key:{TOKEN}@bucket/x.duckdb") == "s3://***@bucket/x.duckdb"
    assert mask_database("/data/klaviyo.duckdb") == "/data/klaviyo.duckdb"
    assert "\n" not in show_database("a\nb") and len(show_database("x" * 10_000)) == 200


# -- table names (issue 4) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dest_table", "why"),
    [
        ("dest.ev\x07ents", "contains control or invisible characters (U+0007)"),
        ("dest\u200b.events", "contains control or invisible characters (U+200B)"),
        ("x" * 100_000, "has 100,000 characters; use at most 63"),
        ("s" * 64 + ".events", "has 64 characters; use at most 63"),
    ],
)
def test_unusable_dest_table_names_are_refused(run, tmp_path, dest_table, why) -> None:
    result = run(*EVENTS, "--dest-table", dest_table, "--dest-uri", "k.duckdb", env=KEY)
    line = assert_one_line_error(result, 2)
    assert why in line and "--dest-table" in line and len(line) < 300
    assert not (tmp_path / "k.duckdb").exists()


def test_names_up_to_the_limit_are_fine() -> None:
    spec = get_table("events")
    assert split_dest_table("dest.events", spec) == ("dest", "events")
    assert split_dest_table(f"{'s' * MAX_NAME_LENGTH}.Événements 2024", spec) == (
        "s" * MAX_NAME_LENGTH,
        "Événements 2024",
    )


def test_the_io_manager_refuses_an_unusable_table_names_entry(sim_env, simulator, instance) -> None:
    from omniload_assets.definitions import build_definitions

    defs = build_definitions()
    io_manager = KlaviyoDuckDBIOManager(
        database=sim_env["OMNILOAD_DUCKDB_PATH"], schema="klaviyo", table_names={"tags": "tags\nDROP"}
    )
    tags = defs.get_assets_def(asset_key(get_table("tags")))
    resources = {**fast_resources(defs), "klaviyo_duckdb": io_manager}
    result = dg.materialize([tags], resources=resources, instance=instance, raise_on_error=False)
    assert not result.success
    assert "table_names['tags'] table name 'tags\\nDROP' contains control" in reason(result)
    assert simulator.stats.total_requests == 0
    with pytest.raises(TableNameError, match="empty"):
        check_name("  ")


def test_the_io_manager_is_a_plain_configurable_io_manager(monkeypatch, tmp_path: Path) -> None:
    """Its config is its own five fields; an unset schema is OMNILOAD_DUCKDB_SCHEMA's, checked."""
    assert isinstance(KlaviyoDuckDBIOManager(database="x.duckdb"), dg.ConfigurableIOManager)
    fields = KlaviyoDuckDBIOManager.to_config_schema().as_field().config_type.fields
    assert set(fields) == {"database", "schema", "lock_timeout_s", "table_names", "memory_limit"}
    monkeypatch.setenv("OMNILOAD_DUCKDB_SCHEMA", "raw_klaviyo")
    io_manager = KlaviyoDuckDBIOManager(
        database=str(tmp_path / "k.duckdb"), lock_timeout_s=7, table_names={"events": "ev"}
    )
    reader = io_manager.reader()
    assert (reader.schema, reader.lock_timeout_s, reader.table_name(get_table("events"))) == (
        "raw_klaviyo",
        7,
        "ev",
    )
    assert io_manager.reader(lock_timeout_s=1).lock_timeout_s == 1
    assert io_manager.table_name(get_table("profiles")) == "profiles"
    with pytest.raises(TableNameError, match="schema name"):
        KlaviyoDuckDBIOManager(database="x.duckdb", schema="a.b").reader()


# -- another source into a table that holds one (issue 1), end to end ----------------------------


def test_profiles_into_the_events_table_is_refused_with_one_line(run, simulator, tmp_path) -> None:
    def ingest(table: str) -> object:
        return run(
            "ingest",
            "--source-table",
            table,
            "--source-uri",
            f"klaviyo://?api_key={simulator.api_key}",
            "--dest-uri",
            "duckdb:///klaviyo.duckdb",
            "--dest-table",
            "dest.events",
            "--interval-start",
            "2024-01-02",
            "--interval-end",
            "2024-01-04",
            env={"KLAVIYO_BASE_URL": simulator.base_url},
        )

    first = ingest("events")
    assert first.returncode == 0, first.stderr
    before = sorted(ids_in(tmp_path / "klaviyo.duckdb", "dest", "events"))
    requests = simulator.stats.total_requests
    line = assert_one_line_error(ingest("profiles"), 2)  # refused before the run, as a bad flag
    assert line.endswith(
        "dest.events holds Klaviyo events (primary key id); refusing to write profiles into it: "
        "choose another --dest-table"
    )
    assert simulator.stats.total_requests == requests  # not one request for profiles
    assert sorted(ids_in(tmp_path / "klaviyo.duckdb", "dest", "events")) == before


# -- property-based: the parsers never raise anything but a one-line UsageError (issue 7) -----------


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Relative destinations resolve (and are checked) inside ``tmp_path``; default settings."""
    monkeypatch.chdir(tmp_path)
    for name in ("OMNILOAD_DUCKDB_PATH", "OMNILOAD_DUCKDB_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path


PROPERTY = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SECRET = st.text(alphabet=string.ascii_letters + string.digits, min_size=12, max_size=40)
PREFIX = st.sampled_from(
    [":memory:", "md:klaviyo", "duckdb:///x.duckdb", "postgres://h/db", "", "notes.txt", "dir", "/proc/x"]
)


def assert_one_line_usage(exc: UsageError) -> str:
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message and len(message) < 600
    return message


@PROPERTY
@given(text=st.text(max_size=300))
def test_any_dest_uri_is_a_database_or_a_one_line_usage_error(in_tmp, text) -> None:
    try:
        target = database_from_dest_uri(text)
    except UsageError as exc:
        assert_one_line_usage(exc)
    else:
        assert isinstance(target, str) and target and not target.startswith(":memory:")


@PROPERTY
@given(prefix=PREFIX, key=st.sampled_from(["motherduck_token", "token", "password", "x y"]), secret=SECRET)
def test_no_token_of_a_dest_uri_appears_in_its_message(in_tmp, prefix, key, secret) -> None:
    (in_tmp / "notes.txt").write_text("not a database")
    (in_tmp / "dir").mkdir(exist_ok=True)
    for uri in (
        f"{prefix}?{key}={secret}",
        f"{prefix}?{secret}",
        f"mysql://user:{secret}@{prefix or 'h'}/db",
    ):
        try:
            database_from_dest_uri(uri)
        except UsageError as exc:
            assert secret not in assert_one_line_usage(exc)


@PROPERTY
@given(text=st.text(max_size=200) | st.text(alphabet=st.characters(codec="ascii"), max_size=80))
def test_any_dest_table_is_two_names_or_a_one_line_usage_error(in_tmp, text) -> None:
    try:
        schema, table = split_dest_table(text, get_table("events"))
    except UsageError as exc:
        assert_one_line_usage(exc)
    else:
        for name in (schema, table):
            assert check_name(name) == name and len(name) <= MAX_NAME_LENGTH and name.isprintable()


def test_a_motherduck_token_in_dest_uri_stays_out_of_the_progress_and_error_lines(run, simulator) -> None:
    """The plan's first line and the failure (no MotherDuck from here) show the database masked."""
    env = {"KLAVIYO_API_KEY": simulator.api_key, "KLAVIYO_BASE_URL": simulator.base_url}
    uri = f"md:klaviyo?motherduck_token={TOKEN}"
    result = run("ingest", "--source-table", "tags", "--dest-uri", uri, "--progress", "log", env=env)
    assert "md:klaviyo?motherduck_token=***" in result.stderr  # the plan's line, before the run
    assert TOKEN not in result.stderr + result.stdout
