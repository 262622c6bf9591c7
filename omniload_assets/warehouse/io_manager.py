"""The DuckDB IO manager: merges or replaces each staged Klaviyo table in one transaction."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import duckdb
import pyarrow as pa
from dagster._core.storage.db_io_manager import DbTypeHandler
from dagster_duckdb import DuckDBIOManager
from pydantic import Field

from omniload_assets import settings
from omniload_assets.klaviyo.catalog import TableSpec, get_table
from omniload_assets.warehouse.connection import DEFAULT_LOCK_TIMEOUT_S, check_writable, open_database
from omniload_assets.warehouse.staging import StagedTable
from omniload_assets.warehouse.writer import (
    WriteResult,
    check_name,
    merge_into,
    qualified_name,
    quote_ident,
    replace_table,
    show_name,
)

PREVIEW_ROWS = 5


class KlaviyoTablesIOManager(dg.IOManager):
    """Writes :class:`StagedTable` outputs to ``<schema>.<table>``; loads tables as Arrow/pandas."""

    def __init__(
        self,
        database: str,
        schema: str,
        lock_timeout_s: float,
        table_names: Mapping[str, str] | None = None,
        memory_limit: str | None = None,
    ) -> None:
        self.database = database
        self.schema = schema
        self.lock_timeout_s = lock_timeout_s
        self.table_names = dict(table_names or {})
        self.memory_limit = memory_limit  # DuckDB's memory_limit for writes; None: its default

    def _spec(self, context: dg.OutputContext | dg.InputContext) -> TableSpec:
        return get_table(context.asset_key.path[-1])

    def table_name(self, spec: TableSpec) -> str:
        """The DuckDB table of ``spec``: its asset name unless ``table_names`` overrides it."""
        return self.table_names.get(spec.asset_name, spec.asset_name)

    def handle_output(self, context: dg.OutputContext, obj: StagedTable) -> None:
        if not isinstance(obj, StagedTable):
            raise TypeError(
                f"{context.asset_key.to_user_string()} must return a StagedTable, got {type(obj)}"
            )
        spec = self._spec(context)
        run_id = context.run_id
        try:
            with open_database(
                self.database, lock_timeout_s=self.lock_timeout_s, memory_limit=self.memory_limit
            ) as conn:
                if spec.strategy == "replace":
                    result = replace_table(
                        conn,
                        schema=self.schema,
                        table=self.table_name(spec),
                        files=obj.files,
                        primary_key=spec.primary_key,
                        column_types=obj.column_types,
                        run_id=run_id,
                        source=spec.name,
                    )
                else:
                    result = merge_into(
                        conn,
                        schema=self.schema,
                        table=self.table_name(spec),
                        files=obj.files,
                        primary_key=spec.primary_key,
                        incremental_key=spec.incremental_key,
                        column_types=obj.column_types,
                        run_id=run_id,
                        source=spec.name,
                    )
                preview = self._preview(conn, spec)
        finally:
            obj.cleanup()
        context.add_output_metadata(self._metadata(spec, obj, result, preview))

    def _preview(self, conn: Any, spec: TableSpec) -> dg.MetadataValue:
        table = qualified_name(conn, self.schema, self.table_name(spec))
        order = f"{quote_ident(spec.incremental_key)} DESC NULLS LAST, " if spec.incremental_key else ""
        cols = [spec.primary_key, *[c for c in spec.columns if spec.columns[c] != "JSON"][:5]]
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
            "dagster/table_name": f"{self.schema}.{self.table_name(spec)}",
            "strategy": spec.strategy,
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
            table = qualified_name(conn, self.schema, self.table_name(spec))
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


class KlaviyoDuckDBIOManager(DuckDBIOManager):
    """dagster-duckdb's IO manager settings, with merge/replace writes of whole Klaviyo tables.

    Unlike the stock manager (delete the partition, then insert), each write is one transaction:
    an upsert by primary key that never lets an older row overwrite a newer one, or a swap of the
    whole table; either the new rows are all there or the table is as it was.
    """

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

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler]:
        return []

    def create_io_manager(self, context: dg.InitResourceContext) -> KlaviyoTablesIOManager:
        # A bad path (in-memory, not a DuckDB database, unwritable) or table name fails the step here,
        # before the asset spends time extracting.
        check_writable(self.database)
        schema = check_name(self.schema_ or settings.duckdb_schema(), "schema")
        for asset_name, table in self.table_names.items():
            check_name(table, f"table_names[{show_name(asset_name)}] table")
        return KlaviyoTablesIOManager(
            database=self.database,
            schema=schema,
            lock_timeout_s=self.lock_timeout_s,
            table_names=self.table_names,
            memory_limit=settings.parse_memory_limit(self.memory_limit, "memory_limit"),
        )
