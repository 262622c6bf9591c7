"""The DuckDB IO manager: merges or replaces each staged Klaviyo table in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg
import pyarrow as pa
from dagster._core.storage.db_io_manager import DbTypeHandler
from dagster_duckdb import DuckDBIOManager
from pydantic import Field

from omniload_assets import settings
from omniload_assets.klaviyo.catalog import TableSpec, get_table
from omniload_assets.warehouse.connection import open_database
from omniload_assets.warehouse.staging import StagedTable
from omniload_assets.warehouse.writer import WriteResult, merge_into, qualified_name, replace_table

PREVIEW_ROWS = 5


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class KlaviyoTablesIOManager(dg.IOManager):
    """Writes :class:`StagedTable` outputs to ``<schema>.<table>``; loads tables as Arrow/pandas."""

    def __init__(self, database: str, schema: str, lock_timeout_s: float) -> None:
        self.database = database
        self.schema = schema
        self.lock_timeout_s = lock_timeout_s

    def _spec(self, context: dg.OutputContext | dg.InputContext) -> TableSpec:
        return get_table(context.asset_key.path[-1])

    def handle_output(self, context: dg.OutputContext, obj: StagedTable) -> None:
        if not isinstance(obj, StagedTable):
            raise TypeError(
                f"{context.asset_key.to_user_string()} must return a StagedTable, got {type(obj)}"
            )
        spec = self._spec(context)
        run_id = context.run_id
        try:
            with open_database(self.database, lock_timeout_s=self.lock_timeout_s) as conn:
                if spec.strategy == "replace":
                    result = replace_table(
                        conn,
                        schema=self.schema,
                        table=spec.asset_name,
                        files=obj.files,
                        primary_key=spec.primary_key,
                        column_types=obj.column_types,
                        run_id=run_id,
                    )
                else:
                    result = merge_into(
                        conn,
                        schema=self.schema,
                        table=spec.asset_name,
                        files=obj.files,
                        primary_key=spec.primary_key,
                        incremental_key=spec.incremental_key,
                        column_types=obj.column_types,
                        run_id=run_id,
                    )
                preview = self._preview(conn, spec)
        finally:
            obj.cleanup()
        context.add_output_metadata(self._metadata(spec, obj, result, preview))

    def _preview(self, conn: Any, spec: TableSpec) -> dg.MetadataValue:
        table = qualified_name(conn, self.schema, spec.asset_name)
        order = f"{quote(spec.incremental_key)} DESC NULLS LAST, " if spec.incremental_key else ""
        cols = [spec.primary_key, *[c for c in spec.columns if spec.columns[c] != "JSON"][:5]]
        select = ", ".join(quote(c) for c in cols)
        order += quote(spec.primary_key)
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
            "dagster/table_name": f"{self.schema}.{spec.asset_name}",
            "strategy": spec.strategy,
            "rows_written": result.rows_written,
            "rows_inserted": result.inserted,
            "rows_updated": result.updated,
            "rows_skipped_stale": result.skipped_stale,
            "columns_added": ", ".join(result.columns_added) or "none",
            "pages": int(stats.get("pages", 0)),
            "requests": int(stats.get("requests", 0)),
            "retries": int(stats.get("retries", 0)),
            "throttled_429": int(stats.get("throttled", 0)),
            "throttle_wait_s": round(float(stats.get("throttle_wait_s", 0.0)), 2),
            "pacing_wait_s": round(float(stats.get("pacing_wait_s", 0.0)), 2),
            "extract_s": round(float(stats.get("extract_s", 0.0)), 2),
            "preview": preview,
        }
        if staged.window is not None:
            meta["window_start"] = staged.window.start.isoformat()
            meta["window_end"] = staged.window.end.isoformat()
        return meta

    def load_input(self, context: dg.InputContext) -> Any:
        spec = self._spec(context)
        with open_database(self.database, read_only=True, lock_timeout_s=self.lock_timeout_s) as conn:
            table = qualified_name(conn, self.schema, spec.asset_name)
            arrow: pa.Table = conn.execute(f"SELECT * FROM {table}").fetch_arrow_table()
        wanted = getattr(context.dagster_type, "typing_type", None)
        if getattr(wanted, "__module__", "").startswith("pandas"):
            return arrow.to_pandas()
        return arrow


class KlaviyoDuckDBIOManager(DuckDBIOManager):
    """dagster-duckdb's IO manager settings, with merge/replace writes of whole Klaviyo tables.

    Unlike the stock manager (delete the partition, then insert), each write is one transaction:
    an upsert by primary key that never lets an older row overwrite a newer one, or a swap of the
    whole table; either the new rows are all there or the table is as it was.
    """

    lock_timeout_s: float = Field(
        default=300.0, description="Seconds to wait for another process's lock on the DuckDB file."
    )

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler]:
        return []

    def create_io_manager(self, context: dg.InitResourceContext) -> KlaviyoTablesIOManager:
        return KlaviyoTablesIOManager(
            database=self.database,
            schema=self.schema_ or settings.duckdb_schema(),
            lock_timeout_s=self.lock_timeout_s,
        )
