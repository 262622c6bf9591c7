"""Daily UTC partitions of the incremental tables, the time window of a run, and how it writes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time

import dagster as dg
import duckdb
from pydantic import Field

from omniload_assets import settings
from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.windows import TimeWindow

#: The writes ``incremental_strategy`` names (ingestr's ``--incremental-strategy``).
STRATEGIES = ("merge", "replace", "append", "delete+insert")
#: ingestr's column types (``--columns name:type``) as DuckDB types.
INGESTR_TYPES = {
    "text": "VARCHAR",
    "bigint": "BIGINT",
    "double": "DOUBLE",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMPTZ",
    "date": "DATE",
    "time": "TIME",
    "decimal": "DECIMAL(38,9)",
    "wei": "DECIMAL(38,0)",
    "json": "JSON",
    "complex": "JSON",
    "binary": "BLOB",
}
_DUCKDB_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_ ]*(\(\d+(, ?\d+)?\))?")


class RunWindowError(ValueError):
    """A run's window cannot be used; the message says what to change."""


class WriteOptionsError(ValueError):
    """A write option of the run config cannot apply to the table; the message says why."""


class WindowConfig(dg.Config):
    """The run config of every Klaviyo asset: the window of a run, whether to resume a failed
    attempt, and how the rows are written (ingestr's ``--full-refresh``, ``--incremental-strategy``,
    ``--primary-key`` and ``--columns``).

    A partitioned run loads its partitions' days, or this window when it covers them. A run without
    partitions loads this window, or everything when it is empty: ``omniload ingest`` uses it when
    no Dagster home keeps the run, so a range of years costs one materialization instead of one
    per day.
    """

    start: str | None = Field(
        default=None,
        description="First UTC instant to load (ISO 8601, e.g. 2024-01-01T00:00:00Z), inclusive. In a "
        "partitioned run the window replaces the partitions' days and must cover them (e.g. to "
        "reload the day before too); empty: the partitions' days.",
    )
    end: str | None = Field(
        default=None,
        description="UTC instant to load up to, exclusive. Set together with start.",
    )
    resume: bool = Field(
        default=True,
        description="Resume from the checkpoints of a failed attempt of the same range (less than "
        "OMNILOAD_CHECKPOINT_MAX_AGE_H old); false: a full pass (omniload ingest --no-resume).",
    )
    full_refresh: bool = Field(
        default=False,
        description="Rebuild instead of adding to the table (ingestr's --full-refresh). A run without "
        "a window, or of a table without an incremental key, replaces the whole table with the rows "
        "it fetched; a partitioned or windowed run deletes the rows whose incremental key lies in "
        "its window and writes the fetched ones with the strategy, in one transaction (so rows of "
        "those days deleted in Klaviyo go; other days stay). No checkpoints are kept.",
    )
    incremental_strategy: str | None = Field(
        default=None,
        description="How the fetched rows are written (ingestr's --incremental-strategy): merge "
        "(upsert by primary key; an older row never replaces a newer one), replace (the whole table "
        "swapped for the fetched rows; not in a partitioned run), append (every fetched row "
        "inserted, no de-duplication), delete+insert (delete the rows whose incremental key lies "
        "in the run's window and any row with a fetched key, then insert the fetched rows; "
        "without a window or incremental key: replace). Empty: the table's own (merge for "
        "incremental tables, replace for the others).",
    )
    primary_key: list[str] | None = Field(
        default=None,
        description="The column(s) merge, replace and delete+insert de-duplicate by (ingestr's "
        "--primary-key; several: a composite key). Empty: the table's id.",
    )
    columns: list[str] | None = Field(
        default=None,
        description="Columns to write. A bare name selects: only the named columns, the primary "
        "key(s) and the incremental key are written (other columns of an existing table get NULL "
        "in the rows written). name:type (ingestr's --columns form; type one of text, bigint, "
        "double, bool, timestamp, date, time, decimal, json, binary, or a DuckDB type) gives the "
        "column that type when the table or column is created and selects nothing by itself. "
        "Entries may be comma-separated. Empty: every column, the table's types.",
    )

    def window(self) -> TimeWindow | None:
        if self.start is None and self.end is None:
            return None
        if self.start is None or self.end is None:
            raise RunWindowError("set both start and end of the window config, or neither")
        start, end = _instant(self.start, "start"), _instant(self.end, "end")
        if end <= start:
            raise RunWindowError(f"window end {self.end!r} is not after start {self.start!r}")
        return TimeWindow(start, end)


def _instant(text: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RunWindowError(f"window {name} {text!r} is not an ISO 8601 date or datetime") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def daily_partitions() -> dg.DailyPartitionsDefinition:
    """One partition per UTC day from ``OMNILOAD_START_DATE`` up to and including today."""
    return dg.DailyPartitionsDefinition(
        start_date=datetime.combine(settings.start_date(), time(), tzinfo=UTC).strftime("%Y-%m-%d"),
        timezone="UTC",
        end_offset=1,
    )


def is_partitioned_run(context: dg.AssetExecutionContext) -> bool:
    """Whether the run targets partitions of a partitioned asset (a key or a key range)."""
    if context.assets_def.partitions_def is None:
        return False
    return context.has_partition_key or context.has_partition_key_range


def run_window(context: dg.AssetExecutionContext, config: WindowConfig) -> TimeWindow | None:
    """The ``[start, end)`` a run covers: the config's window (in a partitioned run: when it covers
    the partitions' days), the partitions' days, or None (all)."""
    window = config.window()
    if context.assets_def.partitions_def is None:
        if window is not None:
            name = context.asset_key.to_user_string()
            raise RunWindowError(f"{name} is replaced whole: it takes no window")
        return None
    if not is_partitioned_run(context):
        return window
    span = context.partition_time_window
    days = TimeWindow(span.start.astimezone(UTC), span.end.astimezone(UTC))
    if window is None:
        return days
    if window.start > days.start or window.end < days.end:
        raise RunWindowError(
            f"a partitioned run loads its partitions' days {days}: a window config must cover them "
            f"(it then replaces them), and {window} does not; widen it or leave it empty"
        )
    return window


@dataclass(frozen=True)
class WriteOptions:
    """How one run writes its table, resolved from the run config (:func:`write_options`)."""

    #: The write done: merge, replace, append or delete+insert.
    strategy: str
    full_refresh: bool = False
    #: The key(s) to de-duplicate by; None: the table's own.
    primary_key: list[str] | None = None
    #: The only columns written (keys included); None: all.
    columns: list[str] | None = None
    #: Types given to columns when they are created (``name:type``).
    column_types: dict[str, str] = field(default_factory=dict)

    @property
    def checkpoints(self) -> bool:
        """Whether the run may checkpoint: checkpoints merge the table's whole rows by its id."""
        plain = self.primary_key is None and self.columns is None and not self.column_types
        return self.strategy == "merge" and not self.full_refresh and plain


def write_options(
    spec: TableSpec, config: WindowConfig, window: TimeWindow | None, *, partitioned_run: bool
) -> WriteOptions:
    """The write of a run of ``spec`` over ``window``; :class:`WriteOptionsError` (one line) for
    an option that cannot apply."""
    table = spec.asset_name
    chosen = config.incremental_strategy
    if chosen is not None and chosen.strip().lower() not in STRATEGIES:
        raise WriteOptionsError(
            f"{table}: incremental_strategy {chosen!r} is not one of {', '.join(STRATEGIES)}"
        )
    strategy = chosen.strip().lower() if chosen is not None else spec.strategy
    whole = window is None or spec.incremental_key is None
    if strategy == "replace" and partitioned_run:
        raise WriteOptionsError(
            f"{table}: incremental_strategy replace swaps the whole table for the rows of this run's "
            f"partitions only; run without partitions, or rebuild the days with delete+insert or "
            "full_refresh"
        )
    if whole and (strategy == "delete+insert" or (config.full_refresh and strategy == "merge")):
        strategy = "replace"  # nothing to delete by: the rebuild is the whole table's
    valid = list(spec.column_types())
    keys = _key_columns(table, config.primary_key, valid)
    selected, types = _columns(table, config.columns, valid)
    if selected is not None:
        kept = [*(keys or [spec.primary_key]), spec.primary_key, spec.incremental_key, *selected]
        selected = [c for c in dict.fromkeys(kept) if c is not None]
    if keys == [spec.primary_key]:
        keys = None
    return WriteOptions(strategy, config.full_refresh, keys, selected, types)


def _key_columns(table: str, keys: Sequence[str] | None, valid: list[str]) -> list[str] | None:
    if keys is None:
        return None
    names = [k.strip() for entry in keys for k in entry.split(",") if k.strip()]
    if not names:
        raise WriteOptionsError(f"{table}: primary_key is empty; name a column, e.g. id")
    for name in names:
        if name not in valid:
            raise WriteOptionsError(
                f"{table}: primary_key {name!r} is not a column of {table}; its columns: {', '.join(valid)}"
            )
    return list(dict.fromkeys(names))


def _columns(
    table: str, entries: Sequence[str] | None, valid: list[str]
) -> tuple[list[str] | None, dict[str, str]]:
    """The selected columns (None: all) and the typed ones of a ``columns`` option."""
    if entries is None:
        return None, {}
    selected: list[str] = []
    types: dict[str, str] = {}
    for entry in (e.strip() for item in entries for e in item.split(",")):
        if not entry:
            continue
        name, _, type_name = (part.strip() for part in entry.partition(":"))
        if name not in valid:
            raise WriteOptionsError(
                f"{table}: column {name!r} is not a column of {table}; its columns: {', '.join(valid)}"
            )
        if type_name:
            types[name] = _duckdb_type(table, name, type_name)
        else:
            selected.append(name)
    if not selected and not types:
        raise WriteOptionsError(f"{table}: columns is empty; name columns, or leave it out for all")
    if not selected:
        return None, types
    return [*selected, *(n for n in types if n not in selected)], types


def _duckdb_type(table: str, column: str, type_name: str) -> str:
    """The DuckDB type of ``column:type_name``; one line naming the types when it is none."""
    duck = INGESTR_TYPES.get(type_name.lower(), type_name)
    if _DUCKDB_TYPE.fullmatch(duck):
        try:
            with duckdb.connect() as conn:
                conn.execute(f"SELECT CAST(NULL AS {duck})")
            return duck
        except duckdb.Error:
            pass
    raise WriteOptionsError(
        f"{table}: column type {type_name!r} of {column} is not a type; use one of "
        f"{', '.join(INGESTR_TYPES)} or a DuckDB type"
    )
