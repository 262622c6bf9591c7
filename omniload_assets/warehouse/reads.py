"""Read-only questions to the warehouse, each written once: names, existence, columns, newest key, profile.

Functions on a connection (:func:`table_exists`, :func:`table_columns`, :func:`table_comment`,
:func:`newest_key`, :func:`profile_table`, :func:`table_ids`, :func:`active_ids`) serve the writer
inside its transaction as well as the readers. :class:`WarehouseReader` asks them on a short
read-only connection of its own, for the checks (:meth:`~WarehouseReader.profile`) and the change
sensor (:meth:`~WarehouseReader.newest_keys`); a local database file that does not exist yet holds
no tables, so it is not created. Tables are looked up in the connection's own catalog, with
DuckDB's case-insensitive name matching.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.warehouse.connection import (
    DEFAULT_LOCK_TIMEOUT_S,
    is_local_file,
    open_database,
    resolve_database,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The column that marks a merge table's row whose id Klaviyo no longer lists (NULL: present).
DELETED_AT = "_deleted_at"
#: Most duplicated keys a profile names.
SAMPLE_IDS = 5
#: Selects one table of the connection's catalog: parameters schema, table.
_ONE_TABLE = (
    "database_name = current_database() AND lower(schema_name) = lower(?) AND lower(table_name) = lower(?)"
)


def quote_ident(name: str) -> str:
    """Quote a DuckDB identifier."""
    return '"' + name.replace('"', '""') + '"'


def current_catalog(conn: duckdb.DuckDBPyConnection) -> str:
    """The name of the connection's database (its catalog)."""
    # fetchall, not fetchone: DuckDB keeps an unfinished result open and refuses conn.sql() after it.
    rows = conn.execute("SELECT current_database()").fetchall()
    return str(rows[0][0])


def qualified_name(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> str:
    """``"catalog"."schema"."table"`` for the connection's database.

    Always use this (not ``schema.table``) to refer to a table: with the seed's
    ``klaviyo.duckdb`` file the catalog is named ``klaviyo`` too, and DuckDB rejects
    ``klaviyo.events`` as an ambiguous reference to catalog or schema.
    """
    return ".".join(quote_ident(part) for part in (current_catalog(conn), schema, table))


def table_exists(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    """True when ``schema.table`` is a table of the connection's database."""
    row = conn.execute(f"SELECT count(*) FROM duckdb_tables() WHERE {_ONE_TABLE}", [schema, table]).fetchone()
    return bool(row and row[0])


def table_columns(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> list[tuple[str, str]] | None:
    """``(name, type)`` of each column of ``schema.table`` in order; None if there is no such table."""
    if not table_exists(conn, schema, table):
        return None
    rows = conn.execute(
        f"SELECT column_name, data_type FROM duckdb_columns() WHERE {_ONE_TABLE} ORDER BY column_index",
        [schema, table],
    ).fetchall()
    return [(str(name), str(type_name)) for name, type_name in rows]


def table_comment(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> str | None:
    """The DuckDB comment of ``schema.table`` (empty if none); None if there is no such table."""
    rows = conn.execute(f"SELECT comment FROM duckdb_tables() WHERE {_ONE_TABLE}", [schema, table]).fetchall()
    return None if not rows else str(rows[0][0] or "")


def _newest_us(column: str) -> str:
    """SQL: the greatest value of ``column`` as microseconds since the epoch (NULL if none)."""
    return f"epoch_us(max({quote_ident(column)})::TIMESTAMPTZ)"


def _from_us(value: int | None) -> datetime | None:
    return None if value is None else EPOCH + timedelta(microseconds=int(value))


def newest_key(conn: duckdb.DuckDBPyConnection, schema: str, table: str, column: str) -> datetime | None:
    """The greatest ``column`` of ``schema.table``; None when the table is missing or empty."""
    if not table_exists(conn, schema, table):
        return None
    row = conn.execute(f"SELECT {_newest_us(column)} FROM {qualified_name(conn, schema, table)}").fetchone()
    return _from_us(row[0]) if row else None


@dataclass(frozen=True)
class TableProfile:
    """What the checks need to know about one table, read in one scan (two with duplicates)."""

    exists: bool
    rows: int = 0
    null_keys: int = 0
    duplicate_keys: int = 0  # distinct key values that occur more than once
    extra_rows: int = 0  # rows beyond the first of each duplicated key
    duplicate_sample: tuple[str, ...] = ()
    newest: datetime | None = None
    deleted: int = 0  # rows whose _deleted_at is set: gone from Klaviyo (merge tables)


def profile_table(
    conn: duckdb.DuckDBPyConnection, schema: str, table: str, *, primary_key: str, newest_column: str
) -> TableProfile:
    """Row, null-key, duplicate-key and deleted-row counts and the newest ``newest_column`` of
    ``schema.table``."""
    columns = table_columns(conn, schema, table)
    if columns is None:
        return TableProfile(exists=False)
    target = qualified_name(conn, schema, table)
    pk = quote_ident(primary_key)
    has_deleted = DELETED_AT in {name.lower() for name, _ in columns}
    deleted_sql = f"count({quote_ident(DELETED_AT)})" if has_deleted else "0"
    row = conn.execute(
        f"SELECT count(*), count(*) - count({pk}), count(DISTINCT {pk}), {_newest_us(newest_column)}, "
        f"{deleted_sql} FROM {target}"
    ).fetchone()
    assert row is not None
    rows, nulls, distinct, newest_us, deleted = row
    extra_rows = int(rows) - int(nulls) - int(distinct)
    dupes: list[tuple[str, int, int]] = []
    if extra_rows:  # a healthy table skips the grouping pass; one pass gives the sample and the count
        dupes = conn.execute(
            f"SELECT CAST({pk} AS VARCHAR), n, count(*) OVER () FROM (SELECT {pk}, count(*) AS n "
            f"FROM {target} WHERE {pk} IS NOT NULL GROUP BY {pk} HAVING count(*) > 1) "
            f"ORDER BY n DESC, 1 LIMIT {SAMPLE_IDS}"
        ).fetchall()
    return TableProfile(
        exists=True,
        rows=int(rows),
        null_keys=int(nulls),
        duplicate_keys=int(dupes[0][2]) if dupes else 0,
        extra_rows=extra_rows,
        duplicate_sample=tuple(str(r[0]) for r in dupes),
        newest=_from_us(newest_us),
        deleted=int(deleted),
    )


def table_name_of(spec: TableSpec, table_names: Mapping[str, str]) -> str:
    """The DuckDB table of ``spec``: its asset name unless ``table_names`` maps it to another."""
    return table_names.get(spec.asset_name, spec.asset_name)


@dataclass(frozen=True)
class WarehouseReader:
    """Short read-only questions to the tables of one schema, with the IO manager's settings."""

    database: str
    schema: str
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
    table_names: Mapping[str, str] = field(default_factory=dict)

    def table_name(self, spec: TableSpec) -> str:
        return table_name_of(spec, self.table_names)

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection | None]:
        """A read-only connection, waiting up to ``lock_timeout_s`` for another process's lock; None
        (and nothing created) when the database is a local file that does not exist yet."""
        target = resolve_database(self.database)
        if is_local_file(target) and not Path(target).exists():
            yield None
            return
        with open_database(target, read_only=True, lock_timeout_s=self.lock_timeout_s) as conn:
            yield conn

    def newest_keys(self, specs: Iterable[TableSpec]) -> dict[str, datetime]:
        """Table name -> the newest incremental key loaded; tables absent, empty or without a key are
        left out. No specs, or no database file yet: nothing is opened and nothing found."""
        specs = list(specs)
        if not specs:
            return {}
        with self.connect() as conn:
            if conn is None:
                return {}
            newest = {
                spec.name: newest_key(conn, self.schema, self.table_name(spec), spec.incremental_key)
                for spec in specs
                if spec.incremental_key is not None
            }
        return {name: key for name, key in newest.items() if key is not None}

    def profile(self, spec: TableSpec, newest_column: str) -> TableProfile:
        """:func:`profile_table` of ``spec``'s table; a missing database file is a missing table."""
        with self.connect() as conn:
            if conn is None:
                return TableProfile(exists=False)
            return profile_table(
                conn,
                self.schema,
                self.table_name(spec),
                primary_key=spec.primary_key,
                newest_column=newest_column,
            )


def table_ids(conn: duckdb.DuckDBPyConnection, schema: str, table: str, column: str = "id") -> set[str]:
    """Every non-NULL ``column`` value of ``schema.table`` as text, deleted rows included; an empty
    set when the table does not exist."""
    if not table_exists(conn, schema, table):
        return set()
    rows = conn.execute(
        f"SELECT DISTINCT CAST({quote_ident(column)} AS VARCHAR) FROM {qualified_name(conn, schema, table)} "
        f"WHERE {quote_ident(column)} IS NOT NULL"
    ).fetchall()
    return {str(row[0]) for row in rows}


def active_ids(conn: duckdb.DuckDBPyConnection, schema: str, table: str, column: str = "id") -> list[str]:
    """The distinct non-NULL ``column`` values of ``schema.table`` not marked deleted, sorted as text.

    Rows whose ``_deleted_at`` is set are left out when the table has that column (a table without
    it has no deleted rows); [] when the table does not exist.
    """
    columns = table_columns(conn, schema, table)
    if columns is None:
        return []
    live = f" AND {quote_ident(DELETED_AT)} IS NULL" if DELETED_AT in {n.lower() for n, _ in columns} else ""
    rows = conn.execute(
        f"SELECT DISTINCT CAST({quote_ident(column)} AS VARCHAR) AS id FROM "
        f"{qualified_name(conn, schema, table)} WHERE {quote_ident(column)} IS NOT NULL{live} ORDER BY id"
    ).fetchall()
    return [str(row[0]) for row in rows]
