"""Extraction (``klaviyo.extraction``): windows planned, handed over and decoded by the fetching workers."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets.klaviyo.decoders import LocalDecoder
from omniload_assets.klaviyo.extraction import (
    MIN_IN_FLIGHT,
    MIN_TASK_PAGES,
    START_IN_FLIGHT,
    TIER_WORKERS,
    Extraction,
    InFlightLimit,
    Task,
    extract,
    workers_for,
)
from omniload_assets.klaviyo.pages import PageBatch, RawPage
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets_tests.records import RecordsDecoder


class CountingDecoder(LocalDecoder):
    """Rows are each page's record count; ``on_rows`` and ``expect`` are recorded."""

    def __init__(self, spec, offloaded: bool = False) -> None:  # noqa: ANN001
        super().__init__(spec)
        self.offloaded = offloaded  # type: ignore[misc]
        self.told: list[int] = []
        self.on_rows = lambda: None

    def rows(self, batch: PageBatch) -> int:  # type: ignore[override]
        self.on_rows()
        return batch.size

    def expect(self, records: int) -> None:
        self.told.append(records)


WINDOW = TimeWindow(datetime(2024, 1, 3, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC))


def test_workers_build_arrow_batches_of_exactly_the_window(simulator) -> None:
    spec = get_table("events")
    stats = ClientStats()
    tables: list[pa.Table] = []
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        extract(
            client, spec, WINDOW, LocalDecoder(spec), tables.append, parallelism=6, page_size=25, stats=stats
        )
    assert all(isinstance(t, pa.Table) for t in tables)
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    assert ids, "no events in the window: the test proves nothing"
    assert not [i for i, n in Counter(ids).items() if n > 1]
    assert set(ids) == simulator.ids("events", WINDOW.start, WINDOW.end)
    assert stats.records == len(ids)


def test_requests_in_the_works_never_exceed_the_workers(simulator) -> None:
    """Requests in flight plus pages being converted stay within the parallelism, whatever the CPU."""
    spec = get_table("events")
    seen: list[int] = []
    decoder = CountingDecoder(spec)
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        extraction = Extraction(client, spec, WINDOW, decoder, page_size=20, parallelism=3)
        limit = extraction._limit

        def count() -> None:
            with limit._slot_freed:
                seen.append(limit.in_flight + limit.processing)

        decoder.on_rows = count
        total = sum(extraction)
    assert total > 0
    assert total == len(simulator.ids("events", WINDOW.start, WINDOW.end))
    assert seen and max(seen) <= 3


def test_workers_follow_the_tier_capped_by_the_run() -> None:
    events, flows = get_table("events"), get_table("flows")
    assert workers_for(events, None) == TIER_WORKERS["XL"]
    assert workers_for(events, 20) == 20  # the seed's --extract-parallelism 20 is a cap
    assert workers_for(flows, 20) == TIER_WORKERS["S"]  # 3 requests/s need no more
    assert workers_for(flows, 0) == 1


def test_records_tied_on_the_key_across_pages_arrive_once(simulator) -> None:
    """Hundreds of profiles share one ``updated``: a hand-over must not re-fetch ties already sent.

    Deterministic: no worker is idle while the first page (which ends in ties) arrives, and idle
    workers ask for work from then on, as happens when they finish their own windows.
    """
    tie = datetime(2024, 1, 5, tzinfo=UTC)
    for n in range(300):
        simulator.add_record(
            "profiles",
            {"id": f"TIE{n:04d}", "attributes": {"email": f"t{n}@example.com", "updated": tie.isoformat()}},
        )
    window = TimeWindow(datetime(2024, 1, 4, 20, tzinfo=UTC), datetime(2024, 1, 5, 4, tzinfo=UTC))
    before_tie = len(simulator.ids("profiles", window.start, tie))
    assert 0 < before_tie < 20, "the first page must end in ties"
    pages = []
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        profiles = get_table("profiles")
        extraction = Extraction(
            client, profiles, window, RecordsDecoder(profiles), page_size=20, parallelism=1
        )
        extraction._wanted = lambda: 0 if not pages else 3  # type: ignore[method-assign]
        ids = []
        for records in extraction:
            pages.append(records)
            ids += [r["id"] for r in records]
    assert not [i for i, n in Counter(ids).items() if n > 1]
    assert set(ids) == simulator.ids("profiles", window.start, window.end)


def _page(start: datetime, seconds_apart: int, n: int) -> RawPage:
    keys = [(start + timedelta(seconds=i * seconds_apart)).isoformat() for i in range(n)]
    return RawPage(b"", keys, "https://next.example/page", None, parsed=[{} for _ in keys])


def test_hand_overs_leave_pieces_of_several_full_pages_unless_the_rest_is_small() -> None:
    """A hand-over cuts the rest of a window into pieces the page's density says hold at least
    MIN_TASK_PAGES full pages each (each task ends on a part-filled page: small pieces cost requests),
    however many workers are idle; a rest the workers would get through in MIN_TASK_PAGES rounds
    anyway is cut into pieces of one full page (there rounds of latency decide the time)."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    workers = 8
    events = get_table("events")
    extraction = Extraction(
        None,  # type: ignore[arg-type]  # _step makes no request
        events,
        TimeWindow(start, start + timedelta(days=1)),
        LocalDecoder(events),
        page_size=20,
        parallelism=workers,
    )
    extraction._wanted = lambda: 40  # type: ignore[method-assign]
    task = extraction.tasks[0]

    def pieces_after(pages: int) -> int:
        # 20 records a page, one every 10 s: the rest (from the last key) holds one page a 200 s.
        window = TimeWindow(start, start + timedelta(seconds=190 + pages * 200))
        step, _, _ = extraction._step(Task(window, task.variant), _page(start, 10, 20), None)
        return len(step.handed_over)

    small = workers * MIN_TASK_PAGES  # pages the workers get through in MIN_TASK_PAGES rounds
    assert pieces_after(5) == 5  # a small rest: a piece a page
    assert pieces_after(small) == small
    assert pieces_after(small + MIN_TASK_PAGES * 2) == small // MIN_TASK_PAGES + 2  # pieces of 4 pages
    assert pieces_after(1) == 0  # under two pages: paged on, not split
    assert pieces_after(MIN_TASK_PAGES * 100) == 41  # dense enough for every idle worker and this one


def test_the_window_size_is_estimated_once_from_its_first_page(simulator) -> None:
    spec = get_table("events")
    decoder = CountingDecoder(spec)
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        records = sum(Extraction(client, spec, WINDOW, decoder, parallelism=4, page_size=20))
    assert records == len(simulator.ids("events", WINDOW.start, WINDOW.end)) > 100
    assert len(decoder.told) == 1
    assert records / 3 < decoder.told[0] < records * 3  # the simulator's events are spread over the days


def test_requests_allowed_in_flight_at_the_start_follow_where_pages_are_decoded() -> None:
    def allowed(offloaded: bool, parallelism: int = 40) -> int:
        events = get_table("events")
        extraction = Extraction(
            None,  # type: ignore[arg-type]  # no request is made
            events,
            WINDOW,
            CountingDecoder(events, offloaded=offloaded),
            parallelism=parallelism,
        )
        return extraction._limit.allowance

    assert allowed(False) == START_IN_FLIGHT < 40  # pages decoded here: grow with the CPU
    assert allowed(True) == 40  # pages decoded elsewhere: every worker's request at once
    assert allowed(True, parallelism=12) == 12  # never more than the workers


def test_the_in_flight_allowance_grows_when_the_cpu_keeps_up_and_shrinks_when_pages_queue() -> None:
    limit = InFlightLimit(most=5, start=3)
    never = threading.Event()
    limit.acquire(never)
    limit.release(received=True)
    limit.settle()  # handed on with nothing else in the works: one more allowed
    assert limit.allowance == 4
    for _ in range(3):
        limit.acquire(never)
        limit.release(received=True)
    limit.settle()  # two pages still wait for the CPU: one fewer allowed
    assert limit.allowance == 3
    limit.settle()
    limit.settle()  # nothing in the works again
    assert (limit.allowance, limit.in_flight, limit.processing) == (4, 0, 0)
    shrinking = InFlightLimit(most=8, start=4)
    for _ in range(4):
        shrinking.acquire(never)
        shrinking.release(received=True)
    shrinking.settle()
    shrinking.settle()  # pages kept queueing for the CPU: down to the floor
    assert shrinking.allowance == MIN_IN_FLIGHT
    grown = InFlightLimit(most=2, start=2)
    grown.acquire(never)
    grown.release(received=True)
    grown.settle()
    assert grown.allowance == 2  # never above the workers
