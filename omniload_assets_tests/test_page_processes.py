"""Pages decoded by worker processes (``page_processes``) give exactly the rows decoded in-process."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets.klaviyo.page_processes import PageProcesses
from omniload_assets.klaviyo.pages import PageBatch, PageFormatError, read_page
from omniload_assets.klaviyo.rows import RowBuilder
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets.warehouse.staging import ParquetStager

WINDOW = TimeWindow(datetime(2024, 1, 3, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC))


def _bodies(simulator, table: str, size: int, pages: int) -> list[bytes]:
    """The raw bodies of the first ``pages`` pages of ``table``."""
    spec = get_table(table)
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        params = client.base_params(spec, size)
        bodies: list[bytes] = []
        for page in client.iter_pages(spec, params):
            bodies.append(page.body)
            if len(bodies) == pages:
                break
    return bodies


def _drifted(body: bytes) -> bytes:
    """The page with an attribute the catalogue does not know on its first record."""
    document = orjson.loads(body)
    document["data"][0]["attributes"]["brand_new_flag"] = {"nested": [1, 2]}
    return orjson.dumps(document)


@pytest.mark.parametrize("table", ["events", "profiles"])
def test_worker_rows_equal_in_process_rows(simulator, table: str) -> None:
    spec = get_table(table)
    bodies = _bodies(simulator, table, 20, 2)
    bodies.append(_drifted(bodies[0]))  # takes the general path and gains a column
    local = RowBuilder(spec)
    merged = RowBuilder(spec)  # the run's builder, fed the workers' tables
    processes = PageProcesses(spec, 1)
    try:
        for body in bodies:
            mine = read_page(spec, body)
            theirs = processes.read(body)
            assert theirs.table is not None and theirs.keys == mine.keys and theirs.next == mine.next
            for keep in (None, [2, 3, 4], [0, 5, 19], []):
                expected = local.page_table(PageBatch(mine, keep))
                got = merged.page_table(PageBatch(theirs, keep))
                assert got.select(expected.column_names).equals(expected), (table, keep)
        assert processes.pages == len(bodies)
    finally:
        processes.close()
    assert "brand_new_flag" in merged.column_types()
    assert merged.column_types() == local.column_types()


def test_a_body_that_is_not_a_page_fails_as_in_process(simulator) -> None:
    processes = PageProcesses(get_table("events"), 1)
    try:
        with pytest.raises(PageFormatError):
            processes.read(b'{"errors": []}')
    finally:
        processes.close()


def test_a_killed_worker_leaves_decoding_to_the_run_process(simulator, caplog) -> None:
    spec = get_table("events")
    body = _bodies(simulator, "events", 20, 1)[0]
    processes = PageProcesses(spec, 1)
    try:
        processes.wait_started()
        for pid in processes.pids:
            os.kill(pid, signal.SIGKILL)
        with caplog.at_level(logging.WARNING):
            page = processes.read(body)
            again = processes.read(body)
        assert page.table is None and page.resources is not None  # decoded here
        assert again.table is None and not processes.ready
        assert "last page-decoding process died" in caplog.text
        builder = RowBuilder(spec)
        assert builder.page_table(PageBatch(page)).num_rows == 20
    finally:
        processes.close()


def test_staging_through_processes_keeps_every_record_once(simulator, tmp_path: Path) -> None:
    spec = get_table("events")
    stager = ParquetStager(spec, str(tmp_path), rows_per_file=100, processes=1)
    decoders = stager.start_decoders()
    assert decoders is not None
    decoders.wait_started()
    stats = ClientStats()
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        for table in stager.batches(client, WINDOW, parallelism=4, page_size=25, stats=stats):
            stager.add(table)
    staged = stager.finish(WINDOW, stats.as_dict())
    assert decoders.pages == stats.pages > 1
    assert stager.decoders_peak_rss_mb > 0 and not decoders.ready  # stopped, size noted
    ids = [i for f in staged.files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
    assert not [i for i, n in Counter(ids).items() if n > 1]
    assert set(ids) == simulator.ids("events", WINDOW.start, WINDOW.end)
    assert staged.column_types == RowBuilder(spec).column_types()


def test_small_tables_never_start_processes(simulator, tmp_path: Path) -> None:
    spec = get_table("events")
    stager = ParquetStager(spec, str(tmp_path), processes=2, processes_after_rows=10**9)
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        for table in stager.batches(client, WINDOW, page_size=50):
            stager.add(table)
    assert stager._decoders is None
    stager.finish(WINDOW, {})
    assert stager.decoders_peak_rss_mb == 0


def test_a_fast_endpoints_table_starts_processes_with_its_first_request(simulator, tmp_path: Path) -> None:
    """Events (58,000 records/s at the limits) do not wait for a page to prove them large; their
    workers' requests may all go at once. Profiles (1,250/s) start as any table does."""
    seen: dict[str, object] = {}

    class Client:  # records what the stager asks of the client, before any request
        def iter_batches(self, spec, window, transform, **kwargs):  # noqa: ANN001, ANN202
            seen.update(kwargs)
            return iter(())

    events = ParquetStager(get_table("events"), str(tmp_path), processes=1)
    try:
        events.batches(Client(), WINDOW, parallelism=40)  # type: ignore[arg-type]
        assert events._decoders is not None
        assert seen["start_in_flight"] == 40
    finally:
        events.discard()
    profiles = ParquetStager(get_table("profiles"), str(tmp_path), processes=1)
    profiles.batches(Client(), WINDOW, parallelism=8)  # type: ignore[arg-type]
    assert profiles._decoders is None and seen["start_in_flight"] is None
    never = ParquetStager(get_table("events"), str(tmp_path), processes=0)
    never.batches(Client(), WINDOW, parallelism=40)  # type: ignore[arg-type]
    assert never._decoders is None and seen["start_in_flight"] is None
    # Against the simulator: once the processes are up, they decode every page.
    stager = ParquetStager(get_table("events"), str(tmp_path), processes=1)
    stats = ClientStats()
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        batches = stager.batches(client, WINDOW, parallelism=4, page_size=25, stats=stats)
        assert stager._decoders is not None
        stager._decoders.wait_started()
        for table in batches:
            stager.add(table)
    staged = stager.finish(WINDOW, stats.as_dict())
    assert staged.stats["pages_decoded_in_processes"] == stats.pages > 1
    assert staged.rows == len(simulator.ids("events", WINDOW.start, WINDOW.end))
    staged.cleanup()


def test_a_table_expected_large_starts_processes_at_its_next_page(tmp_path: Path) -> None:
    stager = ParquetStager(get_table("events"), str(tmp_path), processes=1, processes_after_rows=1_000)
    no_rows = pa.table({"id": pa.array([], pa.string())})
    try:
        stager.expect(999)
        stager.add(no_rows)
        assert stager._decoders is None
        stager.expect(5_000)  # from an extraction thread: the consumer's next add starts them
        assert stager._decoders is None
        stager.add(no_rows)
        assert stager._decoders is not None
    finally:
        stager.discard()


def test_threads_sharing_a_worker_each_get_their_own_page(simulator) -> None:
    """A worker holds two pages at once (the next crosses the pipe while it decodes one): answers
    must reach the threads in the order their bodies went."""
    spec = get_table("events")
    bodies = _bodies(simulator, "events", 20, 12)
    processes = PageProcesses(spec, 1)
    try:
        processes.wait_started()
        with ThreadPoolExecutor(8) as pool:
            pages = list(pool.map(processes.read, bodies * 3))
        assert [p.keys for p in pages] == [read_page(spec, b).keys for b in bodies * 3]
        assert all(p.table is not None for p in pages) and processes.pages == len(bodies) * 3
    finally:
        processes.close()


def test_a_worker_reads_bodies_into_one_buffer_unless_one_is_still_held() -> None:
    """Bodies of any size arrive whole in ``Connection.send_bytes``'s framing; the buffer is reused
    only once nothing holds a view of the last body (a ``msgspec.Raw`` does)."""
    import msgspec

    from omniload_assets.klaviyo.page_processes import PIPE_BYTES, _Bodies

    receiving, sending = multiprocessing.get_context("spawn").Pipe(duplex=False)
    sizes = [0, 10, 70_000, 3 * PIPE_BYTES, 5]

    def send() -> None:
        for n in sizes:
            sending.send_bytes(bytes([n % 251]) * n)
        sending.close()

    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(send)
        bodies = _Bodies(receiving)
        for n in sizes:
            body = bodies.next()
            assert body is not None and body.tobytes() == bytes([n % 251]) * n
            bodies.done(body)
        assert bodies.next() is None  # the sender closed the pipe
        sent.result()
    receiving.close()
    reader, writer = multiprocessing.get_context("spawn").Pipe(duplex=False)
    bodies = _Bodies(reader)
    writer.send_bytes(b'{"a": [1, 2]}')
    writer.send_bytes(b'{"a": [3, 4]}')
    first = bodies.next()
    assert first is not None
    held = msgspec.json.decode(first, type=dict[str, msgspec.Raw])["a"]
    bodies.done(first)  # a Raw still points into the buffer: the next body gets a new one
    second = bodies.next()
    assert second is not None and second.tobytes() == b'{"a": [3, 4]}'
    assert bytes(held) == b"[1, 2]"
    writer.close()
    reader.close()
