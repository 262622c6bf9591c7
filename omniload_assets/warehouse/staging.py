"""Staging extracted rows as Parquet files, so no DuckDB lock is held while the API is slow."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.rows import RowBuilder
from omniload_assets.klaviyo.windows import TimeWindow

#: Rows per staged file: large enough for fast bulk loads, small enough to bound memory.
ROWS_PER_FILE = 50_000


@dataclass
class StagedTable:
    """What an asset hands the IO manager: the staged files of one table and how they came to be."""

    table: str
    directory: str
    files: list[str]
    column_types: dict[str, str]
    window: TimeWindow | None
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.stats.get("rows", 0))

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class ParquetStager:
    """Collects rows of one table and writes them out as Parquet files of ``ROWS_PER_FILE`` rows."""

    def __init__(
        self, spec: TableSpec, base_dir: str | None = None, rows_per_file: int = ROWS_PER_FILE
    ) -> None:
        self.spec = spec
        self.builder = RowBuilder(spec)
        if base_dir:
            Path(base_dir).mkdir(parents=True, exist_ok=True)
        self.directory = tempfile.mkdtemp(prefix=f"omniload-{spec.asset_name}-", dir=base_dir)
        self.rows_per_file = rows_per_file
        self.files: list[str] = []
        self.rows_written = 0
        self._pending: list[dict[str, Any]] = []

    def add(self, resources: list[dict[str, Any]]) -> None:
        """Turn resources into rows; write a file whenever enough are pending."""
        row = self.builder.row
        self._pending.extend(row(r) for r in resources)
        if len(self._pending) >= self.rows_per_file:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        table = self.builder.to_arrow(self._pending)
        path = str(Path(self.directory) / f"part-{len(self.files):06d}.parquet")
        pq.write_table(table, path, compression="zstd")
        self.files.append(path)
        self.rows_written += len(self._pending)
        self._pending = []

    def finish(self, window: TimeWindow | None, stats: dict[str, float]) -> StagedTable:
        self.flush()
        return StagedTable(
            table=self.spec.name,
            directory=self.directory,
            files=list(self.files),
            column_types=self.builder.column_types(),
            window=window,
            stats={**stats, "rows": self.rows_written},
        )

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
