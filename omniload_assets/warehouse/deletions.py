"""Mirror Klaviyo's deletions: mark (or delete) the rows whose id Klaviyo no longer lists.

:func:`apply_listing` compares the complete listing of a table's ids with the table, in one
transaction on a connection the caller opened (``BEGIN`` … ``COMMIT``; any error rolls back and
nothing changes):

* a row whose id is not listed gets ``_deleted_at`` set to the transaction's time (the column is
  added when a table written before it existed lacks it); with ``hard_delete`` it is deleted instead;
* a marked row whose id is listed again has its mark cleared (``restored``);
* a row loaded at or after ``listed_since`` (when the listing began) is not judged: its record may
  have been created after the listing passed it, so the next sweep decides (``too_recent``);
* an empty listing of a table that holds rows is refused (:class:`SuspiciousListingError`, nothing
  changes) unless ``allow_empty``: an account emptied overnight is far less likely than a wrong key
  or a listing gone wrong.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import duckdb
import pyarrow as pa

from omniload_assets.warehouse.connection import WarehouseError
from omniload_assets.warehouse.reads import DELETED_AT, qualified_name, quote_ident, table_columns
from omniload_assets.warehouse.writer import LOADED_AT, TableOwnerError, table_refusal, transaction


class SuspiciousListingError(WarehouseError):
    """Klaviyo listed no id of a table that holds rows: nothing was marked."""


@dataclass(frozen=True)
class SweepResult:
    """What one sweep of one table did."""

    table: str
    exists: bool
    listed: int = 0  # distinct ids Klaviyo listed
    rows: int = 0  # rows of the table before the sweep
    newly_deleted: int = 0  # rows found gone now (marked, or deleted with hard_delete)
    restored: int = 0  # marked rows whose id is listed again: mark cleared
    hard_deleted: int = 0  # rows removed (hard_delete only; previously marked ones included)
    too_recent: int = 0  # unlisted rows loaded since the listing began, left to the next sweep
    marked: int = 0  # rows marked deleted after the sweep


@dataclass(frozen=True)
class _Table:
    """One table as the sweep's SQL names it (alias ``t``)."""

    target: str
    key: str  # the primary key column
    deleted_at: str
    loaded_at: str | None
    listed: str  # the temporary table of listed ids

    @property
    def in_listing(self) -> str:
        return f"EXISTS (SELECT 1 FROM {self.listed} AS l WHERE l.id = CAST(t.{self.key} AS VARCHAR))"

    @property
    def unlisted(self) -> str:
        return f"t.{self.key} IS NOT NULL AND NOT {self.in_listing}"

    def loaded_before(self, since: datetime) -> tuple[str, list[object]]:
        """SQL (and its parameters) true for rows loaded before ``since`` or at an unknown time."""
        if self.loaded_at is None:
            return "true", []
        return f"(t.{self.loaded_at} IS NULL OR t.{self.loaded_at} < ?)", [since]


def apply_listing(
    conn: duckdb.DuckDBPyConnection,
    *,
    schema: str,
    table: str,
    ids: Collection[str],
    listed_since: datetime,
    primary_key: str = "id",
    source: str | None = None,
    hard_delete: bool = False,
    allow_empty: bool = False,
) -> SweepResult:
    """Mark the rows of ``schema.table`` whose ``primary_key`` is not in ``ids`` (the complete listing
    begun at ``listed_since``) and restore those that are, in one transaction (module docstring).

    A missing table is left alone (``exists`` False). With ``source`` (the Klaviyo table's name) a
    table recorded as holding another source is refused (:class:`TableOwnerError`).
    """
    columns = table_columns(conn, schema, table)
    if columns is None:
        return SweepResult(table, exists=False)
    if source is not None:
        refusal = table_refusal(conn, schema, table, source, primary_key)
        if refusal is not None:
            raise TableOwnerError(refusal)
    names = {name.lower(): name for name, _ in columns}
    if primary_key.lower() not in names:
        raise WarehouseError(f"{schema}.{table} has no {primary_key} column: it cannot be swept")
    parts = _Table(
        target=qualified_name(conn, schema, table),
        key=quote_ident(names[primary_key.lower()]),
        deleted_at=quote_ident(names.get(DELETED_AT, DELETED_AT)),
        loaded_at=quote_ident(names[LOADED_AT]) if LOADED_AT in names else None,
        listed=quote_ident(f"__omniload_listed_{uuid.uuid4().hex}"),
    )
    with transaction(conn):
        if DELETED_AT not in names:
            conn.execute(f"ALTER TABLE {parts.target} ADD COLUMN {parts.deleted_at} TIMESTAMP WITH TIME ZONE")
        rows = _count(conn, f"SELECT count(*) FROM {parts.target}")
        if not ids and rows and not allow_empty:
            raise SuspiciousListingError(
                f"Klaviyo listed no {source or table} but {schema}.{table} holds {rows:,} rows; nothing was "
                "marked. If every record really is gone, sweep again with OMNILOAD_SWEEP_ALLOW_EMPTY=1 "
                "(or allow_empty: true in the klaviyo_sweep resource's run config)"
            )
        listed = _load_ids(conn, parts.listed, ids)
        result = _mark(conn, parts, listed_since, hard_delete=hard_delete)
        conn.execute(f"DROP TABLE {parts.listed}")
    return SweepResult(table, True, listed, rows, *result)


def _count(conn: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None) -> int:
    # fetchall, not fetchone: DuckDB keeps an unfinished result open and refuses register() after it.
    rows = conn.execute(sql, params or []).fetchall()
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def _load_ids(conn: duckdb.DuckDBPyConnection, name: str, ids: Collection[str]) -> int:
    """A temporary table ``name`` of the distinct ``ids``; how many there are."""
    view = f"__omniload_ids_{uuid.uuid4().hex}"
    conn.register(view, pa.table({"id": pa.array(list(ids), pa.string())}))
    try:
        return _count(conn, f"CREATE TEMP TABLE {name} AS SELECT DISTINCT id FROM {quote_ident(view)}")
    finally:
        conn.unregister(view)


def _mark(
    conn: duckdb.DuckDBPyConnection, parts: _Table, listed_since: datetime, *, hard_delete: bool
) -> tuple[int, int, int, int, int]:
    """Restore, then mark (or delete) the gone rows: ``(newly_deleted, restored, hard_deleted,
    too_recent, marked)`` as :class:`SweepResult` counts them."""
    old, params = parts.loaded_before(listed_since)
    gone = f"{parts.unlisted} AND {old}"
    unmarked = f"t.{parts.deleted_at} IS NULL"
    restored = _count(
        conn,
        f"UPDATE {parts.target} AS t SET {parts.deleted_at} = NULL "
        f"WHERE t.{parts.deleted_at} IS NOT NULL AND {parts.in_listing}",
    )
    too_recent = _count(
        conn,
        f"SELECT count(*) FROM {parts.target} AS t WHERE {unmarked} AND {parts.unlisted} AND NOT {old}",
        params,
    )
    if hard_delete:
        newly = _count(conn, f"SELECT count(*) FROM {parts.target} AS t WHERE {unmarked} AND {gone}", params)
        hard_deleted = _count(conn, f"DELETE FROM {parts.target} AS t WHERE {gone}", params)
    else:
        hard_deleted = 0
        newly = _count(
            conn,
            f"UPDATE {parts.target} AS t SET {parts.deleted_at} = now() WHERE {unmarked} AND {gone}",
            params,
        )
    marked = _count(conn, f"SELECT count({parts.deleted_at}) FROM {parts.target}")
    return newly, restored, hard_deleted, too_recent, marked
