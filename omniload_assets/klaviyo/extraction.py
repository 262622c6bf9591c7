"""Windowed extraction: plans one table's requests for a time window and drives them.

``extract(client, spec, window, decoder, sink)`` pages through the window with concurrent workers
(threads), has each page decoded into rows by ``decoder`` in the worker that fetched it, and hands
the rows to ``sink`` in the caller's thread. It depends on the client (one request, one cursor
chain); the client knows nothing of it.

A window is one *task*. Where the endpoint can filter and sort on the incremental key, a task pages
in ascending key order, stops as soon as it passes the window's end, and — whenever a worker sits
idle — hands the rest of its window (from the last key it has seen) to the idle workers as new
tasks, as many as the idle workers and no more than the page's density says hold several full pages
each. Dense stretches are thus split as finely as the workers need and sparse ones cost one request.
Records exactly on the hand-over key are left to the new tasks, so every record lands in exactly one
task. Endpoints that cannot filter on the key are read whole and windowed here.

As pages are handed on, the extraction keeps what part of the window is completely fetched
(:meth:`Extraction.completed`): a sorted task has everything below the highest key of its last
page, any task all of its window once its last page is in. A long run commits those parts as it
goes, and a resumed run is given them back (``done``) and plans tasks for the rest only.

A child table (``spec.parent``) is read whole per parent id: one task per parent, its path the
endpoint's template filled with the id, all tasks on the concurrent workers and all paced together
by the endpoint's one rate limit. A parent Klaviyo answers 404 for (deleted since the parent table
was loaded) gives no rows: its children are gone with it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets.klaviyo.decoders import Decoder
from omniload_assets.klaviyo.errors import KlaviyoAPIError
from omniload_assets.klaviyo.intervals import intersect, normalise, subtract
from omniload_assets.klaviyo.pages import PageBatch, RawPage
from omniload_assets.klaviyo.rows import key_value
from omniload_assets.klaviyo.windows import TimeWindow, combine_filters, window_filter
from omniload_assets.process_tuning import limit_malloc_arenas

T = TypeVar("T")
log = logging.getLogger(__name__)

#: A remainder shorter than this is paged through rather than handed over.
MIN_SPLIT_SPAN = timedelta(seconds=2)
#: A piece handed over is expected to hold at least this many full pages (from the density of the
#: page that hands it over): every task ends on a part-filled page, so many small tasks cost
#: requests (and CPU) for the same records.
MIN_TASK_PAGES = 4
UNBOUNDED = 1 << 30

#: Finished pages that may wait for the consumer (each worker may hold one more while it waits).
OUT_QUEUE_PAGES = 4
#: Pages waiting for the CPU at once that shrink the requests allowed in flight (see ``InFlightLimit``).
MAX_PROCESSING = 2
#: Requests allowed in flight at the start (unless pages are decoded elsewhere), and at least.
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


def extract(
    client: KlaviyoClient,
    spec: TableSpec,
    window: TimeWindow | None,
    decoder: Decoder[T],
    sink: Callable[[T], None],
    *,
    page_size: int | None = None,
    parallelism: int = 1,
    stats: ClientStats | None = None,
    now: datetime | None = None,
    parents: Sequence[str] | None = None,
) -> ClientStats:
    """Every record of ``spec`` whose incremental key lies in ``window`` (``None``: the whole
    listing), decoded page by page by ``decoder`` and handed to ``sink`` in this thread; returns
    the counters. Records without an incremental key belong to the window holding ``now``. A child
    table is read for each of ``parents`` (its parent table's ids)."""
    extraction = Extraction(
        client,
        spec,
        window,
        decoder,
        page_size=page_size,
        parallelism=parallelism,
        stats=stats,
        now=now,
        parents=parents,
    )
    for rows in extraction:
        sink(rows)
    return extraction.stats


@dataclass(frozen=True)
class Task:
    """A query for one window (``None``: the whole listing), one filter variant and, for a child
    table, one parent id."""

    window: TimeWindow | None
    variant: str | None = None
    parent: str | None = None


@dataclass
class Step:
    """What one page of a task gave: its records to keep, and new tasks if the rest was handed over."""

    batch: PageBatch
    handed_over: list[Task]
    #: Everything of the task's window below this is fetched once this page is handed on (None: no
    #: progress to claim).
    reach: datetime | None = None
    #: What of the task's window this page completes (set by ``run_task`` from ``reach``).
    covered: TimeWindow | None = None


def plan_tasks(
    spec: TableSpec,
    window: TimeWindow | None,
    parents: Sequence[str] | None,
    done: Sequence[TimeWindow] = (),
) -> list[Task]:
    """The first tasks: one per filter variant and part of ``window`` not ``done``, for a child
    table one per parent id and variant. ``ValueError`` for parents given to a table without a
    parent, or missing or a window given for a child table (it is read whole), and for ``done``
    parts of a window the server cannot filter on (each part would cost a whole listing)."""
    variants = spec.filter_variants or (None,)
    if done and (window is None or not spec.server_side_window):
        raise ValueError(f"{spec.name} cannot skip parts of its window: the API cannot filter on them")
    if spec.parent is None:
        if parents is not None:
            raise ValueError(f"{spec.name} has no parent table: it takes no parent ids")
        parts = [window] if window is None else subtract(window, done)
        return [Task(part, v) for v in variants for part in parts]
    if parents is None or window is not None:
        raise ValueError(f"{spec.name} is read whole for each {spec.parent} id: give the ids and no window")
    return [Task(None, v, parent) for parent in dict.fromkeys(parents) for v in variants]


class Extraction(Generic[T]):
    """The rows of ``spec`` in ``window`` (of a child table: of each of ``parents``), one item per
    page, fetched by up to ``parallelism`` workers (see :func:`extract`)."""

    def __init__(
        self,
        client: KlaviyoClient,
        spec: TableSpec,
        window: TimeWindow | None,
        decoder: Decoder[T],
        *,
        page_size: int | None = None,
        parallelism: int = 1,
        stats: ClientStats | None = None,
        now: datetime | None = None,
        parents: Sequence[str] | None = None,
        done: Sequence[TimeWindow] = (),
    ) -> None:
        self.client = client
        self.spec = spec
        self.decoder = decoder
        self.page_size = page_size
        self.parallelism = workers_for(spec, parallelism)
        self.stats = stats if stats is not None else ClientStats()
        self.now = now or datetime.now(UTC)
        self.sorted = window is not None and spec.server_side_window
        #: Records a full page holds (None: the endpoint does not take a page size).
        self.full_page = spec.page_size(page_size)
        self.window = window
        self.tasks = plan_tasks(spec, window, parents, done)
        # Per filter variant, what is fetched and handed on (a day is complete once every variant has it).
        self._fetched: dict[str | None, list[TimeWindow]] = {
            v: normalise(done) for v in spec.filter_variants or (None,)
        }  #: Parents Klaviyo no longer knows (404), whose children were skipped.
        self.gone: list[str] = []
        self._expect_told = False  # the decoder hears once how many records the window holds
        self._queue = TaskQueue(self.tasks)
        # Pages decoded elsewhere cost this process little: every request may go at once.
        self._limit = InFlightLimit(
            self.parallelism, self.parallelism if decoder.offloaded else START_IN_FLIGHT
        )
        self._cancelled = threading.Event()

    # -- one task --------------------------------------------------------------------------------

    def params(self, task: Task) -> dict[str, str]:
        params = self.spec.request_params(self.page_size)
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
        reached = floor
        for page in self._pages(task):
            step, last, floor = self._step(task, page, floor)
            if step.reach is not None and reached is not None and step.reach > reached:
                step.covered, reached = TimeWindow(reached, step.reach), step.reach
            # Nothing of this page may stay referenced from this frame while the next request waits.
            del page
            yield step
            del step
            if last:
                return

    def _pages(self, task: Task) -> Iterator[RawPage]:
        """The pages of one task; none (from the 404 on) for a parent Klaviyo no longer knows."""
        path = self.spec.request_path(task.parent)
        pages = self.client.iter_pages(self.spec, self.params(task), self.stats, self.decoder.read, path=path)
        if task.parent is None:
            yield from pages
            return
        try:
            yield from pages
        except KlaviyoAPIError as exc:
            if exc.status != 404:
                raise
            self.gone.append(task.parent)
            log.info(
                "%s: %s %s is gone (404): it has no children", self.spec.name, self.spec.parent, task.parent
            )

    def _step(self, task: Task, page: RawPage, floor: datetime | None) -> tuple[Step, bool, datetime | None]:
        """What one page gives, whether it ends the task, and the highest key handed on so far."""
        window = task.window
        if window is None:
            return Step(PageBatch(page, parent=task.parent), []), False, floor
        keys = [key_value(k) for k in page.keys]
        kept = [i for i, key in enumerate(keys) if self._in_window(key, window)]
        if not self.sorted:  # the listing is read whole: the window is complete with its last page
            return Step(self._batch(page, kept), [], None if page.next else window.end), False, floor
        dated = [key for key in keys if key is not None]
        last = max(dated) if dated else None
        if last is not None and last >= window.end:
            # Sorted: nothing further is inside.
            return Step(self._batch(page, kept), [], window.end), True, floor
        if not self._expect_told and page.next and last is not None:
            self._expect_told = True  # once, from the first page that tells
            self.decoder.expect(len(dated) + self._expected(dated, TimeWindow(last, window.end)))
        wanted = self._wanted()
        if page.next and wanted and last is not None and (floor is None or last > floor):
            rest = TimeWindow(last, window.end)
            parts = min(wanted + 1, self._pieces(dated, rest))
            if rest.duration >= MIN_SPLIT_SPAN and parts > 1:
                # Records on ``last`` itself are left to the new tasks.
                before = [i for i in kept if keys[i] is None or keys[i] < last]
                pieces = [Task(w, task.variant) for w in rest.split(parts)]
                return Step(self._batch(page, before), pieces, last), True, floor
        if last is not None and (floor is None or last > floor):
            floor = last
        # Sorted: every key below this page's last is in (ties on it may follow on the next page).
        reach = window.end if not page.next else last
        return Step(self._batch(page, kept), [], reach), False, floor

    def _wanted(self) -> int:
        """How many workers wait for work no queued task will give them (0 when single-threaded)."""
        return self._queue.wanted()

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

    def _rows(self, batch: PageBatch) -> T:
        """The rows of one page, made in the worker that fetched it (an Arrow table is a fraction of
        the size of the page it replaces)."""
        self.stats.add(records=batch.size)
        return self.decoder.rows(batch)

    def completed(self) -> list[TimeWindow]:
        """The parts of the window every record of which has been handed on (``done`` included)."""
        if self.window is None:
            return []
        parts = [self.window]
        for fetched in self._fetched.values():
            parts = intersect(parts, fetched)
        return parts

    def _handed_on(self, variant: str | None, covered: TimeWindow | None) -> None:
        """The rows of a page were handed on: what it completed counts as fetched."""
        if covered is not None:
            self._fetched[variant] = normalise([*self._fetched[variant], covered])

    # -- all tasks -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[T]:
        # A child's parents are many tasks from the start: they go to the workers like a window's pieces.
        if self.parallelism == 1 or not (self.sorted or self.spec.parent is not None):
            yield from self._serial()
        else:
            yield from self._concurrent()

    def _serial(self) -> Iterator[T]:
        pending = deque(self.tasks)
        while pending:
            task = pending.popleft()
            for step in self.run_task(task):
                pending.extend(step.handed_over)
                yield self._rows(step.batch)
                self._handed_on(task.variant, step.covered)

    def _concurrent(self) -> Iterator[T]:
        # Few finished pages wait for the consumer: memory is bounded by the workers, not the window.
        out: queue.Queue[Any] = queue.Queue(maxsize=OUT_QUEUE_PAGES)
        limit_malloc_arenas()  # before the workers' first allocation (see process_tuning)
        threads = [
            threading.Thread(
                target=self._work, args=(out,), name=f"klaviyo-{self.spec.name}-{i}", daemon=True
            )
            for i in range(self.parallelism)
        ]
        for thread in threads:
            thread.start()
        finished = 0
        error: BaseException | None = None
        try:
            while finished < len(threads):
                item = out.get()
                if item is None:
                    finished += 1
                elif isinstance(item, BaseException):
                    # Raised once every worker has stopped: the pages they had in flight still count
                    # (a failed run commits what is complete).
                    error = error or item
                else:
                    rows, variant, covered = item
                    del item
                    yield rows
                    del rows
                    self._handed_on(variant, covered)
            if error is not None:
                raise error
        finally:
            self._cancel()
            # Drain so workers blocked on a full queue can see the cancellation and exit.
            while any(t.is_alive() for t in threads):
                try:
                    out.get(timeout=0.05)
                except queue.Empty:
                    continue

    def _cancel(self) -> None:
        self._cancelled.set()
        self._limit.wake_all()
        self._queue.wake_all()

    def _work(self, out: queue.Queue[Any]) -> None:
        """One worker: run tasks until none is left, putting each page's rows on ``out``, then
        ``None``; an error goes on ``out`` too (the consumer raises it) and cancels the rest: the
        other workers hand on the page they are fetching and stop."""
        try:
            while (task := self._queue.take(self._cancelled)) is not None:
                try:
                    self._run_concurrently(task, out)
                finally:
                    self._queue.done()
        except BaseException as exc:  # handed to the consumer, which raises it
            self._cancel()
            out.put(exc)
        finally:
            out.put(None)

    def _run_concurrently(self, task: Task, out: queue.Queue[Any]) -> None:
        steps = self.run_task(task)
        while True:
            self._limit.acquire(self._cancelled)
            if self._cancelled.is_set():
                self._limit.release(received=False)
                return
            step = None  # bound even when next() raises (the error must surface)
            try:
                step = next(steps, None)
            finally:
                self._limit.release(received=step is not None)
            if step is None:
                return
            if not self._cancelled.is_set():
                self._queue.add(step.handed_over)
            item = (self._rows(step.batch), task.variant, step.covered)
            del step
            out.put(item)
            del item
            self._limit.settle()


class InFlightLimit:
    """How many requests may be in flight, following the CPU.

    A parsed page is about ten times the size of its Arrow rows, and when responses arrive faster
    than this process turns them into rows, requests started anyway only add parsed pages waiting
    for the CPU (memory grows with the workers, not the throughput). So requests in flight plus
    pages in the works stay under an *allowance* that starts at ``start`` (START_IN_FLIGHT, or every
    worker when pages are decoded elsewhere and cost this process little), grows by one whenever a
    page is handed on with no other page in the works, and shrinks by one when pages queue for the
    CPU, never below MIN_IN_FLIGHT nor above ``most``.
    """

    def __init__(self, most: int, start: int) -> None:
        self.most = most
        self.allowance = min(most, start)
        self.in_flight = 0  # requests started and not yet returned
        self.processing = 0  # pages received and not yet handed on
        # One waiter wakes per freed slot, not every worker (with 40 workers, waking all cost ~8% of
        # this process's CPU).
        self._slot_freed = threading.Condition()

    def acquire(self, cancelled: threading.Event) -> None:
        """Wait for a slot (or cancellation), then take it for one request."""
        with self._slot_freed:
            while self.in_flight + self.processing >= self.allowance and not cancelled.is_set():
                self._slot_freed.wait()
            self.in_flight += 1

    def release(self, *, received: bool) -> None:
        """A request returned; with a page (``received``) its slot stays taken until :meth:`settle`."""
        with self._slot_freed:
            self.in_flight -= 1
            if received:
                self.processing += 1
            else:
                self._slot_freed.notify()

    def settle(self) -> None:
        """A received page was handed on: free its slot and adjust the allowance."""
        with self._slot_freed:
            self.processing -= 1
            if self.processing >= MAX_PROCESSING:
                self.allowance = max(MIN_IN_FLIGHT, self.allowance - 1)
            elif self.processing == 0:
                self.allowance = min(self.most, self.allowance + 1)
            self._slot_freed.notify(2)  # this page's slot, and one more if the allowance grew

    def wake_all(self) -> None:
        with self._slot_freed:
            self._slot_freed.notify_all()


class TaskQueue:
    """Tasks waiting for a worker, and how many workers wait for one."""

    def __init__(self, tasks: list[Task]) -> None:
        self._pending: deque[Task] = deque(tasks)
        self._idle = 0  # workers waiting for a task
        self._busy = 0  # workers running a task
        self._work_queued = threading.Condition()

    def take(self, cancelled: threading.Event) -> Task | None:
        """The next task; None once none is left and no running task can hand one over."""
        with self._work_queued:
            self._idle += 1
            while not self._pending and self._busy > 0 and not cancelled.is_set():
                self._work_queued.wait()
            self._idle -= 1
            if cancelled.is_set() or not self._pending:
                self._work_queued.notify_all()  # no more work: every idle worker ends
                return None
            self._busy += 1
            return self._pending.popleft()

    def add(self, tasks: list[Task]) -> None:
        if tasks:
            with self._work_queued:
                self._pending.extend(tasks)
                self._work_queued.notify(len(tasks))

    def done(self) -> None:
        """A worker finished its task."""
        with self._work_queued:
            self._busy -= 1
            if self._busy == 0:
                self._work_queued.notify_all()  # the idle may find nothing left

    def wanted(self) -> int:
        """How many workers wait for work no queued task will give them."""
        with self._work_queued:
            return max(0, self._idle - len(self._pending))

    def wake_all(self) -> None:
        with self._work_queued:
            self._work_queued.notify_all()
