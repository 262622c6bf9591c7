"""Decoders turn a page's body into rows, in the fetching threads that received it.

One interface, :class:`Decoder`, with two implementations: :class:`LocalDecoder` decodes in the
run's process; :class:`ProcessDecoder` hands pages to decode processes (``decode_processes``) once
a table proves large, and decodes locally until they are up (or if they all die). Extraction calls
:meth:`~Decoder.read` on each body (it needs the page's keys and ``links.next``) and
:meth:`~Decoder.rows` on each page's kept records; every method is thread-safe.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol, TypeVar

import pyarrow as pa

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.decode_processes import DecodeProcesses
from omniload_assets.klaviyo.pages import PageBatch, RawPage, read_page
from omniload_assets.klaviyo.rows import RowBuilder

T_co = TypeVar("T_co", covariant=True)

#: Rows a table decodes (or is expected to hold) before its pages go to decode processes
#: (starting one costs ~0.5 s of CPU).
PROCESSES_AFTER_ROWS = 20_000
#: Most decode processes a table gets by default: two keep up with the events endpoint's limits.
MAX_DEFAULT_PROCESSES = 2


def default_processes() -> int:
    """Decode processes when not configured: one fewer than the CPUs (the run's process needs
    one), at least one, at most :data:`MAX_DEFAULT_PROCESSES`; none on a single CPU."""
    cpus = os.cpu_count() or 1
    return 0 if cpus < 2 else min(MAX_DEFAULT_PROCESSES, cpus - 1)


class Decoder(Protocol[T_co]):
    """Turns bodies into pages and pages into rows of type ``T_co`` (thread-safe)."""

    @property
    def offloaded(self) -> bool:
        """True when pages cost this process little (decoded elsewhere): extraction may then let
        every request go at once from the start."""
        ...

    def read(self, body: bytes) -> RawPage:
        """A page's body decoded (keys, ``links.next``, records); ``ValueError`` if it is not a page."""
        ...

    def rows(self, batch: PageBatch) -> T_co:
        """The rows of a page's kept records."""
        ...

    def expect(self, records: int) -> None:
        """A hint, once, of how many records the window seems to hold."""
        ...

    def close(self) -> None:
        """Stop whatever the decoder started (idempotent)."""
        ...


class LocalDecoder:
    """Decodes in the run's process: ``msgspec`` structs, else dicts, into Arrow rows."""

    offloaded = False
    #: Pages decoded in decode processes, and the sum of their peak RSS in MB (known once closed).
    pages_in_processes = 0
    peak_rss_mb = 0.0

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.builder = RowBuilder(spec)

    def read(self, body: bytes) -> RawPage:
        return read_page(self.spec, body)

    def rows(self, batch: PageBatch) -> pa.Table:
        return self.builder.page_table(batch)

    def expect(self, records: int) -> None:
        pass

    def column_types(self) -> dict[str, str]:
        """Every column seen so far with its DuckDB type (what staging records)."""
        return self.builder.column_types()

    def close(self) -> None:
        pass


class ProcessDecoder(LocalDecoder):
    """Decodes in ``processes`` decode processes once the table proves large: when
    ``after_rows`` rows were decoded or are expected, or from the start for an endpoint that serves
    that many within a second (events: 58,000/s), so its processes are up before its pages are."""

    def __init__(self, spec: TableSpec, processes: int, after_rows: int = PROCESSES_AFTER_ROWS) -> None:
        super().__init__(spec)
        self.processes = processes
        self.after_rows = after_rows
        self._lock = threading.Lock()
        self._rows = 0
        self._pool: DecodeProcesses | None = None
        self._closed = False
        if spec.ceiling >= after_rows:
            self.start()

    @property
    def offloaded(self) -> bool:
        return self._pool is not None

    def start(self) -> DecodeProcesses | None:
        """Start the decode processes now (pages go to them once they are up); None if closed."""
        with self._lock:
            if self._pool is None and not self._closed and self.processes > 0:
                self._pool = DecodeProcesses(self.spec, self.processes)
            return self._pool

    def read(self, body: bytes) -> RawPage:
        pool = self._pool
        if pool is not None and pool.ready:
            return pool.read(body)
        return read_page(self.spec, body)

    def rows(self, batch: PageBatch) -> pa.Table:
        table = self.builder.page_table(batch)
        with self._lock:
            self._rows += table.num_rows
            large = self._rows >= self.after_rows
        if large:
            self.start()
        return table

    def expect(self, records: int) -> None:
        if records >= self.after_rows:
            self.start()

    def close(self) -> None:
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            pool.close()
            self.pages_in_processes += pool.pages
            self.peak_rss_mb += pool.peak_rss_mb


def decoder_for(spec: TableSpec, processes: int | None = None) -> LocalDecoder:
    """The decoder of one table's run: decode processes unless ``processes`` is 0 (default:
    :func:`default_processes`)."""
    count = default_processes() if processes is None else processes
    return ProcessDecoder(spec, count) if count > 0 else LocalDecoder(spec)
