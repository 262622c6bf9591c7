"""Staging: the sink of extracted rows, Parquet files, so no DuckDB lock is held while the API is slow.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.process_tuning import ROWS_POOL, release_free_memory
from omniload_assets.warehouse.connection import WarehouseError

if TYPE_CHECKING:  # a value StagedTable carries, never used here
    from omniload_assets.klaviyo.windows import TimeWindow

#: Rows per staged file: large enough for fast bulk loads, small enough to bound memory.
ROWS_PER_FILE = 20_000
#: Staged files are read once, by the write: LZ4 costs the run's process less than half of zstd's
#: CPU (1.9 against 4.1 ms a page of 1,000 events) for files three times larger (~150 MB per
#: million events).
STAGING_COMPRESSION = "lz4"
#: Rows staged after which ``finish`` runs a full garbage collection (see there).
COLLECT_AFTER_ROWS = 200_000
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
    """A sink for one table's rows: Arrow tables in (:meth:`add`), Parquet files of
    ``ROWS_PER_FILE`` rows out. Rows wait as Arrow tables (compact, columnar), never as Python dicts."""

    def __init__(
        self, spec: TableSpec, base_dir: str | None = None, rows_per_file: int = ROWS_PER_FILE
    ) -> None:
        self.spec = spec
        self.directory = make_staging_dir(spec.asset_name, base_dir)
        self.rows_per_file = rows_per_file
        self.files: list[str] = []
        self.rows_written = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def add(self, table: pa.Table) -> None:
        """Stage one page's rows; write a file when enough wait."""
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
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

    def finish(
        self, window: TimeWindow | None, stats: dict[str, float], column_types: dict[str, str]
    ) -> StagedTable:
        """The staged files, once the last rows are written; ``column_types`` are the DuckDB types
        of every column the rows may hold (the decoder's ``column_types()``)."""
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
            column_types=dict(column_types),
            window=window,
            stats={**stats, "rows": self.rows_written},
        )

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
