"""What a load has committed, and which endpoints must not be asked yet, kept with the data in DuckDB.

Two small tables in the warehouse's schema, so the record survives an ephemeral Dagster instance,
the CLI and a new pod:

* :data:`CHECKPOINTS_TABLE`: one row per committed stretch of a run's requested window, per DuckDB
  table (:func:`record_stretches`, :func:`committed_stretches`, :func:`clear_stretches`). A rerun of
  the same window can skip what an earlier run already committed.
* :data:`DEFERRALS_TABLE`: per Klaviyo table (each has its own endpoint and rate limit), the instant
  before which no run should ask it again, e.g. after a 429 with a daily quota's ``Retry-After``
  (:func:`defer`, :func:`clear_deferral`, :func:`active_deferrals`).

Every function works on the caller's connection inside the caller's transaction (none begins or
commits one), so a stretch is recorded in the same transaction as its rows. Writes create the schema
and table when missing; reads find an absent table empty and create nothing (they work read-only).
Datetimes must be timezone-aware and are returned in UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets.warehouse.reads import current_catalog, qualified_name, quote_ident, table_exists

#: One row per committed stretch of a run's requested window, per DuckDB table.
CHECKPOINTS_TABLE = "_omniload_checkpoints"
#: One row per Klaviyo table whose endpoint must not be asked before ``until``.
DEFERRALS_TABLE = "_omniload_deferrals"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CHECKPOINT_COLUMNS = (
    "table_name VARCHAR NOT NULL, range_start TIMESTAMPTZ NOT NULL, range_end TIMESTAMPTZ NOT NULL, "
    "stretch_start TIMESTAMPTZ NOT NULL, stretch_end TIMESTAMPTZ NOT NULL, run_id VARCHAR NOT NULL, "
    "committed_at TIMESTAMPTZ NOT NULL"
)
_DEFERRAL_COLUMNS = (
    "source VARCHAR PRIMARY KEY, until TIMESTAMPTZ NOT NULL, reason VARCHAR NOT NULL, "
    "run_id VARCHAR NOT NULL, recorded_at TIMESTAMPTZ NOT NULL"
)
#: Rows of one table's requested window (case-insensitive, as DuckDB's table names are).
_ONE_RANGE = "lower(table_name) = lower(?) AND range_start = ? AND range_end = ?"


@dataclass(frozen=True)
class CommittedStretch:
    """A stretch of a requested window whose rows a run committed."""

    window: TimeWindow
    run_id: str
    committed_at: datetime


@dataclass(frozen=True)
class Deferral:
    """No run should ask the Klaviyo table ``source`` before ``until``."""

    source: str
    until: datetime
    reason: str
    run_id: str

    def describe(self) -> str:
        """``until 2026-11-28 03:00 UTC (reason)``, on one line."""
        reason = " ".join(self.reason.split())
        return f"until {format_instant(self.until)}" + (f" ({reason})" if reason else "")


def format_instant(instant: datetime) -> str:
    """``2026-11-28 03:00 UTC`` (seconds shown when not zero)."""
    utc = _aware(instant, "instant").astimezone(UTC)
    return utc.strftime("%Y-%m-%d %H:%M:%S UTC" if utc.second or utc.microsecond else "%Y-%m-%d %H:%M UTC")


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value.isoformat()}")
    return value


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def _ensure_table(conn: duckdb.DuckDBPyConnection, schema: str, table: str, columns: str) -> str:
    """Create ``schema`` and ``schema.table`` when missing; the table's qualified name."""
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(current_catalog(conn))}.{quote_ident(schema)}")
    target = qualified_name(conn, schema, table)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {target} ({columns})")
    return target


# -- checkpoints ----------------------------------------------------------------------------------


def record_stretches(
    conn: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    requested: TimeWindow,
    stretches: Sequence[TimeWindow],
    run_id: str,
    now: datetime | None = None,
) -> None:
    """Record that ``run_id`` committed ``stretches`` of ``requested`` to ``table``, at ``now``.

    Each stretch must lie within ``requested``; no stretches records nothing (and creates nothing).
    """
    committed_at = _aware(now, "now") if now is not None else datetime.now(UTC)
    outside = [str(s) for s in stretches if s.start < requested.start or s.end > requested.end]
    if outside:
        raise ValueError(f"stretches {', '.join(outside)} lie outside the requested window {requested}")
    if not stretches:
        return
    target = _ensure_table(conn, schema, CHECKPOINTS_TABLE, _CHECKPOINT_COLUMNS)
    conn.executemany(
        f"INSERT INTO {target} VALUES (?, ?, ?, ?, ?, ?, ?)",
        [[table, requested.start, requested.end, s.start, s.end, run_id, committed_at] for s in stretches],
    )


def committed_stretches(
    conn: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    requested: TimeWindow,
    *,
    newer_than: datetime,
) -> list[CommittedStretch]:
    """The stretches committed to ``table`` for exactly the window ``requested``, after
    ``newer_than``, sorted by start (then end). Stretches are returned as recorded: adjacent or
    overlapping ones are not merged; [] when nothing was ever recorded."""
    _aware(newer_than, "newer_than")
    if not table_exists(conn, schema, CHECKPOINTS_TABLE):
        return []
    rows = conn.execute(
        "SELECT epoch_us(stretch_start), epoch_us(stretch_end), run_id, epoch_us(committed_at) "
        f"FROM {qualified_name(conn, schema, CHECKPOINTS_TABLE)} WHERE {_ONE_RANGE} AND committed_at > ? "
        "ORDER BY stretch_start, stretch_end, committed_at",
        [table, requested.start, requested.end, newer_than],
    ).fetchall()
    return [
        CommittedStretch(TimeWindow(_from_us(start), _from_us(end)), str(run_id), _from_us(at))
        for start, end, run_id, at in rows
    ]


def clear_stretches(conn: duckdb.DuckDBPyConnection, schema: str, table: str, requested: TimeWindow) -> int:
    """Forget what was committed to ``table`` for the window ``requested``; the rows deleted."""
    if not table_exists(conn, schema, CHECKPOINTS_TABLE):
        return 0
    target = qualified_name(conn, schema, CHECKPOINTS_TABLE)
    params = [table, requested.start, requested.end]
    row = conn.execute(f"SELECT count(*) FROM {target} WHERE {_ONE_RANGE}", params).fetchone()
    conn.execute(f"DELETE FROM {target} WHERE {_ONE_RANGE}", params)
    return int(row[0]) if row else 0


# -- deferrals ------------------------------------------------------------------------------------


def defer(
    conn: duckdb.DuckDBPyConnection, schema: str, source: str, until: datetime, reason: str, run_id: str
) -> None:
    """Record that the Klaviyo table ``source`` must not be asked before ``until``; replaces any
    earlier deferral of it (the latest knowledge wins, even when it is sooner)."""
    _aware(until, "until")
    target = _ensure_table(conn, schema, DEFERRALS_TABLE, _DEFERRAL_COLUMNS)
    conn.execute(
        f"INSERT INTO {target} VALUES (?, ?, ?, ?, ?) ON CONFLICT (source) DO UPDATE SET "
        "until = excluded.until, reason = excluded.reason, run_id = excluded.run_id, "
        "recorded_at = excluded.recorded_at",
        [source, until, reason, run_id, datetime.now(UTC)],
    )


def clear_deferral(conn: duckdb.DuckDBPyConnection, schema: str, source: str) -> None:
    """Forget the deferral of ``source`` (if any); creates nothing."""
    if table_exists(conn, schema, DEFERRALS_TABLE):
        conn.execute(
            f"DELETE FROM {qualified_name(conn, schema, DEFERRALS_TABLE)} WHERE source = ?", [source]
        )


def active_deferrals(conn: duckdb.DuckDBPyConnection, schema: str, now: datetime) -> dict[str, Deferral]:
    """Source -> its deferral, for those still in force at ``now`` (``until`` after it)."""
    _aware(now, "now")
    if not table_exists(conn, schema, DEFERRALS_TABLE):
        return {}
    target = qualified_name(conn, schema, DEFERRALS_TABLE)
    rows = conn.execute(
        f"SELECT source, epoch_us(until), reason, run_id FROM {target} WHERE until > ? ORDER BY source", [now]
    ).fetchall()
    return {
        str(source): Deferral(str(source), _from_us(until), str(reason), str(run_id))
        for source, until, reason, run_id in rows
    }
