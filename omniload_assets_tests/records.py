"""Extraction as tests read it: each page's kept records as dicts, not Arrow rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets.klaviyo.decoders import LocalDecoder
from omniload_assets.klaviyo.extraction import Extraction
from omniload_assets.klaviyo.pages import PageBatch
from omniload_assets.klaviyo.windows import TimeWindow

Record = dict[str, Any]


class RecordsDecoder(LocalDecoder):
    """Pages decoded in this process; a page's rows are its kept records as dicts."""

    def rows(self, batch: PageBatch) -> list[Record]:  # type: ignore[override]
        return batch.records()


def iter_records(
    client: KlaviyoClient,
    spec: TableSpec,
    window: TimeWindow | None = None,
    *,
    page_size: int | None = None,
    parallelism: int = 1,
    stats: ClientStats | None = None,
    now: datetime | None = None,
) -> Iterator[list[Record]]:
    """One list of records per page of ``spec`` in ``window``, as the product extracts them."""
    extraction: Extraction[list[Record]] = Extraction(
        client,
        spec,
        window,
        RecordsDecoder(spec),
        page_size=page_size,
        parallelism=parallelism,
        stats=stats,
        now=now,
    )
    return iter(extraction)
