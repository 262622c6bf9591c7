"""The warehouse's read API, against real DuckDB files: names, existence, columns, newest keys, profiles."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.warehouse.connection import DuckDBLockedError, DuckDBPathError, open_database
from omniload_assets.warehouse.reads import (
    TableProfile,
    WarehouseReader,
    active_ids,
    newest_key,
    profile_table,
    qualified_name,
    table_columns,
    table_comment,
    table_exists,
    table_ids,
)
from omniload_assets_tests.test_writer import lock_held_by_other_process, release

SCHEMA = "klaviyo"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "wh" / "klaviyo.duckdb"


@pytest.fixture
def conn(db: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with open_database(db) as connection:
        connection.execute(f"CREATE SCHEMA {SCHEMA}")
        yield connection


def create(conn: duckdb.DuckDBPyConnection, table: str, rows: str, columns: str = "id VARCHAR") -> None:
    target = qualified_name(conn, SCHEMA, table)
    conn.execute(f"CREATE TABLE {target} ({columns})")
    if rows:
        conn.execute(f"INSERT INTO {target} VALUES {rows}")


def test_qualified_name_avoids_the_catalog_schema_ambiguity(conn):
    create(conn, "events", "('a')")
    name = qualified_name(conn, SCHEMA, "events")
    assert name == '"klaviyo"."klaviyo"."events"'
    assert conn.execute(f"SELECT id FROM {name}").fetchall() == [("a",)]
    with pytest.raises(duckdb.BinderException, match="Ambiguous"):
        conn.execute(f"SELECT id FROM {SCHEMA}.events")


def test_qualified_name_quotes_odd_names(conn):
    create(conn, 'we"ird table', "('x')")
    assert qualified_name(conn, SCHEMA, 'we"ird table') == '"klaviyo"."klaviyo"."we""ird table"'
    assert table_exists(conn, SCHEMA, 'we"ird table')


def test_table_existence_columns_and_comment(conn):
    assert not table_exists(conn, SCHEMA, "events")
    assert table_columns(conn, SCHEMA, "events") is None
    assert table_comment(conn, SCHEMA, "events") is None
    create(conn, "events", "", "id VARCHAR, n BIGINT, seen TIMESTAMPTZ")
    assert table_exists(conn, SCHEMA, "events")
    # DuckDB matches names without regard to case, and so does every question here.
    assert table_exists(conn, "KLAVIYO", "Events")
    assert table_columns(conn, SCHEMA, "EVENTS") == [
        ("id", "VARCHAR"),
        ("n", "BIGINT"),
        ("seen", "TIMESTAMP WITH TIME ZONE"),
    ]
    assert table_comment(conn, SCHEMA, "events") == ""
    conn.execute(f"COMMENT ON TABLE {qualified_name(conn, SCHEMA, 'events')} IS 'hello'")
    assert table_comment(conn, SCHEMA, "events") == "hello"
    assert not table_exists(conn, "other", "events")


def test_a_view_or_another_catalog_is_no_table_of_ours(conn, tmp_path: Path):
    conn.execute(f"CREATE VIEW {qualified_name(conn, SCHEMA, 'lists')} AS SELECT 1 AS id")
    assert not table_exists(conn, SCHEMA, "lists")
    with duckdb.connect(str(tmp_path / "other.duckdb")) as other:
        other.execute(f"CREATE SCHEMA {SCHEMA}; CREATE TABLE {SCHEMA}.tags (id VARCHAR)")
    conn.execute(f"ATTACH '{tmp_path / 'other.duckdb'}' AS other (READ_ONLY)")
    assert not table_exists(conn, SCHEMA, "tags")


def test_newest_key(conn):
    assert newest_key(conn, SCHEMA, "profiles", "updated") is None
    create(conn, "profiles", "", "id VARCHAR, updated TIMESTAMPTZ")
    assert newest_key(conn, SCHEMA, "profiles", "updated") is None
    rows = "('a', '2024-01-02 03:04:05.000006+00'), ('b', NULL)"
    create(conn, "p2", rows, "id VARCHAR, updated TIMESTAMPTZ")
    assert newest_key(conn, SCHEMA, "p2", "updated") == datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


def test_profile_of_a_healthy_a_broken_and_a_missing_table(conn):
    assert profile_table(conn, SCHEMA, "tags", primary_key="id", newest_column="seen") == TableProfile(
        exists=False
    )
    columns = "id VARCHAR, seen TIMESTAMPTZ"
    create(conn, "tags", "('a', '2024-01-01 00:00+00'), ('b', '2024-01-03 00:00+00')", columns)
    healthy = profile_table(conn, SCHEMA, "tags", primary_key="id", newest_column="seen")
    assert healthy == TableProfile(exists=True, rows=2, newest=datetime(2024, 1, 3, tzinfo=UTC))
    rows = "('a', NULL), ('a', NULL), ('a', NULL), ('b', NULL), ('b', NULL), (NULL, NULL)"
    create(conn, "bad", rows, columns)
    broken = profile_table(conn, SCHEMA, "bad", primary_key="id", newest_column="seen")
    assert (broken.rows, broken.null_keys, broken.duplicate_keys, broken.extra_rows) == (6, 1, 2, 3)
    assert broken.duplicate_sample == ("a", "b")  # most duplicated first
    assert broken.newest is None


def test_the_profile_counts_the_rows_marked_deleted(conn):
    rows = "('a', NULL), ('b', '2024-02-01 00:00+00'), ('c', '2024-02-02 00:00+00')"
    create(conn, "flows", rows, "id VARCHAR, _deleted_at TIMESTAMPTZ")
    profile = profile_table(conn, SCHEMA, "flows", primary_key="id", newest_column="_deleted_at")
    assert (profile.rows, profile.deleted) == (3, 2)


def test_ids_of_a_table_all_or_only_those_not_marked_deleted(conn):
    assert table_ids(conn, SCHEMA, "flows") == set() and active_ids(conn, SCHEMA, "flows") == []
    rows = "('b', NULL, 1), ('a', NULL, 2), ('a', NULL, 2), ('gone', now(), 3), (NULL, NULL, 4)"
    create(conn, "flows", rows, "id VARCHAR, _deleted_at TIMESTAMPTZ, n INTEGER")
    assert table_ids(conn, SCHEMA, "flows") == {"a", "b", "gone"}
    assert active_ids(conn, SCHEMA, "FLOWS") == ["a", "b"]  # distinct, sorted, without NULL
    assert active_ids(conn, SCHEMA, "flows", column="n") == ["1", "2", "4"]  # as text, sorted as text
    # A table without the column (a replace table, or one written before it) has no deleted rows.
    create(conn, "tags", "('t2'), ('t1')")
    assert active_ids(conn, SCHEMA, "tags") == ["t1", "t2"]
    assert table_ids(conn, SCHEMA, "tags") == {"t1", "t2"}


def test_reader_of_a_database_not_created_yet_finds_nothing_and_creates_nothing(db: Path):
    reader = WarehouseReader(str(db), SCHEMA)
    assert reader.newest_keys([get_table("events")]) == {}
    assert not reader.profile(get_table("events"), "datetime").exists
    assert not db.exists() and not db.parent.exists()


def test_reader_newest_keys_follow_table_names_and_leave_out_what_is_missing(db: Path):
    with open_database(db) as conn:
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        create(conn, "ev", "('a', '2024-01-05 00:00+00')", "id VARCHAR, datetime TIMESTAMPTZ")
        create(conn, "profiles", "", "id VARCHAR, updated TIMESTAMPTZ")
    specs = [get_table(n) for n in ("events", "profiles", "lists", "tags")]
    reader = WarehouseReader(f"duckdb:///{db}", SCHEMA, lock_timeout_s=1, table_names={"events": "ev"})
    # profiles is empty, lists absent, tags has no incremental key.
    assert reader.newest_keys(specs) == {"events": datetime(2024, 1, 5, tzinfo=UTC)}
    assert reader.newest_keys([]) == {}
    assert reader.profile(get_table("events"), "datetime").rows == 1
    assert WarehouseReader(str(db), SCHEMA).newest_keys(specs) == {}  # events is not "events" there


def test_reader_waits_at_most_its_lock_timeout(db: Path):
    with lock_held_by_other_process(db) as holder:
        reader = WarehouseReader(str(db), SCHEMA, lock_timeout_s=0.2)
        with pytest.raises(DuckDBLockedError, match="locked by another process"):
            reader.newest_keys([get_table("events")])
        release(holder)
    assert WarehouseReader(str(db), SCHEMA).newest_keys([get_table("events")]) == {}


def test_reader_refuses_a_path_that_is_not_a_database(tmp_path: Path):
    with pytest.raises(DuckDBPathError):
        WarehouseReader(str(tmp_path), SCHEMA).newest_keys([get_table("events")])
