"""Extraction (``klaviyo.extraction``): windows planned, handed over and decoded by the fetching workers."""

from __future__ import annotations

import dataclasses
import re
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pyarrow as pa
import pytest

from omniload_assets.klaviyo.catalog import TABLES, RateLimit, get_table
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets.klaviyo.decoders import LocalDecoder
from omniload_assets.klaviyo.errors import (
    KlaviyoPermissionError,
    KlaviyoUnavailableError,
)
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
from omniload_assets.klaviyo.windows import TimeWindow, parse_datetime
from omniload_assets_tests.klaviyo_mocks import (
    D0,
    D1,
    D2,
    DAY,
    EVENTS,
    EVENTS_DAY_FILTER,
    KEY,
    NEXT_DAY,
    US,
    error_body,
    ids,
    page,
    query,
    resource,
    single,
)
from omniload_assets_tests.records import RecordsDecoder, iter_records
from omniload_assets_tests.simulator import KlaviyoSimulator

WINDOW = TimeWindow(datetime(2024, 1, 3, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC))


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


# -- filters and page size -----------------------------------------------------------------------


def test_events_window_filter_is_exact_and_url_encoded(httpx_mock, client):
    httpx_mock.add_response(json=page([]))

    list(iter_records(client, EVENTS, DAY))

    request = httpx_mock.get_request()
    assert single(request, "filter") == EVENTS_DAY_FILTER
    raw = request.url.query.decode()
    # '+' of the offset must travel as %2B, or the server reads a space.
    assert "%2B00%3A00" in raw
    assert "+" not in raw
    assert single(request, "page[size]") == "1000"


def test_events_window_in_another_timezone_is_sent_in_utc(httpx_mock, client):
    httpx_mock.add_response(json=page([]))
    plus2 = datetime(2024, 1, 5, 2, tzinfo=timezone(timedelta(hours=2)))
    list(iter_records(client, EVENTS, TimeWindow(plus2, plus2 + timedelta(days=1))))
    assert single(httpx_mock.get_request(), "filter") == EVENTS_DAY_FILTER


def test_profiles_use_greater_than_start_minus_one_microsecond_and_less_than(httpx_mock, client):
    httpx_mock.add_response(json=page([]))

    list(iter_records(client, get_table("profiles"), DAY))

    request = httpx_mock.get_request()
    assert single(request, "filter") == (
        "and(greater-than(updated,2024-01-04T23:59:59.999999+00:00),"
        "less-than(updated,2024-01-06T00:00:00+00:00))"
    )
    assert single(request, "page[size]") == "100"
    assert single(request, "additional-fields[profile]") == "subscriptions"


@pytest.mark.parametrize("table", ["lists", "segments"])
def test_greater_than_only_endpoints_bound_the_upper_end_client_side(httpx_mock, client, table):
    records = [
        resource(table, "before", D0 - US),
        resource(table, "at-start", D0),
        resource(table, "inside", D0 + timedelta(hours=5)),
        resource(table, "last-us", D1 - US),
        resource(table, "at-end", D1),
        resource(table, "after", D1 + timedelta(hours=3)),
    ]
    httpx_mock.add_response(json=page(records))

    got = ids(iter_records(client, get_table(table), DAY))

    assert got == ["at-start", "inside", "last-us"]
    request = httpx_mock.get_request()
    assert single(request, "filter") == "greater-than(updated,2024-01-04T23:59:59.999999+00:00)"
    assert single(request, "page[size]") == "10"


@pytest.mark.parametrize("table", ["metrics", "catalog-variants", "catalog-categories", "catalog-items"])
def test_unfilterable_endpoints_send_no_filter_and_window_client_side(httpx_mock, client, table):
    spec = get_table(table)
    records = [
        resource(table, "old", D0 - timedelta(days=30)),
        resource(table, "before", D0 - US),
        resource(table, "at-start", D0),
        resource(table, "inside", "2024-01-05 12:00:00Z"),  # space-separated, Z
        resource(table, "at-end", D1),
        resource(table, "future", D1 + timedelta(days=1)),
    ]
    httpx_mock.add_response(json=page(records))

    got = ids(iter_records(client, spec, DAY))

    assert got == ["at-start", "inside"]
    request = httpx_mock.get_request()
    assert "filter" not in query(request)
    if table == "metrics":
        assert "page[size]" not in query(request)
    else:
        assert single(request, "page[size]") == "100"


def test_metrics_send_no_page_size_even_when_one_is_configured(httpx_mock, client):
    httpx_mock.add_response(json=page([]))
    list(iter_records(client, get_table("metrics"), DAY, page_size=50))
    assert "page[size]" not in query(httpx_mock.get_request())


@pytest.mark.parametrize(("table", "key"), [("campaigns", "updated_at"), ("flows", "updated")])
def test_campaigns_and_flows_query_archived_and_unarchived(httpx_mock, client, table, key):
    window = f"greater-or-equal({key},2024-01-05T00:00:00+00:00),less-than({key},2024-01-06T00:00:00+00:00)"

    def answer(request: httpx.Request) -> httpx.Response:
        archived = "equals(archived,true)" in single(request, "filter")
        rid = "archived-one" if archived else "live-one"
        return httpx.Response(200, json=page([resource(table, rid, D0 + timedelta(hours=1))]))

    httpx_mock.add_callback(answer, is_reusable=True)

    got = ids(iter_records(client, get_table(table), DAY))

    assert sorted(got) == ["archived-one", "live-one"]
    filters = sorted(single(r, "filter") for r in httpx_mock.get_requests())
    assert filters == [
        f"and(equals(archived,false),{window})",
        f"and(equals(archived,true),{window})",
    ]


@pytest.mark.parametrize(
    ("table", "page_size", "expected"),
    [
        ("events", None, "1000"),
        ("events", 250, "250"),
        ("events", 5000, "1000"),
        ("flows", None, "50"),
        ("flows", 100, "50"),
        ("lists", None, "10"),
        ("tags", None, "50"),
        ("coupons", 1000, "100"),
    ],
)
def test_page_size_defaults_to_and_is_capped_at_the_endpoint_maximum(
    httpx_mock, client, table, page_size, expected
):
    httpx_mock.add_response(json=page([]), is_reusable=True)
    spec = get_table(table)
    list(iter_records(client, spec, DAY if spec.incremental_key else None, page_size=page_size))
    for request in httpx_mock.get_requests():
        assert single(request, "page[size]") == expected


def test_replace_tables_send_no_filter(httpx_mock, client):
    httpx_mock.add_response(json=page([{"type": "tag", "id": "t1", "attributes": {"name": "x"}}]))
    assert ids(iter_records(client, get_table("tags"))) == ["t1"]
    assert "filter" not in query(httpx_mock.get_request())


# -- window boundaries ---------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["events", "profiles", "lists", "segments", "metrics", "catalog-items"])
def test_records_on_a_boundary_land_in_exactly_one_of_two_adjacent_windows(httpx_mock, client, table):
    # A lenient server that ignores the filter entirely: the client alone must place each record.
    records = [
        resource(table, "first-day-start", D0),
        resource(table, "just-before", D1 - US),
        resource(table, "on-boundary", D1),
        resource(table, "on-boundary-offset", "2024-01-06T01:00:00+01:00"),
        resource(table, "on-boundary-space-z", "2024-01-06 00:00:00Z"),
        resource(table, "just-after", D1 + US),
        resource(table, "second-day-end", D2),
    ]
    httpx_mock.add_response(json=page(records), is_reusable=True)
    spec = get_table(table)

    first = ids(iter_records(client, spec, DAY))
    second = ids(iter_records(client, spec, NEXT_DAY))

    assert first == ["first-day-start", "just-before"]
    assert second == ["on-boundary", "on-boundary-offset", "on-boundary-space-z", "just-after"]
    counts = Counter(first + second)
    assert all(n == 1 for n in counts.values())
    assert "second-day-end" not in counts


# -- concurrency ---------------------------------------------------------------------------------

FILTER_RE = re.compile(r"^and\(greater-or-equal\(datetime,([^,)]+)\),less-than\(datetime,([^,)]+)\)\)$")


class FakeEventServer:
    """Answers /api/events by parsing the filter and ``sort``; inclusive at both ends, as a sloppy
    server might be. The cursor is an offset into the sorted matches."""

    def __init__(self, events: list[dict]) -> None:
        self.events = events
        self.windows: list[tuple[datetime, datetime]] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.threads.add(threading.current_thread().name)
        match = FILTER_RE.match(single(request, "filter") or "")
        assert match, single(request, "filter")
        assert single(request, "sort") == "datetime"
        lo, hi = parse_datetime(match[1]), parse_datetime(match[2])
        size = int(single(request, "page[size]"))
        offset = int(single(request, "page[cursor]") or 0)
        if offset == 0:
            with self._lock:
                self.windows.append((lo, hi))
        matching = sorted(
            (e for e in self.events if lo <= parse_datetime(e["attributes"]["datetime"]) <= hi),
            key=lambda e: parse_datetime(e["attributes"]["datetime"]),
        )
        chunk = matching[offset : offset + size]
        next_url = None
        if offset + size < len(matching):
            next_url = str(request.url.copy_set_param("page[cursor]", str(offset + size)))
        return httpx.Response(200, json=page(chunk, next_url))


def test_parallel_extraction_yields_every_record_exactly_once(httpx_mock, client):
    start, end = D0, D0 + timedelta(days=3)
    events = []
    t = start
    while t < end:  # every 15 minutes, three at a time: hand-overs happen on shared keys
        for _ in range(3):
            events.append(resource("events", f"e{len(events)}", t))
        t += timedelta(minutes=15)
    events.append(resource("events", "edge-last", end - US))
    events.append(resource("events", "outside", end))
    server = FakeEventServer(events)
    httpx_mock.add_callback(server, is_reusable=True)
    stats = ClientStats()

    got = ids(iter_records(client, EVENTS, TimeWindow(start, end), page_size=7, parallelism=4, stats=stats))

    expected = [e["id"] for e in events if e["id"] != "outside"]
    assert Counter(got) == Counter(expected)
    assert len(got) == len(expected) == 3 * 3 * 96 + 1
    assert stats.records == len(expected)
    assert len(server.threads) >= 2
    # The first query covers the whole window; idle workers were then handed the rest in pieces.
    assert server.windows[0] == (start, end)
    assert len(server.windows) > 4
    assert all(start <= lo < hi <= end for lo, hi in server.windows)


def test_serial_extraction_pages_one_sorted_query(httpx_mock, client):
    events = [resource("events", f"e{i}", D0 + timedelta(minutes=i)) for i in range(20)]
    server = FakeEventServer(events)
    httpx_mock.add_callback(server, is_reusable=True)

    got = ids(iter_records(client, EVENTS, DAY, page_size=3, parallelism=1))

    assert got == [f"e{i}" for i in range(20)]
    assert server.windows == [(DAY.start, DAY.end)]


def test_parallel_extraction_raises_a_worker_error(httpx_mock, client):
    events = [resource("events", f"e{i}", D0 + timedelta(minutes=i)) for i in range(200)]
    server = FakeEventServer(events)
    calls = 0
    lock = threading.Lock()

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        with lock:
            calls += 1
            n = calls
        if n == 6:
            return httpx.Response(403, json=error_body("no scope", 403))
        return server(request)

    httpx_mock.add_callback(answer, is_reusable=True)
    with pytest.raises(KlaviyoPermissionError, match="events:read"):
        list(iter_records(client, EVENTS, DAY, page_size=5, parallelism=4))
    assert not [t for t in threading.enumerate() if t.name.startswith("klaviyo")]


@pytest.mark.timeout(20)
def test_abandoning_a_parallel_extraction_stops_its_workers(httpx_mock, client):
    def endless(request: httpx.Request) -> httpx.Response:
        offset = int(single(request, "page[cursor]") or 0)
        nxt = str(request.url.copy_set_param("page[cursor]", str(offset + 1)))
        return httpx.Response(
            200, json=page([resource("events", f"x{offset}", D0 + timedelta(hours=1))], nxt)
        )

    httpx_mock.add_callback(endless, is_reusable=True)
    batches = iter_records(client, EVENTS, DAY, parallelism=4)
    assert len(next(batches)) <= 1
    batches.close()  # returns only once every worker has been unblocked and has stopped
    assert not [t for t in threading.enumerate() if t.name.startswith("klaviyo")]


# -- child tables: one task per parent id ------------------------------------------------------------


class ParentsDecoder(LocalDecoder):
    """Rows are ``(parent, [record ids])`` per page: which parent each page was read for."""

    def rows(self, batch: PageBatch) -> tuple[str | None, list[str]]:  # type: ignore[override]
        return batch.parent, [r["id"] for r in batch.records()]


def child_pages(client: KlaviyoClient, table: str, parents: list[str], **kwargs) -> list[tuple]:  # noqa: ANN003
    spec = get_table(table)
    return list(Extraction(client, spec, None, ParentsDecoder(spec), parents=parents, **kwargs))


def member(pid: str) -> dict:
    return {"type": "profile", "id": pid, "attributes": {"joined_group_at": "2024-01-02T00:00:00+00:00"}}


def test_a_child_table_reads_each_parents_path_with_the_endpoints_query(httpx_mock, client):
    def answer(request: httpx.Request) -> httpx.Response:
        parent = request.url.raw_path.decode().split("/")[3]
        return httpx.Response(200, json=page([member(f"{parent}-p")]))

    httpx_mock.add_callback(answer, is_reusable=True)

    got = child_pages(client, "list-profiles", ["L1", "L/2?x", "L1"])

    # Each parent once, its id percent-encoded in the path (never another path or a query).
    assert sorted(got) == [("L/2?x", ["L%2F2%3Fx-p"]), ("L1", ["L1-p"])]
    paths = sorted(r.url.raw_path.decode().split("?")[0] for r in httpx_mock.get_requests())
    assert paths == ["/api/lists/L%2F2%3Fx/profiles", "/api/lists/L1/profiles"]
    for request in httpx_mock.get_requests():
        assert query(request) == {"fields[profile]": ["joined_group_at"], "page[size]": ["100"]}


def test_a_child_follows_each_parents_cursor(httpx_mock, client):
    def answer(request: httpx.Request) -> httpx.Response:
        parent = request.url.raw_path.decode().split("/")[3]
        offset = int(single(request, "page[cursor]") or 0)
        nxt = str(request.url.copy_set_param("page[cursor]", str(offset + 1))) if offset < 2 else None
        return httpx.Response(200, json=page([{"type": "flow-action", "id": f"{parent}-{offset}"}], nxt))

    httpx_mock.add_callback(answer, is_reusable=True)

    got = child_pages(client, "flow-actions", ["F1", "F2"], parallelism=2)

    assert sorted((parent, ids) for parent, ids in got) == [
        ("F1", ["F1-0"]),
        ("F1", ["F1-1"]),
        ("F1", ["F1-2"]),
        ("F2", ["F2-0"]),
        ("F2", ["F2-1"]),
        ("F2", ["F2-2"]),
    ]


def test_the_parents_are_read_concurrently(httpx_mock, client):
    """Four parents on four workers: every request is in flight before any is answered."""
    barrier = threading.Barrier(4, timeout=10)

    def answer(request: httpx.Request) -> httpx.Response:
        barrier.wait()  # breaks (and fails the test) unless four requests wait here at once
        return httpx.Response(200, json=page([{"type": "campaign-message", "id": request.url.path}]))

    httpx_mock.add_callback(answer, is_reusable=True)

    got = child_pages(client, "campaign-messages", ["C1", "C2", "C3", "C4"], parallelism=4)

    assert sorted(parent for parent, _ in got) == ["C1", "C2", "C3", "C4"]
    assert all("page[size]" not in query(r) for r in httpx_mock.get_requests())  # none documented


def test_a_parent_klaviyo_no_longer_knows_gives_no_rows(httpx_mock, client):
    def answer(request: httpx.Request) -> httpx.Response:
        if "/gone/" in request.url.path:
            return httpx.Response(404, json=error_body("Segment not found", 404, "not_found"))
        return httpx.Response(200, json=page([member("p1")]))

    httpx_mock.add_callback(answer, is_reusable=True)
    spec = get_table("segment-profiles")
    extraction = Extraction(
        client, spec, None, ParentsDecoder(spec), parents=["S1", "gone", "S2"], parallelism=2
    )

    assert sorted(extraction) == [("S1", ["p1"]), ("S2", ["p1"])]
    assert extraction.gone == ["gone"]


def test_other_errors_of_a_child_request_fail_the_extraction(httpx_mock, client):
    httpx_mock.add_response(status_code=403, json=error_body("missing scope", 403), is_reusable=True)
    with pytest.raises(KlaviyoPermissionError, match="segments:read"):
        child_pages(client, "segment-profiles", ["S1", "S2"], parallelism=2)


def test_every_parents_requests_share_the_endpoints_rate_limit(httpx_mock):
    """Paced by the endpoint (the path template), not by each parent's path: three parents at one
    request a second wait for each other."""
    spec = dataclasses.replace(
        get_table("flow-actions"),
        path="/api/pacing-test/{id}/flow-actions",
        rate_limit=RateLimit("T", 2, 600),
    )
    httpx_mock.add_response(json=page([]), is_reusable=True)
    stats = ClientStats()
    with KlaviyoClient(KEY, pace=True) as paced:
        list(
            Extraction(
                paced,
                spec,
                None,
                ParentsDecoder(spec),
                parents=["F1", "F2", "F3"],
                parallelism=3,
                stats=stats,
            )
        )
    assert stats.requests == 3
    assert stats.pacing_wait_s >= 1.5  # the second waited about 1 s, the third about 2 s


def test_a_child_table_needs_its_parents_and_no_window(client):
    spec, tags = get_table("list-profiles"), get_table("tags")
    with pytest.raises(ValueError, match="list-profiles is read whole for each lists id"):
        Extraction(client, spec, None, ParentsDecoder(spec))
    with pytest.raises(ValueError, match="give the ids and no window"):
        Extraction(client, spec, DAY, ParentsDecoder(spec), parents=["L1"])
    with pytest.raises(ValueError, match="tags has no parent table"):
        Extraction(client, tags, None, ParentsDecoder(tags), parents=["L1"])
    assert list(Extraction(client, spec, None, ParentsDecoder(spec), parents=[], parallelism=4)) == []


# -- every table against the simulator -----------------------------------------------------------


def extract_ids(
    sim: KlaviyoSimulator,
    table: str,
    window: TimeWindow | None,
    *,
    parallelism: int = 1,
    page_size: int | None = None,
    stats: ClientStats | None = None,
) -> list[str]:
    with KlaviyoClient(sim.api_key, base_url=sim.base_url) as client:
        batches = iter_records(
            client, get_table(table), window, parallelism=parallelism, page_size=page_size, stats=stats
        )
        return [r["id"] for batch in batches for r in batch]


@pytest.mark.parametrize("table", [t.name for t in TABLES if t.parent is None])
@pytest.mark.parametrize("parallelism", [1, 4])
def test_every_table_extracts_exactly_its_window(simulator, table, parallelism) -> None:
    spec = get_table(table)
    window = WINDOW if spec.partitioned else None
    got = extract_ids(simulator, table, window, parallelism=parallelism)
    expected = simulator.ids(table, WINDOW.start, WINDOW.end) if window else simulator.ids(table)
    assert expected, f"the simulator has no {table} in {WINDOW}: the test proves nothing"
    assert not [i for i, n in Counter(got).items() if n > 1]
    assert set(got) == expected


def test_dense_windows_are_split_among_workers_without_loss(simulator) -> None:
    """Small pages make a dense window: idle workers take over the rest of busy workers' windows."""
    stats = ClientStats()
    got = extract_ids(simulator, "events", WINDOW, parallelism=6, page_size=20, stats=stats)
    expected = simulator.ids("events", WINDOW.start, WINDOW.end)
    assert len(got) == len(expected) == len(set(got))
    assert set(got) == expected
    # A single cursor would need exactly ceil(n / 20) pages; each hand-over adds a partial page.
    assert stats.pages > -(-len(expected) // 20)
    # Far more pages than one cursor could have served in the same number of requests: split happened.
    assert stats.pages >= len(expected) // 20


def test_campaigns_of_every_channel_and_archived_ones_arrive(simulator) -> None:
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        records = [r for b in iter_records(client, get_table("campaigns"), WINDOW) for r in b]
    channels = simulator.campaign_channels()
    got = {r["id"] for r in records}
    assert {channels[i] for i in got} == {"email", "sms", "mobile_push"}
    archived = {r["id"] for r in records if r["attributes"]["definition"]["archived"]}
    assert archived, "archived campaigns are missing"
    assert got == simulator.ids("campaigns", WINDOW.start, WINDOW.end)


def test_profiles_carry_their_subscriptions(simulator) -> None:
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        records = [r for b in iter_records(client, get_table("profiles"), WINDOW) for r in b]
    assert records
    assert all("subscriptions" in r["attributes"] for r in records)


@pytest.mark.parametrize("table", ["metrics", "catalog-items", "lists"])
def test_adjacent_windows_partition_the_records(simulator, table) -> None:
    """Client-side (and lower-bound-only) windowing: consecutive days neither overlap nor leave gaps."""
    days = WINDOW.split(5)
    per_day = [extract_ids(simulator, table, day) for day in days]
    union = [i for ids in per_day for i in ids]
    assert union, f"no {table} in {WINDOW}: the test proves nothing"
    assert len(union) == len(set(union))
    assert set(union) == simulator.ids(table, WINDOW.start, WINDOW.end)
    for day, day_ids in zip(days, per_day, strict=True):
        assert set(day_ids) == simulator.ids(table, day.start, day.end)


def test_paced_extraction_sees_few_429s_under_real_limits() -> None:
    """With Klaviyo's real limits enforced, pacing keeps a parallel run (nearly) free of 429s."""
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC)
    with KlaviyoSimulator(seed=5, start=start, end=end, rate_limits=True) as sim:
        expected = sim.ids("flows", start, end)
        assert expected
        page_size = max(1, len(expected) // 5)  # about a dozen requests at flows' 3/s burst limit
        stats = ClientStats()
        got = extract_ids(
            sim, "flows", TimeWindow(start, end), parallelism=8, page_size=page_size, stats=stats
        )
        assert set(got) == expected
        assert stats.requests >= len(expected) / page_size  # no page holds more than page_size
        assert sim.stats.throttled == stats.throttled <= 1


# -- what is completely fetched (checkpoints), and skipping what is done (resume) -------------------


def run_recording_completed(
    sim: KlaviyoSimulator,
    table: str,
    window: TimeWindow,
    *,
    parallelism: int,
    done: list[TimeWindow] | None = None,
    page_size: int = 20,
) -> tuple[list[tuple[list[str], list[TimeWindow]]], Extraction]:
    """Each page's ids with what the extraction called complete once the page was handed on."""
    spec = get_table(table)
    seen: list[tuple[list[str], list[TimeWindow]]] = []
    with KlaviyoClient(sim.api_key, base_url=sim.base_url) as client:
        run = Extraction(
            client,
            spec,
            window,
            RecordsDecoder(spec),
            page_size=page_size,
            parallelism=parallelism,
            done=done or [],
        )
        for records in run:
            seen.append(([r["id"] for r in records], run.completed()))
        seen.append(([], run.completed()))
    return seen, run


@pytest.mark.parametrize("parallelism", [1, 6])
@pytest.mark.parametrize(("table", "page_size"), [("events", 20), ("profiles", 5), ("campaigns", 2)])
def test_what_is_called_complete_has_every_record_already_handed_on(
    simulator, table, page_size, parallelism
) -> None:
    seen, _run = run_recording_completed(
        simulator, table, WINDOW, parallelism=parallelism, page_size=page_size
    )
    handed_on: set[str] = set()
    grew = 0
    for page_ids, completed in seen[:-1]:
        handed_on |= set(page_ids)
        for part in completed:  # lags a page behind: never ahead of the rows handed on
            missing = simulator.ids(table, part.start, part.end) - handed_on
            assert not missing, f"{part} called complete without {len(missing)} of its records"
        grew += bool(completed)
    assert grew, "nothing was ever called complete before the end: the test proves nothing"
    assert seen[-1][1] == [WINDOW]


def test_a_resumed_extraction_fetches_only_what_is_not_done(simulator) -> None:
    done = [
        TimeWindow(WINDOW.start, datetime(2024, 1, 4, 6, tzinfo=UTC)),
        TimeWindow(datetime(2024, 1, 5, 12, tzinfo=UTC), datetime(2024, 1, 7, tzinfo=UTC)),
    ]
    seen, run = run_recording_completed(simulator, "events", WINDOW, parallelism=4, done=done)
    got = [i for page_ids, _ in seen for i in page_ids]
    expected = simulator.ids("events", WINDOW.start, WINDOW.end) - {
        i for part in done for i in simulator.ids("events", part.start, part.end)
    }
    assert expected
    assert sorted(got) == sorted(expected)  # none of the done stretches, none twice
    assert [t.window for t in run.tasks] == [
        TimeWindow(done[0].end, done[1].start),
        TimeWindow(done[1].end, WINDOW.end),
    ]
    assert seen[0][1] == done  # what was done counts as complete from the start
    assert seen[-1][1] == [WINDOW]


def test_only_windows_the_api_filters_can_skip_what_is_done(client) -> None:
    with pytest.raises(ValueError, match="cannot skip"):
        Extraction(client, get_table("metrics"), WINDOW, LocalDecoder(get_table("metrics")), done=[WINDOW])


def test_a_failing_worker_lets_the_others_hand_on_the_pages_they_fetched(simulator) -> None:
    """The run raises once every worker has stopped, after the pages already fetched, so a failed
    run can commit them."""
    simulator.set_fault("503", after=12, path="/api/events")
    spec = get_table("events")
    pages = 0
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url, max_retries=0) as client:
        run = Extraction(client, spec, WINDOW, RecordsDecoder(spec), page_size=20, parallelism=6)
        with pytest.raises(KlaviyoUnavailableError):
            for _records in run:
                pages += 1
    assert pages == simulator.stats.statuses[200] >= 12  # every page the server answered reached us
