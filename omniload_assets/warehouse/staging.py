"""Staging extracted rows as Parquet files, so no DuckDB lock is held while the API is slow.

Each stager's directory (in ``OMNILOAD_STAGING_DIR``, else the system temp dir) is named after the
process that owns it: ``omniload-<table>-<pid>-<where>-<start>-<random>``, ``where`` telling the
machine, boot and PID namespace, ``start`` when the process started (so a reused PID is not taken
for the owner). A run removes it when done; a run killed before that (``kill -9``, OOM) leaves it,
and the next stager removes the directories whose owner is dead, never a live process's, nor those
of another machine or container (whose processes it cannot see).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.page_processes import PageProcesses, default_processes
from omniload_assets.klaviyo.pages import PageBatch, RawPage, read_page
from omniload_assets.klaviyo.rows import ROWS_POOL, RowBuilder, release_free_memory
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets.warehouse.connection import WarehouseError

if TYPE_CHECKING:
    from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient

#: Rows per staged file: large enough for fast bulk loads, small enough to bound memory.
ROWS_PER_FILE = 20_000
#: Staged files are read once, by the write: LZ4 costs the run's process less than half of zstd's
#: CPU (1.9 against 4.1 ms a page of 1,000 events) for files three times larger (~150 MB per
#: million events).
STAGING_COMPRESSION = "lz4"
#: Rows staged after which ``finish`` runs a full garbage collection (see there).
COLLECT_AFTER_ROWS = 200_000
#: Rows a table stages (or expects) before pages go to decoding processes (starting one costs
#: ~0.5 s of CPU).
PROCESSES_AFTER_ROWS = 20_000
#: The variable that says where to stage, named in errors.
STAGING_DIR_ENV = "OMNILOAD_STAGING_DIR"
#: A stager's directory: ``omniload-<table>-<pid>-<host><boot><pid namespace>-<start ticks>-<random>``.
_OWNED_DIR = re.compile(
    r"omniload-(?P<table>[a-z0-9_]+)-(?P<pid>[0-9]{1,10})-(?P<host>[0-9a-f]{8})(?P<boot>[0-9a-f]{8})"
    r"(?P<namespace>[0-9a-f]{8})-(?P<start>[0-9]{1,20})-[a-z0-9_]+",
    re.ASCII,
)
_UNKNOWN = "0" * 8

logger = logging.getLogger(__name__)


class StagingDirError(WarehouseError):
    """Rows cannot be staged where ``OMNILOAD_STAGING_DIR`` (or the temp dir) points."""


@dataclass(frozen=True)
class StagingOwner:
    """The process a staging directory belongs to, as its name records it."""

    pid: int
    host: str  # hash of the host name
    boot: str  # hash of the kernel's boot id (zeros: unknown)
    namespace: str  # hash of the PID namespace (zeros: unknown)
    start: int  # start time, clock ticks after boot (0: unknown)

    @property
    def tag(self) -> str:
        return f"{self.pid}-{self.host}{self.boot}{self.namespace}-{self.start}"

    @classmethod
    def current(cls) -> StagingOwner:
        """This process."""
        pid = os.getpid()
        return cls(pid, *_machine(), _process_start(pid) or 0)

    @classmethod
    def of_directory(cls, name: str) -> StagingOwner | None:
        """The owner a directory's name records; None for other names."""
        match = _OWNED_DIR.fullmatch(name)
        if match is None:
            return None
        return cls(int(match["pid"]), match["host"], match["boot"], match["namespace"], int(match["start"]))

    def is_dead(self) -> bool:
        """True only when this process surely runs no more: its PID is gone, reused (another start
        time) or a zombie, or the machine rebooted. Another machine's or container's: False."""
        host, boot, namespace = _machine()
        if self.host != host:
            return False
        if _UNKNOWN not in (self.boot, boot) and self.boot != boot:
            return True  # rebooted since: every process of that boot is gone
        if self.namespace != namespace:
            return False
        start = _process_start(self.pid)
        if start is None:
            return True
        return 0 not in (start, self.start) and start != self.start


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


@functools.cache
def _machine() -> tuple[str, str, str]:
    """Hashes of this host's name, its boot id and this process's PID namespace (zeros: unknown)."""
    try:
        boot = _digest(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    except OSError:
        boot = _UNKNOWN
    try:
        namespace = _digest(os.readlink("/proc/self/ns/pid"))
    except OSError:
        namespace = _UNKNOWN
    return _digest(socket.gethostname()), boot, namespace


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot; 0: unknown), or None if none runs."""
    if not 0 < pid < 2**31:  # no such process can exist (and os.kill would overflow)
        return None
    if os.name == "posix":
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # another user's: it exists
        except OSError:
            return 0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0  # no /proc (not Linux), or hidden: alive as far as we can tell
    fields = stat.rsplit(")", 1)[-1].split()  # after "pid (name)": the name may hold spaces
    if len(fields) < 20 or not fields[19].isdigit():
        return 0
    if fields[0] in {"Z", "X"}:
        return None  # a zombie: killed, not yet reaped
    return int(fields[19])


def _size_mb(path: str) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total / 1e6


def remove_stale_staging(base_dir: str | os.PathLike[str]) -> list[str]:
    """Remove the staging directories in ``base_dir`` whose owner process is dead (see
    :class:`StagingOwner`); return their paths. Never fails: a directory it cannot read or
    remove is left as it is."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(base_dir))
    except OSError:
        return removed
    for entry in entries:
        owner = StagingOwner.of_directory(entry.name)
        try:
            if owner is None or not entry.is_dir(follow_symlinks=False) or not owner.is_dead():
                continue
        except (OSError, ValueError):  # cannot tell: keep it
            continue
        size_mb = _size_mb(entry.path)
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            removed.append(entry.path)
            logger.info(
                "removed %s: staged by a run that died (PID %d), %.1f MB", entry.path, owner.pid, size_mb
            )
    return removed


def make_staging_dir(table: str, base_dir: str | None = None) -> str:
    """A new staging directory for ``table``, owned by this process, in ``base_dir`` (created if
    need be; default: the system temp dir), after removing the dead runs' directories there.
    A directory that cannot be used raises :class:`StagingDirError` naming ``OMNILOAD_STAGING_DIR``."""
    where = base_dir or "the system temp dir"
    try:
        base = Path(os.path.expanduser(base_dir)) if base_dir else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(base)
        prefix = f"omniload-{table}-{StagingOwner.current().tag}-"
        return tempfile.mkdtemp(prefix=prefix, dir=base)
    except OSError as exc:
        raise StagingDirError(
            f"cannot stage {table} in {where} ({exc.strerror or exc}); set {STAGING_DIR_ENV} to a "
            "writable directory with room for the extracted rows (~150 MB per million events)"
        ) from exc


@dataclass
class StagedTable:
    """What an asset hands the IO manager: the staged files of one table and how they came to be."""

    table: str
    directory: str
    files: list[str]
    column_types: dict[str, str]
    window: TimeWindow | None
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.stats.get("rows", 0))

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class ParquetStager:
    """Collects rows of one table and writes them out as Parquet files of ``ROWS_PER_FILE`` rows.

    Rows wait as Arrow tables (compact, columnar), never as Python dicts; pass :meth:`read` and
    :meth:`convert` to the client (``KlaviyoClient.iter_batches``) to have the fetching workers
    decode pages and build rows. Once ``processes_after_rows`` rows are staged (or :meth:`expect`
    says they will be), ``processes`` worker processes decode the pages instead
    (``page_processes``; default: ``default_processes()``, 0: never). :meth:`batches` wires it all.
    """

    def __init__(
        self,
        spec: TableSpec,
        base_dir: str | None = None,
        rows_per_file: int = ROWS_PER_FILE,
        *,
        processes: int | None = None,
        processes_after_rows: int = PROCESSES_AFTER_ROWS,
    ) -> None:
        self.spec = spec
        self.processes = default_processes() if processes is None else processes
        self.processes_after_rows = processes_after_rows
        self._decoders: PageProcesses | None = None
        #: Sum of the decoding processes' peak RSS (MB), once they have stopped; 0 if none ran.
        self.decoders_peak_rss_mb = 0.0
        self.pages_decoded_in_processes = 0
        self._rows_seen = 0
        self._expected_rows = 0
        self.builder = RowBuilder(spec)
        self.directory = make_staging_dir(spec.asset_name, base_dir)
        self.rows_per_file = rows_per_file
        self.files: list[str] = []
        self.rows_written = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def read(self, body: bytes) -> RawPage:
        """A page's body decoded: by the decoding processes once they run, else here (thread-safe)."""
        decoders = self._decoders
        if decoders is not None and decoders.ready:
            return decoders.read(body)
        return read_page(self.spec, body)

    @property
    def decoder_pids(self) -> list[int]:
        """Process ids of the running decoding processes (for monitoring)."""
        decoders = self._decoders
        return [] if decoders is None else [pid for pid in decoders.pids if pid is not None]

    def start_decoders(self) -> PageProcesses | None:
        """Start the decoding processes now (if ``processes`` allows any); pages go to them once
        they are up. Returns them (None without any)."""
        if self._decoders is None and self.processes:
            self._decoders = PageProcesses(self.spec, self.processes)
        return self._decoders

    def expect(self, records: int) -> None:
        """A hint that about ``records`` rows are coming (thread-safe): when that is at least
        ``processes_after_rows``, the next :meth:`add` starts the decoding processes."""
        self._expected_rows = max(self._expected_rows, records)

    def batches(
        self,
        client: KlaviyoClient,
        window: TimeWindow | None,
        *,
        page_size: int | None = None,
        parallelism: int = 1,
        stats: ClientStats | None = None,
    ) -> Iterator[pa.Table]:
        """The table's pages in ``window`` as row tables, read, converted and sized the stager's way
        (``KlaviyoClient.iter_batches`` with :meth:`read`, :meth:`convert` and :meth:`expect`); pass
        each to :meth:`add`.

        Whether a table is large is known from its first page, and decoding processes started then
        are up (~0.3 s) only after the pages that page hands over are back: decoded here meanwhile,
        they slow the start. So a table whose endpoint can serve ``processes_after_rows`` records
        within a second (events: 58,000/s) starts its processes with its first request (while it
        waits, on another CPU), and lets every worker's request go at once, as its pages cost this
        process little."""
        if self.spec.ceiling >= self.processes_after_rows:
            self.start_decoders()
        return client.iter_batches(
            self.spec,
            window,
            self.convert,
            read=self.read,
            expect=self.expect,
            page_size=page_size,
            parallelism=parallelism,
            start_in_flight=parallelism if self._decoders is not None else None,
            stats=stats,
        )

    def convert(self, batch: PageBatch) -> pa.Table:
        """One page's kept records as an Arrow table of rows (thread-safe)."""
        return self.builder.page_table(batch)

    def add(self, batch: PageBatch | pa.Table) -> None:
        """Add a page (a batch, or a table from :meth:`convert`); write a file when enough wait."""
        table = batch if isinstance(batch, pa.Table) else self.convert(batch)
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
            self._rows_seen += table.num_rows
        if max(self._rows_seen, self._expected_rows) >= self.processes_after_rows:
            self.start_decoders()
        if self._pending_rows >= self.rows_per_file:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        # Pages may differ in extra columns: missing ones become NULL (types never differ).
        table = pa.concat_tables(self._pending, promote_options="default", memory_pool=ROWS_POOL)
        path = str(Path(self.directory) / f"part-{len(self.files):06d}.parquet")
        try:
            pq.write_table(table, path, compression=STAGING_COMPRESSION)
        except OSError as exc:  # the disk is full, or the directory was removed under the run
            raise StagingDirError(
                f"cannot write staged rows of {self.spec.name} to {path} ({exc.strerror or exc}); "
                f"free space there or set {STAGING_DIR_ENV} to a writable directory with room for "
                "them (~150 MB per million events)"
            ) from exc
        self.files.append(path)
        self.rows_written += table.num_rows
        self._pending = []
        self._pending_rows = 0
        del table
        release_free_memory()  # every ROWS_PER_FILE rows: what the pages freed goes back to the OS

    def finish(self, window: TimeWindow | None, stats: dict[str, float]) -> StagedTable:
        self._stop_decoders()
        self.flush()
        # Before the write, what extraction freed goes back to the OS: Arrow's pool, the garbage of
        # the workers' reference cycles, and glibc's free heap (measured: a 1M-event run's peak,
        # which is the write's, 385 MB instead of 397-405 MB). The full collection walks every
        # object in the process, Dagster's too (0.2 s, 3 s of a 15-table run): only after a large
        # extraction, whose garbage it is worth.
        ROWS_POOL.release_unused()
        if self.rows_written >= COLLECT_AFTER_ROWS:
            gc.collect()
        release_free_memory()
        return StagedTable(
            table=self.spec.name,
            directory=self.directory,
            files=list(self.files),
            column_types=self.builder.column_types(),
            window=window,
            stats={
                **stats,
                "rows": self.rows_written,
                "pages_decoded_in_processes": self.pages_decoded_in_processes,
            },
        )

    def discard(self) -> None:
        self._stop_decoders()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _stop_decoders(self) -> None:
        if self._decoders is not None:
            self._decoders.close()
            self.decoders_peak_rss_mb = self._decoders.peak_rss_mb
            self.pages_decoded_in_processes = self._decoders.pages
            self._decoders = None
