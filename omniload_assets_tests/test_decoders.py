"""Decoders (``klaviyo.decoders``): in this process, or in decode processes once a table proves large."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow.parquet as pq

from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets.klaviyo.decoders import (
    LocalDecoder,
    ProcessDecoder,
    decoder_for,
    default_processes,
)
from omniload_assets.klaviyo.extraction import Extraction, extract
from omniload_assets.klaviyo.pages import PageBatch, read_page
from omniload_assets.klaviyo.rows import RowBuilder
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets.warehouse.staging import ParquetStager

WINDOW = TimeWindow(datetime(2024, 1, 3, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC))


def _stage(simulator, decoder: LocalDecoder, tmp_path: Path, **kwargs) -> tuple[ClientStats, list[str], dict]:  # noqa: ANN001, ANN003
    spec = decoder.spec
    stager = ParquetStager(spec, str(tmp_path), rows_per_file=100)
    stats = ClientStats()
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        extract(client, spec, WINDOW, decoder, stager.add, stats=stats, **kwargs)
    decoder.close()
    staged = stager.finish(WINDOW, stats.as_dict(), decoder.column_types())
    ids = [i for f in staged.files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
    return stats, ids, staged.column_types


def test_staging_through_decode_processes_keeps_every_record_once(simulator, tmp_path: Path) -> None:
    spec = get_table("events")
    decoder = ProcessDecoder(spec, 1)
    pool = decoder.start()
    assert pool is not None
    pool.wait_started()
    stats, ids, column_types = _stage(simulator, decoder, tmp_path, parallelism=4, page_size=25)
    assert decoder.pages_in_processes == stats.pages > 1
    assert decoder.peak_rss_mb > 0 and not pool.ready  # stopped, size noted
    assert not [i for i, n in Counter(ids).items() if n > 1]
    assert set(ids) == simulator.ids("events", WINDOW.start, WINDOW.end)
    assert column_types == RowBuilder(spec).column_types()


def test_small_tables_never_start_processes(simulator, tmp_path: Path) -> None:
    decoder = ProcessDecoder(get_table("events"), 2, after_rows=10**9)
    stats, ids, _ = _stage(simulator, decoder, tmp_path, page_size=50)
    assert len(ids) == stats.records > 0
    assert decoder.pages_in_processes == 0 and decoder.peak_rss_mb == 0 and not decoder.offloaded


def test_a_fast_endpoints_table_starts_processes_with_its_first_request(simulator, tmp_path: Path) -> None:
    """Events (58,000 records/s at the limits) do not wait for a page to prove them large; their
    workers' requests may all go at once. Profiles (1,250/s) start as any table does."""
    events, profiles = get_table("events"), get_table("profiles")
    decoder = ProcessDecoder(events, 1)
    try:
        assert decoder.offloaded
        assert Extraction(None, events, WINDOW, decoder, parallelism=40)._limit.allowance == 40  # type: ignore[arg-type]
    finally:
        decoder.close()
    assert not ProcessDecoder(profiles, 1).offloaded
    assert type(decoder_for(events, 0)) is LocalDecoder  # 0: never
    # Against the simulator: once the processes are up, they decode every page.
    decoder = ProcessDecoder(events, 1)
    pool = decoder.start()
    assert pool is not None
    pool.wait_started()
    stats, ids, _ = _stage(simulator, decoder, tmp_path, parallelism=4, page_size=25)
    assert decoder.pages_in_processes == stats.pages > 1
    assert len(ids) == len(simulator.ids("events", WINDOW.start, WINDOW.end))


def test_a_table_expected_or_proven_large_starts_processes() -> None:
    profiles = get_table("profiles")  # 1,250 records/s: not started up front below 10,000 rows
    expected = ProcessDecoder(profiles, 1, after_rows=10_000)
    proven = ProcessDecoder(profiles, 1, after_rows=10_000)
    body = orjson.dumps(
        {"data": [{"type": "profile", "id": f"p{i}", "attributes": {}} for i in range(5_000)], "links": {}}
    )
    try:
        expected.expect(9_999)
        assert not expected.offloaded
        expected.expect(50_000)  # from an extraction thread, at once
        assert expected.offloaded
        assert proven.rows(PageBatch(read_page(profiles, body))).num_rows == 5_000
        assert not proven.offloaded
        proven.rows(PageBatch(read_page(profiles, body)))
        assert proven.offloaded  # 10,000 rows decoded
    finally:
        expected.close()
        proven.close()
    assert not expected.offloaded and expected.start() is None  # closed: never again
    default = LocalDecoder if default_processes() == 0 else ProcessDecoder
    assert type(decoder_for(profiles, None)) is default


def test_a_child_tables_rows_from_decode_processes_carry_their_parent(simulator, tmp_path: Path) -> None:
    """A decode process knows no parent: the run's process adds it (and the membership key)."""
    spec = get_table("list-profiles")
    decoder = ProcessDecoder(spec, 1)
    pool = decoder.start()
    assert pool is not None
    pool.wait_started()
    stager = ParquetStager(spec, str(tmp_path), rows_per_file=100)
    stats = ClientStats()
    parents = sorted(simulator.ids("lists"))
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        extract(
            client, spec, None, decoder, stager.add, stats=stats, parallelism=4, page_size=25, parents=parents
        )
    decoder.close()
    staged = stager.finish(None, stats.as_dict(), decoder.column_types())
    assert decoder.pages_in_processes == stats.pages > len(parents)  # cursors followed, all in processes
    rows = [r for f in staged.files for r in pq.read_table(f).to_pylist()]
    assert {(r["list_id"], r["profile_id"]) for r in rows} == simulator.members("lists")
    assert all(r["id"] == f"{r['list_id']}:{r['profile_id']}" for r in rows)
    assert staged.column_types == spec.column_types()
