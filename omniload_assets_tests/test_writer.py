"""The DuckDB writer and connection helpers, against real DuckDB files and pyarrow Parquet files."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets.warehouse.connection import (
    DuckDBLockedError,
    DuckDBPathError,
    WarehouseError,
    connect,
    open_database,
    resolve_database,
)
from omniload_assets.warehouse.reads import qualified_name
from omniload_assets.warehouse.writer import (
    TableOwnerError,
    WriteResult,
    append_rows,
    delete_insert,
    merge_into,
    replace_table,
    table_refusal,
)

SCHEMA = "klaviyo"
TABLE = "events"
#: The file is klaviyo.duckdb, so the catalog is "klaviyo" too: `klaviyo.events` is ambiguous.
FQ = f"{SCHEMA}.{SCHEMA}.{TABLE}"
TYPES = {
    "id": "VARCHAR",
    "updated": "TIMESTAMPTZ",
    "n": "BIGINT",
    "props": "JSON",
    "note": "VARCHAR",
}
ARROW_TYPES = {
    "id": pa.string(),
    "updated": pa.timestamp("us", tz="UTC"),
    "n": pa.int64(),
    "props": pa.string(),
    "note": pa.string(),
}


def ts(day: int) -> datetime:
    return datetime(2024, 1, day, tzinfo=UTC)


class Stager:
    """Writes Parquet files the way extraction does (pyarrow, one table per file)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0

    def __call__(self, rows: list[dict[str, Any]], types: dict[str, pa.DataType] | None = None) -> Path:
        types = {**ARROW_TYPES, **(types or {})}
        names = list(dict.fromkeys(k for row in rows for k in row)) if rows else ["id"]
        schema = pa.schema([(name, types.get(name, pa.string())) for name in names])
        self.count += 1
        path = self.directory / f"part-{self.count:04d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="none")
        return path


@pytest.fixture
def stage(tmp_path: Path) -> Stager:
    directory = tmp_path / "staged"
    directory.mkdir()
    return Stager(directory)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "wh" / "klaviyo.duckdb"


@pytest.fixture
def conn(db: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with open_database(db) as connection:
        yield connection


def merge(conn: duckdb.DuckDBPyConnection, files: list[Path], run_id: str = "run", **kw: Any) -> WriteResult:
    args: dict[str, Any] = {"primary_key": "id", "incremental_key": "updated", "column_types": TYPES}
    args.update(kw)
    return merge_into(conn, schema=SCHEMA, table=TABLE, files=files, run_id=run_id, **args)


def replace(conn: duckdb.DuckDBPyConnection, files: list[Path], run_id: str = "run") -> WriteResult:
    return replace_table(
        conn,
        schema=SCHEMA,
        table=TABLE,
        files=files,
        primary_key="id",
        column_types=TYPES,
        run_id=run_id,
    )


def columns(conn: duckdb.DuckDBPyConnection, table: str = TABLE) -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [SCHEMA, table],
        ).fetchall()
    ]


def rows(conn: duckdb.DuckDBPyConnection, *cols: str) -> dict[str, tuple]:
    select = ", ".join(f'"{c}"' for c in ("id", *cols))
    result = conn.execute(f"SELECT {select} FROM {FQ} ORDER BY id").fetchall()
    return {r[0]: tuple(r[1:]) for r in result}


def snapshot(conn: duckdb.DuckDBPyConnection) -> tuple[list[tuple[str, str]], list[tuple]]:
    """Columns and every row (load metadata included) of the table, to prove it did not change."""
    data = conn.execute(f"SELECT * FROM {FQ} ORDER BY id").fetchall()
    return columns(conn), data


def tables(conn: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]


def corrupt_column(path: Path, column: str) -> None:
    """Overwrite the first page of ``column`` while keeping the footer: only reading it fails."""
    meta = pq.ParquetFile(path).metadata
    index = meta.schema.names.index(column)
    chunk = meta.row_group(0).column(index)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


# -- merge ---------------------------------------------------------------------------------------


def test_merge_creates_schema_and_table(conn, stage):
    f = stage(
        [
            {"id": "a", "updated": ts(1), "n": 1, "props": '{"k": 1}', "extra": "x"},
            {"id": "b", "updated": ts(1), "n": 2, "props": None, "extra": None},
        ]
    )
    result = merge(conn, [f], run_id="run-1")
    assert result == WriteResult(
        rows_written=2, inserted=2, updated=0, skipped_stale=0, table_rows=2, columns_added=[]
    )
    assert [c for c, _ in columns(conn)] == [
        "id",
        "updated",
        "n",
        "props",
        "note",
        "extra",
        "_loaded_at",
        "_run_id",
        "_deleted_at",
    ]
    assert dict(columns(conn))["_loaded_at"] == "TIMESTAMP WITH TIME ZONE"
    assert dict(columns(conn))["_deleted_at"] == "TIMESTAMP WITH TIME ZONE"
    assert conn.execute(f"SELECT count(_deleted_at) FROM {FQ}").fetchone() == (0,)
    assert rows(conn, "n", "note", "extra", "_run_id") == {
        "a": (1, None, "x", "run-1"),
        "b": (2, None, None, "run-1"),
    }
    loaded = conn.execute(f"SELECT DISTINCT _loaded_at FROM {FQ}").fetchall()
    assert len(loaded) == 1 and loaded[0][0] is not None


def test_upsert_newer_wins_and_older_batch_never_brings_stale_values_back(conn, stage):
    old = stage(
        [
            {"id": "a", "updated": ts(1), "n": 1},
            {"id": "b", "updated": ts(1), "n": 1},
        ]
    )
    new = stage([{"id": "a", "updated": ts(2), "n": 2}, {"id": "c", "updated": ts(2), "n": 2}])
    merge(conn, [old], run_id="r1")

    result = merge(conn, [new], run_id="r2")
    assert (result.inserted, result.updated, result.skipped_stale) == (1, 1, 0)
    assert rows(conn, "n", "_run_id") == {"a": (2, "r2"), "b": (1, "r1"), "c": (2, "r2")}

    # Re-running the older partition afterwards: "a" keeps its newer row, "b" (same key) is updated.
    result = merge(conn, [old], run_id="r3")
    assert (result.rows_written, result.inserted, result.updated, result.skipped_stale) == (2, 0, 1, 1)
    assert rows(conn, "n", "_run_id") == {"a": (2, "r2"), "b": (1, "r3"), "c": (2, "r2")}
    assert result.table_rows == 3


def test_stored_null_incremental_key_is_replaced_and_no_incremental_key_always_updates(conn, stage):
    merge(conn, [stage([{"id": "a", "updated": None, "n": 1}])])
    merge(conn, [stage([{"id": "a", "updated": ts(1), "n": 2}])])
    assert rows(conn, "n") == {"a": (2,)}

    result = merge(conn, [stage([{"id": "a", "updated": ts(1), "n": 3}])], incremental_key=None)
    assert (result.updated, result.skipped_stale) == (1, 0)
    older = stage([{"id": "a", "updated": ts(1), "n": 4}])
    assert merge(conn, [older], incremental_key=None).updated == 1
    assert rows(conn, "n") == {"a": (4,)}


def test_same_batch_twice_is_idempotent(conn, stage):
    f = stage([{"id": str(i), "updated": ts(1 + i % 3), "n": i, "props": f'{{"i": {i}}}'} for i in range(50)])
    first = merge(conn, [f])
    before = rows(conn, "updated", "n", "props", "note")
    second = merge(conn, [f])
    assert (first.inserted, first.table_rows) == (50, 50)
    assert (second.inserted, second.updated, second.skipped_stale, second.table_rows) == (0, 50, 0, 50)
    assert rows(conn, "updated", "n", "props", "note") == before


def test_duplicate_ids_in_one_batch_keep_the_latest(conn, stage):
    f1 = stage(
        [
            {"id": "a", "updated": ts(3), "n": 1},  # newest "a", although in the first file
            {"id": "b", "updated": ts(1), "n": 1},
            {"id": "b", "updated": ts(1), "n": 2},  # tie inside a file: the later row wins
            {"id": "c", "updated": ts(1), "n": 1},
        ]
    )
    f2 = stage(
        [
            {"id": "a", "updated": ts(2), "n": 2},
            {"id": "c", "updated": ts(1), "n": 3},  # tie across files: the later file wins
        ]
    )
    result = merge(conn, [f1, f2])
    assert (result.rows_written, result.inserted, result.table_rows) == (3, 3, 3)
    assert rows(conn, "n") == {"a": (1,), "b": (2,), "c": (3,)}


def test_columns_are_matched_by_name_not_position(conn, stage):
    merge(conn, [stage([{"id": "a", "updated": ts(1), "n": 1, "note": "first"}])])
    reordered = stage([{"note": "second", "n": 2, "updated": ts(2), "id": "a"}])
    merge(conn, [reordered])
    assert rows(conn, "updated", "n", "note") == {"a": (ts(2), 2, "second")}


def test_columns_named_like_duckdb_virtual_columns_are_plain_data(conn, stage):
    names = {"filename": "f.png", "file_index": "7", "file_row_number": "9"}
    f1 = stage([{"id": "a", "updated": ts(1), "n": 1, **names}])
    f2 = stage([{"id": "a", "updated": ts(1), "n": 2, **names}])  # tie: the later file wins
    merge(conn, [f1, f2])
    assert rows(conn, "n", "filename", "file_index", "file_row_number") == {"a": (2, "f.png", "7", "9")}


def test_new_column_is_added_and_older_rows_get_null(conn, stage):
    merge(conn, [stage([{"id": "a", "updated": ts(1), "n": 1}])])
    later = stage(
        [{"id": "b", "updated": ts(2), "n": 2, "channel": "sms", "score": 0.5}],
        {"score": pa.float64()},
    )
    result = merge(conn, [later])
    assert result.columns_added == ["channel", "score"]
    types = dict(columns(conn))
    assert (types["channel"], types["score"]) == ("VARCHAR", "DOUBLE")
    assert rows(conn, "channel", "score") == {"a": (None, None), "b": ("sms", 0.5)}


def test_files_with_different_columns_in_one_batch(conn, stage):
    f1 = stage([{"id": "a", "updated": ts(1)}])
    f2 = stage([{"id": "b", "updated": ts(1), "n": 5, "brand_new": "x"}])
    result = merge(conn, [f1, f2])
    assert result.inserted == 2
    assert rows(conn, "n", "brand_new") == {"a": (None, None), "b": (5, "x")}


def test_missing_column_is_null_and_replaced_rows_take_the_new_row(conn, stage):
    merge(conn, [stage([{"id": "a", "updated": ts(1), "n": 1, "note": "hello"}])])
    merge(conn, [stage([{"id": "a", "updated": ts(2)}, {"id": "b", "updated": ts(2)}])])
    # An updated row is replaced as a whole: attributes the new row lacks are NULL.
    assert rows(conn, "n", "note") == {"a": (None, None), "b": (None, None)}
    assert [c for c, _ in columns(conn)][:5] == ["id", "updated", "n", "props", "note"]


def test_column_types_never_drift(conn, stage):
    merge(conn, [stage([{"id": "a", "updated": ts(1), "n": 1}])])
    # The same attributes arrive with other Parquet types: values are cast to the stored types.
    f = stage(
        [{"id": "b", "updated": "2024-01-02T00:00:00+00:00", "n": "7"}],
        {"updated": pa.string(), "n": pa.string()},
    )
    merge(conn, [f])
    g = stage([{"id": "c", "updated": ts(3), "n": 8.0}], {"n": pa.float64()})
    merge(conn, [g])
    all_null = stage([{"id": "d", "updated": None, "n": None}], {"updated": pa.null(), "n": pa.null()})
    merge(conn, [all_null])
    types = dict(columns(conn))
    assert (types["updated"], types["n"]) == ("TIMESTAMP WITH TIME ZONE", "BIGINT")
    assert rows(conn, "updated", "n") == {
        "a": (ts(1), 1),
        "b": (ts(2), 7),
        "c": (ts(3), 8),
        "d": (None, None),
    }


def test_uncastable_values_widen_the_column_instead_of_failing(conn, stage):
    merge(conn, [stage([{"id": "a", "updated": ts(1), "n": 1, "m": 1}], {"m": pa.int64()})])
    fractional = stage([{"id": "b", "updated": ts(1), "m": 2.5}], {"m": pa.float64()})
    merge(conn, [fractional])
    text = stage([{"id": "c", "updated": ts(1), "n": "not a number"}], {"n": pa.string()})
    merge(conn, [text])
    types = dict(columns(conn))
    assert types["m"] == "DOUBLE"  # 2.5 would have been rounded into the BIGINT column
    assert types["n"] == "VARCHAR"
    assert rows(conn, "n", "m") == {"a": ("1", 1.0), "b": (None, 2.5), "c": ("not a number", None)}


def test_json_columns_stay_json(conn, stage):
    merge(conn, [stage([{"id": "a", "updated": ts(1), "props": '{"$value": 9.5, "items": ["x"]}'}])])
    # A different shape of the same free-form object, and a string that is not JSON at all.
    f = stage(
        [
            {"id": "b", "updated": ts(1), "props": '{"nested": {"deep": true}}'},
            {"id": "c", "updated": ts(1), "props": "plain text"},
        ]
    )
    merge(conn, [f])
    assert dict(columns(conn))["props"] == "JSON"
    got = conn.execute(
        f"SELECT id, props->>'$.\"$value\"', props->>'$.nested.deep', json_type(props) FROM {FQ} ORDER BY id"
    ).fetchall()
    assert got == [
        ("a", "9.5", None, "OBJECT"),
        ("b", None, "true", "OBJECT"),
        ("c", None, None, "VARCHAR"),
    ]


def test_null_primary_key_rejects_the_whole_write(conn, stage):
    merge(conn, [stage([{"id": "a", "updated": ts(1), "n": 1}])])
    before = snapshot(conn)
    bad = stage(
        [
            {"id": "a", "updated": ts(2), "n": 2, "new_col": "x"},
            {"id": None, "updated": ts(2), "n": 3, "new_col": "y"},
        ]
    )
    with pytest.raises(ValueError, match="NULL primary key"):
        merge(conn, [bad])
    assert snapshot(conn) == before
    with pytest.raises(ValueError, match="NULL primary key"):
        replace(conn, [bad])
    assert snapshot(conn) == before


def test_null_primary_key_on_a_new_table_creates_nothing(conn, stage):
    with pytest.raises(ValueError, match="NULL primary key"):
        merge(conn, [stage([{"id": None, "updated": ts(1)}])])
    assert tables(conn) == []


@pytest.mark.parametrize("write", [merge, replace], ids=["merge", "replace"])
def test_failure_mid_transaction_leaves_the_table_exactly_as_before(conn, stage, write):
    merge(conn, [stage([{"id": "a", "updated": ts(1), "n": 1, "note": "keep"}])], run_id="r1")
    before = snapshot(conn)
    good = stage([{"id": "a", "updated": ts(5), "n": 5, "note": "new"}])
    # Readable schema (so the write starts and adds `added_col`), unreadable data in `note`.
    broken = stage(
        [{"id": f"x{i}", "updated": ts(5), "note": f"v{i}" * 20, "added_col": "y"} for i in range(500)]
    )
    corrupt_column(broken, "note")
    with pytest.raises(duckdb.Error):
        write(conn, [good, broken])
    assert snapshot(conn) == before
    assert tables(conn) == [TABLE]

    not_parquet = stage.directory / "garbage.parquet"
    not_parquet.write_bytes(b"this is not a parquet file")
    with pytest.raises(duckdb.Error):
        write(conn, [good, not_parquet])
    assert snapshot(conn) == before
    # The connection is usable afterwards: no transaction was left open.
    assert write(conn, [good]).table_rows == 1


def test_missing_staged_file_is_reported(conn, stage, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        merge(conn, [tmp_path / "nope.parquet"])


def test_empty_merge_creates_the_table_and_writes_nothing(conn, stage):
    result = merge(conn, [])
    assert result == WriteResult(0, 0, 0, 0, 0, [])
    assert [c for c, _ in columns(conn)] == [*TYPES, "_loaded_at", "_run_id", "_deleted_at"]
    merge(conn, [stage([{"id": "a", "updated": ts(1)}])])
    assert merge(conn, []).table_rows == 1


def mark_deleted(conn: duckdb.DuckDBPyConnection, *ids: str) -> None:
    """What the deletion sweep does to rows whose id Klaviyo no longer lists."""
    conn.execute(f"UPDATE {FQ} SET _deleted_at = now() WHERE list_contains(?, id)", [list(ids)])


def test_a_merge_clears_the_deleted_mark_of_every_merged_id_stale_rows_included(conn, stage):
    merge(conn, [stage([{"id": k, "updated": ts(2), "n": 1} for k in "abc"])], run_id="r1")
    mark_deleted(conn, "a", "b", "c")
    # "a" comes back newer (replaced), "b" older than the stored row (kept as it is): both are in
    # Klaviyo after all. "c" is not in the batch and stays marked.
    batch = stage([{"id": "a", "updated": ts(3), "n": 2}, {"id": "b", "updated": ts(1), "n": 0}])
    result = merge(conn, [batch], run_id="r2")
    assert (result.updated, result.skipped_stale, result.restored, result.marked_deleted) == (1, 1, 2, 1)
    assert rows(conn, "n", "_run_id") == {"a": (2, "r2"), "b": (1, "r1"), "c": (1, "r1")}
    marked = conn.execute(f"SELECT id FROM {FQ} WHERE _deleted_at IS NOT NULL").fetchall()
    assert marked == [("c",)]
    assert merge(conn, [batch]).restored == 0  # nothing left to restore


def test_a_merge_table_written_before_deletions_gets_the_column(conn, stage):
    merge(conn, [stage([{"id": "a", "updated": ts(1)}])])
    conn.execute(f"ALTER TABLE {FQ} DROP COLUMN _deleted_at")  # as an older version wrote it
    result = merge(conn, [stage([{"id": "b", "updated": ts(1)}])])
    assert result.columns_added == ["_deleted_at"]
    assert [c for c, _ in columns(conn)][-3:] == ["_loaded_at", "_run_id", "_deleted_at"]
    assert conn.execute(f"SELECT count(*), count(_deleted_at) FROM {FQ}").fetchone() == (2, 0)


def test_a_replace_table_has_no_deleted_at(conn, stage):
    result = replace(conn, [stage([{"id": "a", "n": 1}])])
    assert "_deleted_at" not in dict(columns(conn))
    assert (result.restored, result.marked_deleted) == (0, 0)
    replace(conn, [stage([{"id": "b", "n": 1}])])
    assert "_deleted_at" not in dict(columns(conn))


# -- replace -------------------------------------------------------------------------------------


def test_replace_swaps_the_table(conn, stage):
    merge(conn, [stage([{"id": "a", "n": 1, "legacy": "old"}, {"id": "b", "n": 1}])])
    f = stage([{"id": "b", "n": 2, "fresh": "y"}, {"id": "c", "n": 2}, {"id": "c", "n": 3}])
    result = replace(conn, [f], run_id="r2")
    assert result == WriteResult(
        rows_written=2, inserted=1, updated=1, skipped_stale=0, table_rows=2, columns_added=["fresh"]
    )
    assert rows(conn, "n", "legacy", "fresh", "_run_id") == {
        "b": (2, None, "y", "r2"),
        "c": (3, None, None, "r2"),  # duplicate ids: the later row wins
    }
    names = [c for c, _ in columns(conn)]
    assert "legacy" in names  # nothing is dropped silently
    assert names[-2:] == ["_loaded_at", "_run_id"]
    assert tables(conn) == [TABLE]


def test_replace_keeps_stored_column_types(conn, stage):
    replace(conn, [stage([{"id": "a", "n": 1}])])
    replace(conn, [stage([{"id": "b", "n": "2"}], {"n": pa.string()})])
    assert dict(columns(conn))["n"] == "BIGINT"
    assert rows(conn, "n") == {"b": (2,)}


def test_empty_replace_gives_an_empty_table_with_the_columns(conn, stage):
    replace(conn, [stage([{"id": "a", "n": 1, "extra": "e"}])])
    result = replace(conn, [])
    assert (result.rows_written, result.table_rows) == (0, 0)
    assert conn.execute(f"SELECT count(*) FROM {FQ}").fetchone() == (0,)
    assert [c for c, _ in columns(conn)] == [*TYPES, "extra", "_loaded_at", "_run_id"]


def test_replace_of_a_missing_table_creates_it(conn, stage):
    result = replace(conn, [stage([{"id": "a"}, {"id": "b"}])])
    assert (result.inserted, result.updated, result.table_rows) == (2, 0, 2)


def test_writes_are_visible_to_a_new_process(db, stage):
    with open_database(db) as conn:
        merge(conn, [stage([{"id": "a", "updated": ts(1), "n": 1}])])
    code = (
        "import sys, duckdb; c = duckdb.connect(sys.argv[1], read_only=True); "
        f"print(c.execute('SELECT n FROM {FQ}').fetchone()[0])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True)
    assert out.stdout.strip() == "1", out.stderr


# -- connect -------------------------------------------------------------------------------------


def test_connect_parses_duckdb_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_database("duckdb:///rel/klaviyo.duckdb") as conn:
        conn.execute("CREATE TABLE t (i INTEGER)")
    assert (tmp_path / "rel" / "klaviyo.duckdb").is_file()

    absolute = tmp_path / "abs" / "dir" / "klaviyo.duckdb"
    uri = f"duckdb:///{absolute}"
    assert uri.startswith("duckdb:////")
    with open_database(uri) as conn:
        conn.execute("CREATE TABLE t (i INTEGER)")
    assert absolute.is_file()
    with open_database(absolute, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)

    assert resolve_database("duckdb:///klaviyo.duckdb") == "klaviyo.duckdb"
    assert resolve_database("duckdb:////data/klaviyo.duckdb") == "/data/klaviyo.duckdb"
    assert resolve_database("md:klaviyo") == "md:klaviyo"
    assert resolve_database(":memory:") == ":memory:"


def _memory_limit(conn: duckdb.DuckDBPyConnection) -> str:
    row = conn.execute("SELECT current_setting('memory_limit')").fetchone()
    assert row is not None
    return str(row[0])


def test_memory_limit_applies_to_write_connections_of_local_files(db):
    with open_database(db) as conn:
        default = _memory_limit(conn)
    with open_database(db, memory_limit="300MB") as conn:
        assert _memory_limit(conn) == "286.1 MiB" != default  # DuckDB reports 300 * 10**6 bytes in MiB
    with open_database(db, read_only=True, memory_limit="300MB") as conn:
        assert _memory_limit(conn) == default
    with open_database(":memory:", memory_limit="300MB") as conn:
        assert _memory_limit(conn) == default


HOLDER = """
import sys, duckdb
conn = duckdb.connect(sys.argv[1])
conn.execute("CREATE TABLE IF NOT EXISTS held (i INTEGER)")
print("locked", flush=True)
sys.stdin.readline()
conn.close()
print("released", flush=True)
"""


@contextmanager
def lock_held_by_other_process(db: Path) -> Iterator[subprocess.Popen[str]]:
    """A subprocess holding a read-write connection until a line arrives on its stdin."""
    db.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "released"
    proc.wait(timeout=30)


class _Signal(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.waiting = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "locked by another process" in record.getMessage():
            self.waiting.set()


def test_connect_waits_for_a_lock_held_by_another_process(db):
    logger = logging.getLogger("omniload_assets.warehouse.connection")
    signal = _Signal()
    old_level = logger.level
    logger.addHandler(signal)
    logger.setLevel(logging.INFO)
    outcome: dict[str, Any] = {}

    def open_it() -> None:
        try:
            with open_database(db, lock_timeout_s=120) as conn:
                outcome["tables"] = conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        except BaseException as exc:  # reported to the test thread
            outcome["error"] = exc

    try:
        with lock_held_by_other_process(db) as holder:
            waiter = threading.Thread(target=open_it)
            waiter.start()
            assert signal.waiting.wait(timeout=60), "connect() never reported waiting for the lock"
            assert waiter.is_alive()
            release(holder)
            waiter.join(timeout=120)
        assert not waiter.is_alive()
        assert "error" not in outcome, outcome.get("error")
        assert outcome["tables"] == [("held",)]
    finally:
        logger.removeHandler(signal)
        logger.setLevel(old_level)


class _Clock:
    """Stands in for the ``time`` module of ``connection``: sleeping moves its clock on, instantly."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize(("factor", "timeout"), [(1.0, 100.0), (0.5, 100.0), (1.0, 0.5)])
def test_lock_waits_back_off_exponentially_with_jitter_within_the_timeout(monkeypatch, factor, timeout):
    from omniload_assets import backoff
    from omniload_assets.warehouse import connection

    clock = _Clock()
    failures = iter(range(9))
    monkeypatch.setattr(connection, "time", clock)
    monkeypatch.setattr(
        connection,
        "backoff_s",
        lambda attempt, first_s, cap_s: backoff.backoff_s(
            attempt, first_s, cap_s, jitter=lambda lo, hi: factor
        ),
    )

    def locked(target: str, read_only: bool = False) -> str:
        if next(failures, None) is None:
            return "connected"
        raise duckdb.IOException(f'Could not set lock on file "{target}": Conflicting lock is held')

    monkeypatch.setattr(connection.duckdb, "connect", locked)
    if timeout < 1:
        with pytest.raises(DuckDBLockedError):
            connection._connect_waiting("x.duckdb", local=True, read_only=False, lock_timeout_s=timeout)
        assert sum(clock.sleeps) == pytest.approx(timeout)  # the last wait is cut to what is left
        return
    assert connection._connect_waiting("x.duckdb", local=True, read_only=False, lock_timeout_s=timeout) == (
        "connected"
    )
    doubling = [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    assert clock.sleeps == pytest.approx([d * factor for d in doubling])


def test_lock_timeout_raises_a_clear_error(db):
    with lock_held_by_other_process(db) as holder:
        with pytest.raises(DuckDBLockedError) as info:
            connect(db, lock_timeout_s=0.2)
        with pytest.raises(DuckDBLockedError):
            connect(f"duckdb:///{db}", read_only=True, lock_timeout_s=0)
        release(holder)
    message = str(info.value)
    assert str(db) in message
    assert "OMNILOAD_DUCKDB_LOCK_TIMEOUT" in message
    assert f"PID {holder.pid}" in message
    assert "\n" not in message
    assert isinstance(info.value, WarehouseError)
    with open_database(db) as conn:  # free again
        assert conn.execute("SELECT count(*) FROM held").fetchone() == (0,)


def test_unwritable_path_raises_path_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(DuckDBPathError) as info:
        connect(blocker / "sub" / "klaviyo.duckdb")
    assert str(blocker) in str(info.value)
    assert "OMNILOAD_DUCKDB_PATH" in str(info.value)
    assert "\n" not in str(info.value)

    with pytest.raises(DuckDBPathError, match="is a directory"):
        connect(tmp_path)
    with pytest.raises(DuckDBPathError, match="does not exist"):
        connect(tmp_path / "missing.duckdb", read_only=True)
    assert isinstance(info.value, WarehouseError)


def test_a_merge_replacing_more_rows_than_the_memory_limit_holds_spills_instead_of_failing(db, stage):
    """Replaced rows are deleted and appended again: DuckDB keeps an UPDATE's new values in memory
    (they cannot spill), and a 1.5M-row update ran out of memory under the 300MB default."""
    n = 300_000
    old = pa.table(
        {
            "id": pa.array([f"id{i:07d}" for i in range(n)]),
            "updated": pa.array([ts(1)] * n, pa.timestamp("us", tz="UTC")),
            "note": pa.array([f"old note {i} " * 4 for i in range(n)]),
        }
    )
    new = old.set_column(1, "updated", pa.array([ts(2)] * n, pa.timestamp("us", tz="UTC")))
    new = new.set_column(2, "note", pa.array([f"new note {i} " * 4 for i in range(n)]))
    first, second = stage.directory / "old.parquet", stage.directory / "new.parquet"
    pq.write_table(old, first)
    pq.write_table(new, second)
    with open_database(db, memory_limit="40MB") as conn:
        merge(conn, [first])
        result = merge(conn, [second], run_id="again")
        assert (result.inserted, result.updated, result.skipped_stale, result.table_rows) == (0, n, 0, n)
        row = conn.execute(
            f"SELECT count(*), min(note) FROM {qualified_name(conn, SCHEMA, TABLE)}"
        ).fetchone()
    assert row == (n, "new note 0 " * 4)


# -- what a table holds ----------------------------------------------------------------------------


def comment(conn: duckdb.DuckDBPyConnection, table: str = TABLE) -> str | None:
    row = conn.execute(
        "SELECT comment FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?", [SCHEMA, table]
    ).fetchone()
    return None if row is None else (row[0] or "")


REFUSED = (
    "klaviyo.events holds Klaviyo events (primary key id); refusing to write profiles into it: "
    "choose another --dest-table"
)


@pytest.mark.parametrize("write", ["merge", "replace"])
def test_another_source_is_refused_and_the_table_is_unchanged(conn, stage, write):
    merge(conn, [stage([{"id": "a", "updated": ts(1), "n": 1}])], source="events")
    assert comment(conn) == "Klaviyo events (primary key id), written by omniload"
    before = snapshot(conn)
    profiles = [stage([{"id": "p1", "updated": ts(2), "email": "x@example.com"}])]
    with pytest.raises(TableOwnerError) as info:
        if write == "merge":
            merge(conn, profiles, source="profiles")
        else:
            replace_table(
                conn,
                schema=SCHEMA,
                table=TABLE,
                files=profiles,
                primary_key="id",
                column_types=TYPES,
                source="profiles",
            )
    assert str(info.value) == REFUSED
    assert snapshot(conn) == before  # no column added, no row mixed in
    merge(conn, [stage([{"id": "b", "updated": ts(3)}])], source="events")  # its own source still writes
    assert set(rows(conn)) == {"a", "b"}


def test_the_record_survives_a_replace_and_a_reopen(db, stage):
    def replace_tags(conn: duckdb.DuckDBPyConnection, source: str) -> WriteResult:
        return replace_table(
            conn,
            schema=SCHEMA,
            table=TABLE,
            files=[stage([{"id": "t"}])],
            primary_key="id",
            column_types=TYPES,
            source=source,
        )

    with open_database(db) as conn:
        replace_tags(conn, "tags")
        replace_tags(conn, "tags")
        assert comment(conn) == "Klaviyo tags (primary key id), written by omniload"
    with open_database(db) as conn:
        with pytest.raises(TableOwnerError, match="holds Klaviyo tags .*refusing to write coupons"):
            replace_tags(conn, "coupons")
        assert tables(conn) == [TABLE]  # the record is the table's comment, no side table


def test_a_table_without_a_record_is_adopted_when_it_has_the_primary_key(conn, stage):
    merge(conn, [stage([{"id": "a", "updated": ts(1)}])])  # as written before records existed
    conn.execute(f"COMMENT ON TABLE {FQ} IS 'owned by the data team'")
    assert comment(conn) == "owned by the data team"
    merge(conn, [stage([{"id": "b", "updated": ts(1)}])], source="events")
    assert comment(conn) == "owned by the data team; Klaviyo events (primary key id), written by omniload"
    with pytest.raises(TableOwnerError, match="holds Klaviyo events"):
        merge(conn, [stage([{"id": "c"}])], source="profiles")
    assert set(rows(conn)) == {"a", "b"}


def test_a_table_of_someone_else_without_the_primary_key_is_refused(conn, stage):
    conn.execute(f"CREATE SCHEMA {SCHEMA}.{SCHEMA}")
    conn.execute(f"CREATE TABLE {FQ} (order_no INTEGER, total DOUBLE)")
    conn.execute(f"INSERT INTO {FQ} VALUES (1, 9.5)")
    with pytest.raises(TableOwnerError) as info:
        merge(conn, [stage([{"id": "a", "updated": ts(1)}])], source="events")
    assert str(info.value) == (
        "klaviyo.events was not written by omniload and has no id column; refusing to write events "
        "into it: choose another --dest-table"
    )
    assert columns(conn) == [("order_no", "INTEGER"), ("total", "DOUBLE")]
    assert comment(conn) == ""


def test_a_failed_first_write_records_nothing(conn, stage):
    merge(conn, [stage([{"id": "a", "updated": ts(1)}])])
    with pytest.raises(ValueError, match="NULL primary key"):
        merge(conn, [stage([{"id": None, "updated": ts(1)}])], source="profiles")
    assert comment(conn) == ""  # the record is written in the write's transaction, or not at all
    merge(conn, [stage([{"id": "b", "updated": ts(1)}])], source="events")
    assert "Klaviyo events" in (comment(conn) or "")


def test_table_refusal_checks_a_table_before_a_run_like_the_write_does(conn, stage):
    assert table_refusal(conn, SCHEMA, TABLE, "profiles", "id") is None  # no table yet
    merge(conn, [stage([{"id": "a", "updated": ts(1)}])], source="events")
    assert table_refusal(conn, SCHEMA, TABLE, "events", "id") is None
    assert table_refusal(conn, "KLAVIYO", "Events", "profiles", "id") == REFUSED.replace(
        "klaviyo.events", "KLAVIYO.Events"
    )
    conn.execute(f"CREATE TABLE {SCHEMA}.{SCHEMA}.orders (order_no INTEGER)")
    assert "has no id column" in (table_refusal(conn, SCHEMA, "orders", "events", "id") or "")


# -- append and delete+insert (the run config's incremental_strategy), keys and columns -----------


def append(conn: duckdb.DuckDBPyConnection, files: list[Path], run_id: str = "run", **kw: Any) -> WriteResult:
    args: dict[str, Any] = {"primary_key": "id", "incremental_key": "updated", "column_types": TYPES}
    args.update(kw)
    return append_rows(conn, schema=SCHEMA, table=TABLE, files=files, run_id=run_id, **args)


def delete_insert_(
    conn: duckdb.DuckDBPyConnection, files: list[Path], window: TimeWindow | None, **kw: Any
) -> WriteResult:
    args: dict[str, Any] = {"primary_key": "id", "incremental_key": "updated", "column_types": TYPES}
    args.update(kw)
    return delete_insert(conn, schema=SCHEMA, table=TABLE, files=files, window=window, run_id="run", **args)


def all_rows(conn: duckdb.DuckDBPyConnection, *cols: str) -> list[tuple]:
    """Every row (duplicates kept), sorted."""
    select = ", ".join(f'"{c}"' for c in ("id", *cols))
    return sorted(conn.execute(f"SELECT {select} FROM {FQ}").fetchall(), key=repr)


def days(first: int, last: int) -> TimeWindow:
    """``[first, last)`` as days of January 2024."""
    return TimeWindow(ts(first), ts(last))


def three_days(conn: duckdb.DuckDBPyConnection, stage: Stager) -> None:
    """a on day 1, b and c on day 2, d on day 3, merged."""
    stored = [("a", 1), ("b", 2), ("c", 2), ("d", 3)]
    merge(
        conn, [stage([{"id": i, "updated": ts(d), "n": 0} for i, d in stored])], run_id="r0", source="events"
    )


def test_append_inserts_every_staged_row_duplicates_included(conn, stage):
    merge(conn, [stage([{"id": "a", "updated": ts(1), "n": 1}])], run_id="r1")
    batch = stage(
        [
            {"id": "a", "updated": ts(2), "n": 2},
            {"id": "a", "updated": ts(2), "n": 3},
            {"id": "b", "updated": ts(1), "n": 4, "extra": "x"},
        ]
    )
    result = append(conn, [batch], run_id="r2")
    assert (result.rows_written, result.inserted, result.updated, result.table_rows) == (3, 3, 0, 4)
    assert result.columns_added == ["extra"]
    assert all_rows(conn, "n", "_run_id") == [
        ("a", 1, "r1"),
        ("a", 2, "r2"),
        ("a", 3, "r2"),
        ("b", 4, "r2"),
    ]
    # Appended to a merge table: its deletion mark is kept, NULL on the new rows.
    assert conn.execute(f"SELECT count(*) FROM {FQ} WHERE _deleted_at IS NULL").fetchone() == (4,)


def test_append_to_a_new_table_creates_it_without_a_deletion_mark_unless_asked(conn, stage):
    append(conn, [stage([{"id": "a", "updated": ts(1)}])])
    assert "_deleted_at" not in dict(columns(conn))
    conn.execute(f"DROP TABLE {FQ}")
    append(conn, [stage([{"id": "a", "updated": ts(1)}])], track_deletions=True)
    assert dict(columns(conn))["_deleted_at"] == "TIMESTAMP WITH TIME ZONE"


def test_append_with_clear_rebuilds_the_window_and_leaves_other_days(conn, stage):
    three_days(conn, stage)
    result = append(conn, [stage([{"id": "b", "updated": ts(2), "n": 9}])], clear=days(2, 3))
    assert (result.deleted, result.inserted, result.table_rows) == (2, 1, 3)
    assert rows(conn, "n", "_run_id") == {"a": (0, "r0"), "b": (9, "run"), "d": (0, "r0")}


def test_delete_insert_replaces_the_window_and_the_rows_of_staged_keys(conn, stage):
    three_days(conn, stage)
    # a moved into day 2 (its day-1 row goes too: no key twice); c was deleted upstream.
    staged = stage([{"id": "a", "updated": ts(2), "n": 7}, {"id": "b", "updated": ts(2), "n": 8}])
    result = delete_insert_(conn, [staged], days(2, 3))
    assert (result.rows_written, result.inserted, result.updated) == (2, 0, 2)
    assert (result.deleted, result.table_rows) == (3, 3)
    assert all_rows(conn, "n") == [("a", 7), ("b", 8), ("d", 0)]


def test_delete_insert_deduplicates_the_batch_newest_first(conn, stage):
    staged = stage(
        [
            {"id": "a", "updated": ts(2), "n": 1},
            {"id": "a", "updated": ts(2), "n": 2},  # tie: the later row wins
            {"id": "b", "updated": ts(2), "n": 3},
        ]
    )
    result = delete_insert_(conn, [staged], days(2, 3))
    assert (result.rows_written, result.inserted, result.table_rows) == (2, 2, 2)
    assert all_rows(conn, "n") == [("a", 2), ("b", 3)]


def test_delete_insert_without_a_window_or_incremental_key_replaces_the_table(conn, stage):
    three_days(conn, stage)
    result = delete_insert_(conn, [stage([{"id": "z", "updated": ts(5), "n": 1}])], None)
    assert result.table_rows == 1 and rows(conn, "n") == {"z": (1,)}
    result = delete_insert_(conn, [stage([{"id": "y", "n": 2}])], days(1, 2), incremental_key=None)
    assert result.table_rows == 1 and rows(conn, "n") == {"y": (2,)}


def test_merge_with_clear_drops_the_rows_of_the_window_gone_upstream(conn, stage):
    three_days(conn, stage)
    result = merge(conn, [stage([{"id": "b", "updated": ts(2), "n": 5}])], clear=days(2, 3))
    assert (result.deleted, result.inserted, result.table_rows) == (2, 1, 3)
    assert rows(conn, "n") == {"a": (0,), "b": (5,), "d": (0,)}


def test_composite_keys_deduplicate_and_match_null_parts_as_equal(conn, stage):
    first = stage(
        [
            {"id": "a", "note": "x", "updated": ts(1), "n": 1},
            {"id": "a", "note": "y", "updated": ts(1), "n": 2},
            {"id": "a", "note": None, "updated": ts(1), "n": 3},
            {"id": "a", "note": None, "updated": ts(1), "n": 4},  # same key as the row before
        ]
    )
    result = merge(conn, [first], keys=["id", "note"])
    assert (result.inserted, result.table_rows) == (3, 3)
    result = merge(conn, [stage([{"id": "a", "note": None, "updated": ts(2), "n": 5}])], keys=["id", "note"])
    assert (result.inserted, result.updated, result.table_rows) == (0, 1, 3)
    assert all_rows(conn, "note", "n") == [("a", "x", 1), ("a", "y", 2), ("a", None, 5)]
    staged = stage([{"id": "a", "note": "x", "updated": ts(3), "n": 6}])
    result = delete_insert_(conn, [staged], days(3, 4), keys=["id", "note"])
    assert result.deleted == 1
    assert all_rows(conn, "note", "n") == [("a", "x", 6), ("a", "y", 2), ("a", None, 5)]


def test_replace_by_composite_keys_or_without_deduplication(conn, stage):
    batch = [
        {"id": "a", "note": "x", "updated": ts(1), "n": 1},
        {"id": "a", "note": "x", "updated": ts(2), "n": 2},
        {"id": "a", "note": "y", "updated": ts(1), "n": 3},
    ]
    common: dict[str, Any] = {"schema": SCHEMA, "table": TABLE, "primary_key": "id", "column_types": TYPES}
    result = replace_table(
        conn, files=[stage(batch)], keys=["id", "note"], incremental_key="updated", **common
    )
    assert result.table_rows == 2
    assert all_rows(conn, "note", "n") == [("a", "x", 2), ("a", "y", 3)]
    result = replace_table(conn, files=[stage(batch)], deduplicate=False, **common)
    assert result.table_rows == 3


def test_a_key_that_is_no_column_is_refused(conn, stage):
    with pytest.raises(ValueError, match="primary key 'nope' is not a column"):
        merge(conn, [stage([{"id": "a", "updated": ts(1)}])], keys=["nope"])
    assert tables(conn) == []


def test_columns_write_only_those_and_the_keys(conn, stage):
    batch = stage([{"id": "a", "updated": ts(1), "n": 1, "props": '{"k": 1}', "note": "x", "extra": "e"}])
    merge(conn, [batch], columns=["n"])
    assert [c for c, _ in columns(conn)] == ["id", "updated", "n", "_loaded_at", "_run_id", "_deleted_at"]
    # On a table that has more columns, the rows written hold NULL in the others.
    conn.execute(f"DROP TABLE {FQ}")
    merge(conn, [batch])
    newer = stage([{"id": "a", "updated": ts(2), "n": 2, "note": "y"}])
    append(conn, [newer], columns=["note"])
    assert all_rows(conn, "n", "note") == [("a", 1, "x"), ("a", None, "y")]


@pytest.mark.parametrize("write", ["append", "delete+insert"])
def test_a_failed_append_or_delete_insert_leaves_the_table_as_it_was(conn, stage, write):
    three_days(conn, stage)
    before = snapshot(conn)
    good = stage([{"id": "b", "updated": ts(2), "n": 5}])
    broken = stage(
        [{"id": f"x{i}", "updated": ts(2), "note": f"v{i}" * 20, "added": "y"} for i in range(500)]
    )
    corrupt_column(broken, "note")

    def run(files: list[Path], **kw: Any) -> WriteResult:
        if write == "append":
            return append(conn, files, clear=days(2, 3), **kw)
        return delete_insert_(conn, files, days(2, 3), **kw)

    with pytest.raises(duckdb.Error):
        run([good, broken])
    assert snapshot(conn) == before

    def fail(_: duckdb.DuckDBPyConnection) -> None:
        raise RuntimeError("the closing hook failed")

    with pytest.raises(RuntimeError, match="closing hook"):
        run([good], also=fail)
    assert snapshot(conn) == before
    seen: list[int] = []
    run([good], also=lambda c: seen.append(c.execute(f"SELECT count(*) FROM {FQ}").fetchone()[0]))
    assert seen == [3]  # the hook ran in the write's transaction, after the rows
    with pytest.raises(TableOwnerError):
        run([good], source="profiles")
