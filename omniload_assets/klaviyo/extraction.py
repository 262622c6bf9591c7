"""Windowed extraction: one table's records for a time window, fetched by concurrent workers.

A window is one *task*. Where the endpoint can filter and sort on the incremental key, a task pages
in ascending key order, stops as soon as it passes the window's end, and — whenever a worker sits
idle — hands the rest of its window (from the last key it has seen) to the idle workers as new
tasks. Dense stretches are thus split as finely as the workers need and sparse ones cost one request,
with no estimate to get wrong. Records exactly on the hand-over key are left to the new tasks, so
every record lands in exactly one task. Endpoints that cannot filter on the key are read whole and
windowed here.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.rows import incremental_value
from omniload_assets.klaviyo.windows import TimeWindow, combine_filters, window_filter

if TYPE_CHECKING:
    from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient

Record = dict[str, Any]

#: A remainder shorter than this is paged through rather than handed over.
MIN_SPLIT_SPAN = timedelta(seconds=2)


@dataclass(frozen=True)
class Task:
    """A query for one window (``None``: the whole listing) and one filter variant."""

    window: TimeWindow | None
    variant: str | None = None


@dataclass
class Step:
    """What one page of a task gave: records to keep, and new tasks if the rest was handed over."""

    records: list[Record]
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
        stats: ClientStats,
        now: datetime,
    ) -> None:
        self.client = client
        self.spec = spec
        self.page_size = page_size
        self.parallelism = max(1, parallelism)
        self.stats = stats
        self.now = now
        self.sorted = window is not None and spec.server_side_window
        variants = spec.filter_variants or (None,)
        self.tasks = [Task(window, v) for v in variants]
        self._lock = threading.Condition()
        self._idle = 0
        self._pending: deque[Task] = deque()

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
        window = task.window
        for page in self.client.iter_pages(self.spec, self.params(task), self.stats):
            data: list[Record] = page.get("data") or []
            if window is None:
                yield Step(data, [])
                continue
            keyed = [(incremental_value(self.spec, r), r) for r in data]
            kept = [r for key, r in keyed if self._in_window(key, window)]
            if not self.sorted:
                yield Step(kept, [])
                continue
            keys = [key for key, _ in keyed if key is not None]
            last = max(keys) if keys else None
            if last is not None and last >= window.end:
                yield Step(kept, [])  # sorted: nothing further can fall inside the window
                return
            has_next = bool((page.get("links") or {}).get("next"))
            wanted = self._wanted()
            if has_next and wanted and last is not None and last > window.start:
                rest = TimeWindow(last, window.end)
                if rest.duration >= MIN_SPLIT_SPAN:
                    before = [r for key, r in keyed if key is not None and key < last and key in window]
                    undated = [r for key, r in keyed if key is None and self._in_window(key, window)]
                    pieces = [Task(w, task.variant) for w in rest.split(wanted + 1)]
                    yield Step(before + undated, pieces)
                    return
            yield Step(kept, [])

    def _in_window(self, key: datetime | None, window: TimeWindow) -> bool:
        # Records without an incremental key belong to the window holding "now".
        return (self.now if key is None else key) in window

    def _wanted(self) -> int:
        """How many workers wait for work no queued task will give them (0 when single-threaded)."""
        with self._lock:
            return max(0, self._idle - len(self._pending))

    # -- all tasks -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[list[Record]]:
        if self.parallelism == 1 or not self.sorted:
            yield from self._serial()
        else:
            yield from self._concurrent()

    def _serial(self) -> Iterator[list[Record]]:
        pending = deque(self.tasks)
        while pending:
            for step in self.run_task(pending.popleft()):
                pending.extend(step.handed_over)
                self._count(step.records)
                yield step.records

    def _count(self, records: list[Record]) -> None:
        self.stats.add(records=len(records))

    def _concurrent(self) -> Iterator[list[Record]]:
        out: queue.Queue[list[Record] | BaseException | None] = queue.Queue(maxsize=self.parallelism * 4)
        pending = self._pending
        pending.extend(self.tasks)
        busy = 0
        cancelled = threading.Event()

        def next_task() -> Task | None:
            nonlocal busy
            with self._lock:
                self._idle += 1
                while not pending and busy > 0 and not cancelled.is_set():
                    self._lock.wait()
                self._idle -= 1
                if cancelled.is_set() or not pending:
                    self._lock.notify_all()
                    return None
                busy += 1
                return pending.popleft()

        def worker() -> None:
            nonlocal busy
            try:
                while (task := next_task()) is not None:
                    try:
                        for step in self.run_task(task):
                            if cancelled.is_set():
                                return
                            if step.handed_over:
                                with self._lock:
                                    pending.extend(step.handed_over)
                                    self._lock.notify_all()
                            self._count(step.records)
                            out.put(step.records)
                    finally:
                        with self._lock:
                            busy -= 1
                            self._lock.notify_all()
            except BaseException as exc:  # handed to the consumer, which raises it
                cancelled.set()
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
            with self._lock:
                self._lock.notify_all()
            # Drain so workers blocked on a full queue can see the cancellation and exit.
            while any(t.is_alive() for t in threads):
                try:
                    out.get(timeout=0.05)
                except queue.Empty:
                    continue
