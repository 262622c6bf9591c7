"""The DuckDB IO manager: writes each staged Klaviyo table in one transaction (merge, replace,
append or delete+insert, as the table or the run config says).

A plain configurable IO manager. Not dagster-duckdb's ``DuckDBIOManager``: every write here is ours
(its delete-then-insert is not one transaction, rejects new columns and keeps duplicate ids), so
subclassing it bought only its ``database``/``schema`` fields, an unused ``connection_config`` and
a type-handler hook that has to be stubbed through Dagster's private API.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple

import dagster as dg
import duckdb
import pyarrow as pa
from pydantic import Field, PrivateAttr

from omniload_assets import settings
from omniload_assets.klaviyo.catalog import TableSpec, get_table
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets.warehouse import checkpoints
from omniload_assets.warehouse.connection import DEFAULT_LOCK_TIMEOUT_S, check_writable, open_database
from omniload_assets.warehouse.reads import (
    WarehouseReader,
    qualified_name,
    quote_ident,
    table_columns,
    table_name_of,
)
from omniload_assets.warehouse.staging import StagedTable
from omniload_assets.warehouse.writer import (
    WriteResult,
    append_rows,
    check_name,
    delete_insert,
    merge_into,
    replace_table,
    show_name,
    transaction,
)

PREVIEW_ROWS = 5


class _Resolved(NamedTuple):
    """The settings as a run uses them: checked, with the environment's defaults filled in."""

    schema: str
    memory_limit: str | None


class KlaviyoDuckDBIOManager(dg.ConfigurableIOManager):
    """Writes each Klaviyo table to ``<schema>.<table>`` in DuckDB in one transaction and loads it back.

    Partitioned tables are upserted by primary key, never letting an older row overwrite a newer
    one, and carry ``_deleted_at`` (set by the deletion sweep, cleared by every merge of the id);
    the others are swapped whole. A run's config can choose another write (the
    :class:`~omniload_assets.partitions.WindowConfig` write options, carried by the
    :class:`StagedTable`). Either the new rows are all there or the table is as it was.
    Downstream inputs get the table (or their partition's rows) as Arrow, pandas, polars or a
    DuckDB relation.
    """

    database: str = Field(description="The DuckDB file, duckdb:/// URI or md: path (OMNILOAD_DUCKDB_PATH).")
    schema_: str | None = Field(
        default=None,
        alias="schema",  # `schema` itself is a reserved name in pydantic
        description="Schema of the tables; unset: OMNILOAD_DUCKDB_SCHEMA.",
    )
    lock_timeout_s: float = Field(
        default=DEFAULT_LOCK_TIMEOUT_S,
        description="Seconds to wait for another process's lock on the DuckDB file.",
    )
    table_names: dict[str, str] = Field(
        default_factory=dict,
        description="Asset name -> DuckDB table name, for tables written under another name "
        "(the CLI's --dest-table); tables not listed keep their asset name.",
    )
    memory_limit: str | None = Field(
        default=None,
        description="DuckDB memory_limit of each write to a local file (e.g. 512MB; beyond it DuckDB "
        "spills to disk); None: DuckDB's default (80% of RAM). Deployments set it from "
        "OMNILOAD_DUCKDB_MEMORY_LIMIT.",
    )

    _resolved: _Resolved | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # A bad path (in-memory, not a DuckDB database, unwritable) or table name fails the step here,
        # before the asset spends time extracting.
        check_writable(self.database)
        self._resolved = self._resolve()

    def _resolve(self) -> _Resolved:
        schema = check_name(self.schema_ or settings.duckdb_schema(), "schema")
        for asset_name, table in self.table_names.items():
            check_name(table, f"table_names[{show_name(asset_name)}] table")
        return _Resolved(schema, settings.parse_memory_limit(self.memory_limit, "memory_limit"))

    @property
    def _settings(self) -> _Resolved:
        if self._resolved is None:  # used outside a Dagster run or sensor (which call setup first)
            self._resolved = self._resolve()
        return self._resolved

    @property
    def schema_name(self) -> str:
        """The schema of the tables: ``schema``, else ``OMNILOAD_DUCKDB_SCHEMA``."""
        return self._settings.schema

    def table_name(self, spec: TableSpec) -> str:
        """The DuckDB table of ``spec``: its asset name unless ``table_names`` overrides it."""
        return table_name_of(spec, self.table_names)

    def reader(self, lock_timeout_s: float | None = None) -> WarehouseReader:
        """Read-only questions to these tables, waiting at most ``lock_timeout_s`` (default: the
        IO manager's own) for another process's lock."""
        wait = self.lock_timeout_s if lock_timeout_s is None else lock_timeout_s
        return WarehouseReader(self.database, self.schema_name, wait, self.table_names)

    @contextmanager
    def connect_for_write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A writable connection to the database with the IO manager's lock wait and memory limit."""
        with open_database(
            self.database, lock_timeout_s=self.lock_timeout_s, memory_limit=self._settings.memory_limit
        ) as conn:
            yield conn

    def _spec(self, context: dg.OutputContext | dg.InputContext) -> TableSpec:
        return get_table(context.asset_key.path[-1])

    # -- checkpoints and deferrals of long runs (see omniload_assets.checkpointing) -----------------

    def commit_checkpoint(
        self,
        spec: TableSpec,
        files: Sequence[str],
        column_types: dict[str, str],
        *,
        requested: TimeWindow,
        stretches: Sequence[TimeWindow],
        run_id: str,
    ) -> WriteResult:
        """Merge the staged rows of ``stretches`` of a run over ``requested`` and record them as
        committed, in one transaction."""
        table = self.table_name(spec)

        def record(conn: duckdb.DuckDBPyConnection) -> None:
            checkpoints.record_stretches(conn, self.schema_name, table, requested, stretches, run_id)

        with self.connect_for_write() as conn:
            return merge_into(
                conn,
                schema=self.schema_name,
                table=table,
                files=files,
                primary_key=spec.primary_key,
                incremental_key=spec.incremental_key,
                column_types=column_types,
                run_id=run_id,
                source=spec.name,
                also=record,
            )

    def committed_stretches(
        self, spec: TableSpec, requested: TimeWindow, newer_than: datetime
    ) -> list[checkpoints.CommittedStretch]:
        """What failed runs over exactly ``requested`` committed after ``newer_than``."""
        reader = self.reader()
        with reader.connect() as conn:
            if conn is None:
                return []
            return checkpoints.committed_stretches(
                conn, self.schema_name, self.table_name(spec), requested, newer_than=newer_than
            )

    def defer(self, spec: TableSpec, until: datetime, reason: str, run_id: str) -> None:
        """Record that the schedules and the sensor launch no run of ``spec`` before ``until``."""
        with self.connect_for_write() as conn, transaction(conn):
            checkpoints.defer(conn, self.schema_name, spec.name, until, reason, run_id)

    def _closing(self, spec: TableSpec, staged: StagedTable) -> Any:
        """What the final write of a merge run does in its transaction: forget the checkpoints of
        its range (the next identical run re-syncs it whole) and any deferral of its endpoint."""
        requested, table = staged.requested, self.table_name(spec)

        def close(conn: duckdb.DuckDBPyConnection) -> None:
            if requested is not None:
                checkpoints.clear_stretches(conn, self.schema_name, table, requested)
            checkpoints.clear_deferral(conn, self.schema_name, spec.name)

        return close

    def handle_output(self, context: dg.OutputContext, obj: StagedTable) -> None:
        if not isinstance(obj, StagedTable):
            raise TypeError(
                f"{context.asset_key.to_user_string()} must return a StagedTable, got {type(obj)}"
            )
        spec = self._spec(context)
        try:
            with self.connect_for_write() as conn:
                self._warn_ignored_types(context, conn, spec, obj)
                result = self._write(conn, spec, obj, context.run_id)
                preview = self._preview(conn, spec)
        finally:
            obj.cleanup()
        context.add_output_metadata(self._metadata(spec, obj, result, preview))

    def _write(
        self, conn: duckdb.DuckDBPyConnection, spec: TableSpec, obj: StagedTable, run_id: str
    ) -> WriteResult:
        """The write the staged table asks for (its ``strategy``, else the table's own)."""
        strategy = obj.strategy or spec.strategy
        common: dict[str, Any] = {
            "schema": self.schema_name,
            "table": self.table_name(spec),
            "files": obj.files,
            "primary_key": spec.primary_key,
            "incremental_key": spec.incremental_key,
            "column_types": {**obj.column_types, **obj.column_hints},
            "run_id": run_id,
            "source": spec.name,
            "columns": obj.columns,
        }
        keys = obj.primary_key
        track = spec.strategy == "merge"  # the table carries the deletion sweep's mark
        closing = self._closing(spec, obj)
        also = closing if obj.requested is not None else None
        # full_refresh in a window: its rows are deleted first, in the same transaction.
        clear = obj.window if obj.full_refresh and spec.incremental_key else None
        if strategy == "merge":
            return merge_into(conn, **common, keys=keys, clear=clear, also=closing)
        if strategy == "append" and (clear is not None or not obj.full_refresh):
            return append_rows(conn, **common, clear=clear, track_deletions=track, also=also)
        if strategy == "delete+insert":
            return delete_insert(
                conn, **common, window=obj.window, keys=keys, track_deletions=track, also=also
            )
        # replace, or append rebuilding the whole table: every staged row, none de-duplicated
        dedupe = strategy != "append"
        return replace_table(conn, **common, keys=keys, deduplicate=dedupe, track_deletions=track, also=also)

    def _warn_ignored_types(
        self, context: dg.OutputContext, conn: duckdb.DuckDBPyConnection, spec: TableSpec, obj: StagedTable
    ) -> None:
        """Say which ``name:type`` column options meet a column of another type (it keeps its own)."""
        if not obj.column_hints:
            return
        stored = dict(table_columns(conn, self.schema_name, self.table_name(spec)) or [])
        for name, wanted in obj.column_hints.items():
            row = conn.execute(f"SELECT typeof(CAST(NULL AS {wanted}))").fetchone()
            if name in stored and row is not None and stored[name] != row[0]:
                context.log.warning(
                    f"{spec.name}: column {name} stays {stored[name]}, not {wanted}: an existing "
                    "column keeps its type (full_refresh of a table rebuilt whole keeps it too)"
                )

    def _preview(self, conn: Any, spec: TableSpec) -> dg.MetadataValue:
        table = qualified_name(conn, self.schema_name, self.table_name(spec))
        stored = {name for name, _ in table_columns(conn, self.schema_name, self.table_name(spec)) or []}
        order = ""
        if spec.incremental_key and spec.incremental_key in stored:
            order = f"{quote_ident(spec.incremental_key)} DESC NULLS LAST, "
        shown = [c for c in spec.columns if spec.columns[c] != "JSON" and c in stored]
        cols = [spec.primary_key, *shown[:5]]
        select = ", ".join(quote_ident(c) for c in cols)
        order += quote_ident(spec.primary_key)
        rows = conn.execute(f"SELECT {select} FROM {table} ORDER BY {order} LIMIT {PREVIEW_ROWS}").fetchall()
        header = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
        body = "".join("| " + " | ".join("" if v is None else str(v) for v in r) + " |\n" for r in rows)
        return dg.MetadataValue.md(header + body)

    def _metadata(
        self, spec: TableSpec, staged: StagedTable, result: WriteResult, preview: dg.MetadataValue
    ) -> dict[str, Any]:
        stats = staged.stats
        meta: dict[str, Any] = {
            "dagster/row_count": result.table_rows,
            "dagster/table_name": f"{self.schema_name}.{self.table_name(spec)}",
            "strategy": staged.strategy or spec.strategy,
            "full_refresh": staged.full_refresh,
            "rows_written": result.rows_written,
            "rows_inserted": result.inserted,
            "rows_updated": result.updated,
            "rows_skipped_stale": result.skipped_stale,
            "columns_added": ", ".join(result.columns_added) or "none",
            "pages": int(stats.get("pages", 0)),
            "pages_decoded_in_processes": int(stats.get("pages_decoded_in_processes", 0)),
            "requests": int(stats.get("requests", 0)),
            "retries": int(stats.get("retries", 0)),
            "throttled_429": int(stats.get("throttled", 0)),
            "throttle_wait_s": round(float(stats.get("throttle_wait_s", 0.0)), 2),
            "pacing_wait_s": round(float(stats.get("pacing_wait_s", 0.0)), 2),
            "extract_s": round(float(stats.get("extract_s", 0.0)), 2),
            # Extraction plus the write (extract_s alone when the stats carry no start time).
            "duration_s": round(
                time.time() - float(stats["started_at"])
                if "started_at" in stats
                else float(stats.get("extract_s", 0.0)),
                2,
            ),
            "preview": preview,
        }
        if spec.strategy == "merge":
            # Rows the deletion sweep had marked gone that this write brought back, and those still marked.
            meta["rows_restored"] = result.restored
            meta["rows_marked_deleted"] = result.marked_deleted
        if result.deleted:
            meta["rows_deleted"] = result.deleted  # a window rebuilt, or keys written again
        if staged.primary_key is not None:
            meta["primary_key"] = ", ".join(staged.primary_key)
        if staged.columns is not None:
            meta["columns_written"] = ", ".join(staged.columns)
        meta.update(staged.metadata)
        if staged.window is not None:
            meta["window_start"] = staged.window.start.isoformat()
            meta["window_end"] = staged.window.end.isoformat()
        return meta

    def load_input(self, context: dg.InputContext) -> Any:
        """The table (for a partitioned downstream: the rows of its time window) as the input's type.

        ``pyarrow.Table`` by default; ``pandas.DataFrame``, ``polars.DataFrame`` or a
        ``duckdb.DuckDBPyRelation`` (over an in-memory copy, so no lock on the file is held) when the
        input is annotated so.
        """
        spec = self._spec(context)
        where, params = "", []
        if spec.incremental_key and context.has_asset_partitions:
            window = context.asset_partitions_time_window
            key = quote_ident(spec.incremental_key)
            where = f" WHERE {key} >= ? AND {key} < ?"
            params = [window.start, window.end]
        with open_database(self.database, read_only=True, lock_timeout_s=self.lock_timeout_s) as conn:
            table = qualified_name(conn, self.schema_name, self.table_name(spec))
            arrow: pa.Table = conn.sql(f"SELECT * FROM {table}{where}", params=params).to_arrow_table()
        return convert_table(arrow, getattr(context.dagster_type, "typing_type", None))


def convert_table(arrow: pa.Table, wanted: object) -> Any:
    """``arrow`` as the type a downstream input asks for (Arrow unless it names another)."""
    module = getattr(wanted, "__module__", "") or ""
    name = getattr(wanted, "__name__", "")
    if module.startswith("pandas"):
        return arrow.to_pandas()
    if module.startswith("polars"):
        import polars

        return polars.from_arrow(arrow)
    if module.startswith("duckdb") and "Relation" in name:
        return duckdb.connect().from_arrow(arrow)
    return arrow
