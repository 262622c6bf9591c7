"""Decode processes (``decode_processes``) give exactly the rows decoded in-process, over their own wire."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import orjson
import pytest

from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.client import KlaviyoClient
from omniload_assets.klaviyo.decode_processes import PIPE_BYTES, DecodeProcesses, _Frames, send_frame
from omniload_assets.klaviyo.pages import PageBatch, PageFormatError, read_page
from omniload_assets.klaviyo.rows import RowBuilder
from omniload_assets.klaviyo.windows import TimeWindow

WINDOW = TimeWindow(datetime(2024, 1, 3, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC))


def _bodies(simulator, table: str, size: int, pages: int) -> list[bytes]:
    """The raw bodies of the first ``pages`` pages of ``table``."""
    spec = get_table(table)
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        params = spec.request_params(size)
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
def test_process_rows_equal_in_process_rows(simulator, table: str) -> None:
    spec = get_table(table)
    bodies = _bodies(simulator, table, 20, 2)
    bodies.append(_drifted(bodies[0]))  # takes the general path and gains a column
    local = RowBuilder(spec)
    merged = RowBuilder(spec)  # the run's builder, fed the workers' tables
    processes = DecodeProcesses(spec, 1)
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
    processes = DecodeProcesses(get_table("events"), 1)
    try:
        with pytest.raises(PageFormatError):
            processes.read(b'{"errors": []}')
    finally:
        processes.close()


def test_a_killed_decode_process_leaves_decoding_to_the_run_process(simulator, caplog) -> None:
    spec = get_table("events")
    body = _bodies(simulator, "events", 20, 1)[0]
    processes = DecodeProcesses(spec, 1)
    try:
        processes.wait_started()
        for pid in [
            p.pid for p in multiprocessing.active_children() if p.name.startswith("omniload-decode-")
        ]:
            os.kill(pid, signal.SIGKILL)
        with caplog.at_level(logging.WARNING):
            page = processes.read(body)
            again = processes.read(body)
        assert page.table is None and page.resources is not None  # decoded here
        assert again.table is None and not processes.ready
        assert "last decode process died" in caplog.text
        builder = RowBuilder(spec)
        assert builder.page_table(PageBatch(page)).num_rows == 20
    finally:
        processes.close()


def test_threads_sharing_a_decode_process_each_get_their_own_page(simulator) -> None:
    """A process holds several pages at once (the next crosses the pipe while it decodes one): answers
    must reach the threads in the order their bodies went."""
    spec = get_table("events")
    bodies = _bodies(simulator, "events", 20, 12)
    processes = DecodeProcesses(spec, 1)
    try:
        processes.wait_started()
        with ThreadPoolExecutor(8) as pool:
            pages = list(pool.map(processes.read, bodies * 3))
        assert [p.keys for p in pages] == [read_page(spec, b).keys for b in bodies * 3]
        assert all(p.table is not None for p in pages) and processes.pages == len(bodies) * 3
    finally:
        processes.close()


def test_frames_arrive_whole_in_one_kept_buffer_unless_one_is_still_held() -> None:
    """Bodies of any size arrive whole as the pool's own frames; the buffer is reused only once
    nothing holds a view of the last body (a ``msgspec.Raw`` does)."""
    import msgspec

    receiving, sending = multiprocessing.get_context("spawn").Pipe(duplex=False)
    sizes = [0, 10, 70_000, 3 * PIPE_BYTES, 5]

    def send() -> None:
        for n in sizes:
            send_frame(sending.fileno(), bytes([n % 251]) * n)
        sending.close()

    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(send)
        frames = _Frames(receiving.fileno())
        for n in sizes:
            body = frames.next()
            assert body is not None and body.tobytes() == bytes([n % 251]) * n
            frames.done(body)
        assert frames.next() is None  # the sender closed the pipe
        sent.result()
    receiving.close()
    reader, writer = multiprocessing.get_context("spawn").Pipe(duplex=False)
    frames = _Frames(reader.fileno())
    send_frame(writer.fileno(), b'{"a": [1, 2]}')
    send_frame(writer.fileno(), b'{"a": [3, 4]}')
    first = frames.next()
    assert first is not None
    held = msgspec.json.decode(first, type=dict[str, msgspec.Raw])["a"]
    frames.done(first)  # a Raw still points into the buffer: the next body gets a new one
    second = frames.next()
    assert second is not None and second.tobytes() == b'{"a": [3, 4]}'
    assert bytes(held) == b"[1, 2]"
    writer.close()
    reader.close()


def test_a_frame_cut_short_is_an_error_not_a_short_body() -> None:
    reader, writer = multiprocessing.get_context("spawn").Pipe(duplex=False)
    os.write(writer.fileno(), (100).to_bytes(8, "big") + b"only ten b")
    writer.close()
    with pytest.raises(EOFError):
        _Frames(reader.fileno()).next()
    reader.close()
