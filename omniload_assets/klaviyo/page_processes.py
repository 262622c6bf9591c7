"""Pages decoded into Arrow rows by worker processes, so one interpreter's GIL does not cap a run.

Decoding a page of 1,000 events and building its columns costs ~9 ms of CPU under the GIL, about
as much again as fetching it; with every page decoded in the run's process, that process (one core
at most) capped a backfill at ~30,000 events/s. Here a pool of ``spawn``-ed processes, each with its
own ``RowBuilder``, turns bodies into rows; the run's process only fetches, reads each page's keys
and ``links.next`` from the answer, and stages the rows. Rows come back as an Arrow IPC stream (one
``bytes`` object, read without copying). Starting a process costs about a second of CPU, so a stager
starts them only once a table proves large (see ``staging.ParquetStager``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import types
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.pages import PageBatch, RawPage, read_page
from omniload_assets.klaviyo.rows import RowBuilder

log = logging.getLogger(__name__)

#: Most worker processes a table gets by default: two keep up with the events endpoint's limits.
MAX_DEFAULT_PROCESSES = 2


def default_processes() -> int:
    """Decoding processes when not configured: one fewer than the CPUs (the run's process needs
    one), at least one, at most :data:`MAX_DEFAULT_PROCESSES`; none on a single CPU."""
    cpus = os.cpu_count() or 1
    return 0 if cpus < 2 else min(MAX_DEFAULT_PROCESSES, cpus - 1)


# -- in the worker processes ---------------------------------------------------------------------

_builder: RowBuilder | None = None


def _start_worker(spec: TableSpec) -> None:
    global _builder
    _builder = RowBuilder(spec)


def _ready() -> None:
    """A no-op: its result says a worker has started (imports done, builder made)."""


def _decode(body: bytes) -> tuple[list[Any], Any, bytes, dict[str, str]]:
    """A page's raw keys, ``links.next``, rows (Arrow IPC stream) and the extra columns seen so far."""
    assert _builder is not None, "worker started without its table"
    page = read_page(_builder.spec, body)
    table = _builder.page_table(PageBatch(page))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return page.keys, page.next, sink.getvalue().to_pybytes(), dict(_builder.extra_columns)


# -- in the run's process ------------------------------------------------------------------------


@contextmanager
def _no_main_script() -> Iterator[None]:
    """Hide the ``__main__`` script from ``spawn``: its workers would re-import it, and for
    ``dagster`` that is all of Dagster (a second and some 150 MB a worker) they do not need."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, no __spec__
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _peak_rss_mb(pid: int) -> float:
    """A process's peak resident set (Linux ``VmHWM``) in MB; 0 where unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


class PageProcesses:
    """A pool of processes decoding the pages of one table. Thread-safe."""

    def __init__(self, spec: TableSpec, processes: int) -> None:
        self.spec = spec
        self._pool = ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("spawn"),  # never fork a process running threads
            initializer=_start_worker,
            initargs=(spec,),
        )
        with _no_main_script():  # the workers start here, one per submit
            self._started: list[Future[None]] = [self._pool.submit(_ready) for _ in range(processes)]
        self._broken = False
        self._closed = False
        self._count_lock = threading.Lock()
        #: Pages the workers decoded.
        self.pages = 0
        #: Sum of the workers' peak RSS in MB, known once :meth:`close` has run (Linux).
        self.peak_rss_mb = 0.0

    @property
    def ready(self) -> bool:
        """True once every worker has started (until then pages are better decoded in-process)."""
        return not self._broken and not self._closed and all(f.done() for f in self._started)

    def wait_started(self, timeout: float | None = None) -> None:
        """Block until every worker has started (or failed to)."""
        wait(self._started, timeout)

    def read(self, body: bytes) -> RawPage:
        """The page decoded by a worker; in this process if the pool broke (a worker was killed).
        Raises what ``read_page`` raises for a body that is not a JSON:API page."""
        if not self._broken:
            try:
                keys, next_link, stream, columns = self._pool.submit(_decode, body).result()
            except BrokenProcessPool as exc:
                if not self._broken:
                    log.warning("a page-decoding process died (%s); decoding in the run's process", exc)
                self._broken = True
            else:
                with self._count_lock:
                    self.pages += 1
                table = pa.ipc.open_stream(stream).read_all()
                return RawPage(body, keys, next_link, None, table=table, extra_columns=columns)
        return read_page(self.spec, body)

    def close(self) -> None:
        """Stop the workers (pages queued and not started are dropped); note their peak RSS."""
        self._closed = True
        self.peak_rss_mb = sum(_peak_rss_mb(pid) for pid in list(self._pool._processes or {}))
        self._pool.shutdown(wait=True, cancel_futures=True)
