"""Windowed extraction: one table's records for a time window, fetched by concurrent workers.

A window is one *task*. Where the endpoint can filter and sort on the incremental key, a task pages
in ascending key order, stops as soon as it passes the window's end, and — whenever a worker sits
idle — hands the rest of its window (from the last key it has seen) to the idle workers as new
tasks, as many as the idle workers and no more than the page's density says hold several full pages
each. Dense stretches are thus split as finely as the workers need and sparse ones cost one request.
Records exactly on the hand-over key are left to the new tasks, so every record lands in exactly one
task. Endpoints that cannot filter on the key are read whole and windowed here.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.pages import PageBatch, RawPage
from omniload_assets.klaviyo.rows import key_value, limit_malloc_arenas
from omniload_assets.klaviyo.windows import TimeWindow, combine_filters, window_filter

if TYPE_CHECKING:
    from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient

#: A remainder shorter than this is paged through rather than handed over.
MIN_SPLIT_SPAN = timedelta(seconds=2)
#: A piece handed over is expected to hold at least this many full pages (from the density of the
#: page that hands it over): every task ends on a part-filled page, so many small tasks cost
#: requests (and CPU) for the same records.
MIN_TASK_PAGES = 4
UNBOUNDED = 1 << 30

#: Finished pages that may wait for the consumer (each worker may hold one more while it waits).
OUT_QUEUE_PAGES = 4
#: Pages waiting for the CPU at once that shrink the requests allowed in flight (see ``_settle``).
MAX_PROCESSING = 2
#: Requests allowed in flight at the start (unless the caller says its pages cost this process
#: little, see ``ParquetStager.batches``), and at least.
START_IN_FLIGHT, MIN_IN_FLIGHT = 8, 2

#: Concurrent requests that keep an endpoint of each rate-limit tier at its limits when a largest
#: page takes its longest (XL: 3,500/min is 58 requests/s, and 1,000 events can take 0.6 s, so 35
#: in flight; L: 75/s bursts at ~0.1 s a page of 100; M and S: their 10/s and 3/s bursts). More
#: would only queue at the pacer. A run's ``extract_parallelism`` caps these.
TIER_WORKERS: dict[str, int] = {"XL": 40, "L": 8, "M": 4, "S": 3}


def workers_for(spec: TableSpec, parallelism: int | None) -> int:
    """Workers for one table: its tier's need, capped by the run's ``parallelism`` (if given)."""
    need = TIER_WORKERS.get(spec.rate_limit.tier, 4)
    return max(1, need if parallelism is None else min(need, parallelism))


@dataclass(frozen=True)
class Task:
    """A query for one window (``None``: the whole listing) and one filter variant."""

    window: TimeWindow | None
    variant: str | None = None


@dataclass
class Step:
    """What one page of a task gave: its records to keep, and new tasks if the rest was handed over."""

    batch: PageBatch
    handed_over: list[Task]


class Extraction:
    """The records of ``spec`` in ``window``, as batches, fetched by up to ``parallelism`` workers."""

    def __init__(
        self,
        client: KlaviyoClient,
        spec: TableSpec,
        window: TimeWindow | None,
        *,
        page_size: int | None,
        parallelism: int,
        start_in_flight: int | None = None,
        stats: ClientStats,
        now: datetime,
        transform: Callable[[PageBatch], Any] | None = None,
        read: Callable[[bytes], RawPage] | None = None,
        expect: Callable[[int], None] | None = None,
    ) -> None:
        self.client = client
        self.spec = spec
        self.page_size = page_size
        self.parallelism = workers_for(spec, parallelism)
        self.stats = stats
        self.now = now
        self.transform = transform
        self.read = read
        #: Told once how many records the window seems to hold (from the density of its first page).
        self.expect = expect
        self.sorted = window is not None and spec.server_side_window
        #: Records a full page holds (None: the endpoint does not take a page size).
        self.full_page = spec.page_size(page_size)
        variants = spec.filter_variants or (None,)
        self.tasks = [Task(window, v) for v in variants]
        self._lock = threading.Lock()
        # Two conditions on the one lock, so a freed request slot wakes one waiter for a slot, not
        # every worker (with 40 workers, waking all cost ~8% of this process's CPU).
        self._slot_freed = threading.Condition(self._lock)
        self._work_queued = threading.Condition(self._lock)
        self._idle = 0
        self._pending: deque[Task] = deque()
        self._processing = 0  # pages received and not yet handed on
        self._in_flight = 0  # requests started and not yet returned
        # Requests allowed in flight (see ``_acquire_request``).
        self._window = min(self.parallelism, start_in_flight or START_IN_FLIGHT)

    # -- one task --------------------------------------------------------------------------------

    def params(self, task: Task) -> dict[str, str]:
        params = self.client.base_params(self.spec, self.page_size)
        exprs = [task.variant] if task.variant else []
        if task.window is not None:
            exprs += window_filter(self.spec, task.window)
        filter_expr = combine_filters(exprs)
        if filter_expr:
            params["filter"] = filter_expr
        if self.sorted and self.spec.incremental_key:
            params["sort"] = self.spec.incremental_key
        return params

    def run_task(self, task: Task) -> Iterator[Step]:
        """Page through one task; the last step may hand the rest of its window to other workers."""
        # Keys up to ``floor`` were handed on by earlier pages of this task: the rest of the window may
        # be handed over only from a key above it, or records tied on the key across two pages
        # (many profiles share one ``updated``) would be fetched twice.
        floor = task.window.start if task.window is not None else None
        for page in self.client.iter_pages(self.spec, self.params(task), self.stats, self.read):
            step, last, floor = self._step(task, page, floor)
            # Nothing of this page may stay referenced from this frame while the next request waits.
            del page
            yield step
            del step
            if last:
                return

    def _step(self, task: Task, page: RawPage, floor: datetime | None) -> tuple[Step, bool, datetime | None]:
        """What one page gives, whether it ends the task, and the highest key handed on so far."""
        window = task.window
        if window is None:
            return Step(PageBatch(page), []), False, floor
        keys = [key_value(k) for k in page.keys]
        kept = [i for i, key in enumerate(keys) if self._in_window(key, window)]
        if not self.sorted:
            return Step(self._batch(page, kept), []), False, floor
        dated = [key for key in keys if key is not None]
        last = max(dated) if dated else None
        if last is not None and last >= window.end:
            return Step(self._batch(page, kept), []), True, floor  # sorted: nothing further is inside
        if self.expect is not None and page.next and last is not None:
            expect, self.expect = self.expect, None  # once, from the first page that tells
            expect(len(dated) + self._expected(dated, TimeWindow(last, window.end)))
        wanted = self._wanted()
        if page.next and wanted and last is not None and (floor is None or last > floor):
            rest = TimeWindow(last, window.end)
            parts = min(wanted + 1, self._pieces(dated, rest))
            if rest.duration >= MIN_SPLIT_SPAN and parts > 1:
                # Records on ``last`` itself are left to the new tasks.
                before = [i for i in kept if keys[i] is None or keys[i] < last]
                pieces = [Task(w, task.variant) for w in rest.split(parts)]
                return Step(self._batch(page, before), pieces), True, floor
        if last is not None and (floor is None or last > floor):
            floor = last
        return Step(self._batch(page, kept), []), False, floor

    @staticmethod
    def _expected(dated: list[datetime], rest: TimeWindow) -> int:
        """Records ``rest`` holds at the density of a page whose records have the keys ``dated``
        (unbounded when they span no time)."""
        span = (max(dated) - min(dated)).total_seconds()
        if span <= 0:
            return UNBOUNDED
        return int((len(dated) - 1) / span * rest.duration.total_seconds())

    def _pieces(self, dated: list[datetime], rest: TimeWindow) -> int:
        """Pieces of :data:`MIN_TASK_PAGES` full pages that ``rest`` holds (see :meth:`_expected`);
        of one full page when the workers would get through it in :data:`MIN_TASK_PAGES` rounds anyway.

        The second case is the end of every window and all of a small one (40,000 events: 2.3 ->
        1.4 s at 80 ms + 0.25 ms a record, for at most one request more per idle worker): there
        latency rounds, not requests, decide the time.
        """
        pages = self._expected(dated, rest) // (self.full_page or len(dated))
        return pages if pages <= self.parallelism * MIN_TASK_PAGES else pages // MIN_TASK_PAGES

    @staticmethod
    def _batch(page: RawPage, kept: list[int]) -> PageBatch:
        return PageBatch(page, None if len(kept) == page.size else kept)

    def _in_window(self, key: datetime | None, window: TimeWindow) -> bool:
        # Records without an incremental key belong to the window holding "now".
        return (self.now if key is None else key) in window

    def _wanted(self) -> int:
        """How many workers wait for work no queued task will give them (0 when single-threaded)."""
        with self._lock:
            return max(0, self._idle - len(self._pending))

    # -- all tasks -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        if self.parallelism == 1 or not self.sorted:
            yield from self._serial()
        else:
            yield from self._concurrent()

    def _serial(self) -> Iterator[Any]:
        pending = deque(self.tasks)
        while pending:
            for step in self.run_task(pending.popleft()):
                pending.extend(step.handed_over)
                self._count(step.batch)
                yield self._hand_on(step.batch)

    # Requests in flight follow the CPU: a parsed page is about ten times the size of its Arrow
    # rows, and when responses arrive faster than this process turns them into rows, requests
    # started anyway only add parsed pages waiting for the CPU (memory grows with the workers, not
    # the throughput). So requests in flight plus pages in the works stay under an allowance that
    # starts at START_IN_FLIGHT, grows by one whenever a page is handed on with no other page in
    # the works, and shrinks by one when pages queue for the CPU. A caller whose pages are decoded
    # elsewhere (by worker processes) may start it higher: its pages cost this process little.

    def _acquire_request(self, cancelled: threading.Event) -> None:
        with self._lock:
            while self._in_flight + self._processing >= self._window and not cancelled.is_set():
                self._slot_freed.wait()
            self._in_flight += 1

    def _release_request(self, *, received: bool) -> None:
        with self._lock:
            self._in_flight -= 1
            if received:
                self._processing += 1  # the slot stays taken until the page is handed on
            else:
                self._slot_freed.notify()

    def _settle(self, cancelled: threading.Event) -> None:
        """A page was handed on: adjust the requests allowed in flight (see above)."""
        with self._lock:
            self._processing -= 1
            if self._processing >= MAX_PROCESSING:
                self._window = max(MIN_IN_FLIGHT, self._window - 1)
            elif self._processing == 0:
                self._window = min(self.parallelism, self._window + 1)
            self._slot_freed.notify(2)  # this page's slot, and one more if the allowance grew

    def _wake_all(self) -> None:
        with self._lock:
            self._slot_freed.notify_all()
            self._work_queued.notify_all()

    def _hand_on(self, batch: PageBatch) -> Any:
        """What is handed on for one page: the batch, or ``transform(batch)`` made in the worker
        (an Arrow table is a fraction of the size of the page it replaces)."""
        return batch if self.transform is None else self.transform(batch)

    def _count(self, batch: PageBatch) -> None:
        self.stats.add(records=batch.size)

    def _concurrent(self) -> Iterator[Any]:
        # Few finished pages wait for the consumer: memory is bounded by the workers, not the window.
        out: queue.Queue[Any] = queue.Queue(maxsize=OUT_QUEUE_PAGES)
        pending = self._pending
        pending.extend(self.tasks)
        busy = 0
        cancelled = threading.Event()
        limit_malloc_arenas()  # before the workers' first allocation (see rows.MALLOC_ARENAS)

        def next_task() -> Task | None:
            nonlocal busy
            with self._lock:
                self._idle += 1
                while not pending and busy > 0 and not cancelled.is_set():
                    self._work_queued.wait()
                self._idle -= 1
                if cancelled.is_set() or not pending:
                    self._work_queued.notify_all()  # no more work: every idle worker ends
                    return None
                busy += 1
                return pending.popleft()

        def worker() -> None:
            nonlocal busy
            try:
                while (task := next_task()) is not None:
                    try:
                        steps = self.run_task(task)
                        while True:
                            self._acquire_request(cancelled)
                            step = None  # bound even when next() raises (the error must surface)
                            try:
                                step = next(steps, None)
                            finally:
                                self._release_request(received=step is not None)
                            if step is None:
                                break
                            if cancelled.is_set():
                                return
                            if step.handed_over:
                                with self._lock:
                                    pending.extend(step.handed_over)
                                    self._work_queued.notify(len(step.handed_over))
                            self._count(step.batch)
                            batch = self._hand_on(step.batch)
                            del step
                            out.put(batch)
                            del batch
                            self._settle(cancelled)
                    finally:
                        with self._lock:
                            busy -= 1
                            if busy == 0:
                                self._work_queued.notify_all()  # the idle may find nothing left
            except BaseException as exc:  # handed to the consumer, which raises it
                cancelled.set()
                self._wake_all()
                out.put(exc)
            finally:
                out.put(None)

        threads = [
            threading.Thread(target=worker, name=f"klaviyo-{self.spec.name}-{i}", daemon=True)
            for i in range(self.parallelism)
        ]
        for thread in threads:
            thread.start()
        finished = 0
        try:
            while finished < len(threads):
                item = out.get()
                if item is None:
                    finished += 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            cancelled.set()
            self._wake_all()
            # Drain so workers blocked on a full queue can see the cancellation and exit.
            while any(t.is_alive() for t in threads):
                try:
                    out.get(timeout=0.05)
                except queue.Empty:
                    continue
