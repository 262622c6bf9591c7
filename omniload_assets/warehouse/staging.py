"""Staging: the sink of extracted rows, Parquet files, so no DuckDB lock is held while the API is slow.

Each stager's directory (in ``OMNILOAD_STAGING_DIR``, else the system temp dir) is named after the
process that owns it: ``omniload-<table>-<pid>-<where>-<start>-<random>``, ``where`` telling the
machine, boot and PID namespace, ``start`` when the process started (so a reused PID is not taken
for the owner). A run removes it when done; a run killed before that (``kill -9``, OOM) leaves it,
and the next stager removes the directories whose owner is dead, never a live process's, nor those
of another machine or container (whose processes it cannot see).

For checkpoints, :meth:`ParquetStager.take` moves the rows of completed stretches of the window
into files of their own, which the caller merges early and then releases (or restores on failure).
"""

from __future__ import annotations

import bisect
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
#: Nanoseconds per unit of an Arrow timestamp.
_NANOS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

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
    #: The requested window whose checkpoints the write closes (None: the run kept none).
    requested: TimeWindow | None = None
    #: More metadata for the materialization (how a run resumed and checkpointed).
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The write the run config chose (merge, replace, append, delete+insert); None: the table's own.
    strategy: str | None = None
    #: Rebuild the table (no window) or the window's rows instead of adding to them.
    full_refresh: bool = False
    #: The key(s) to de-duplicate by; None: the table's own.
    primary_key: list[str] | None = None
    #: The only columns to write (keys included); None: all.
    columns: list[str] | None = None
    #: DuckDB types for columns the write creates (the run config's ``columns: [name:type]``).
    column_hints: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.stats.get("rows", 0))

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass(frozen=True)
class KeyRange:
    """The span of one timestamp column in a staged file, in nanoseconds since the epoch (UTC)."""

    low: int | None  # None (and high None): no value but NULLs
    high: int | None
    nulls: int

    @classmethod
    def of(cls, column: pa.ChunkedArray) -> KeyRange:
        """The range of ``column``, which must be a timestamp (any unit, any time zone)."""
        if not pa.types.is_timestamp(column.type):
            raise TypeError(f"not a timestamp column: {column.type}")
        factor = _NANOS[column.type.unit]
        bounds = pc.min_max(column)
        low, high = bounds["min"].value, bounds["max"].value
        if low is None or high is None:
            return cls(None, None, column.null_count)
        return cls(low * factor, high * factor, column.null_count)


class Stretches:
    """Half-open ``[start, end)`` intervals, sorted and merged (touching or overlapping ones join),
    in nanoseconds since the epoch; asks which values of a timestamp column fall in one."""

    def __init__(self, windows: Sequence[TimeWindow]) -> None:
        merged: list[list[int]] = []
        for start, end in sorted((_nanos(w.start), _nanos(w.end)) for w in windows):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.starts = [start for start, _ in merged]
        self.ends = [end for _, end in merged]
        self._bounds: dict[str, np.ndarray] = {}

    def __bool__(self) -> bool:
        return bool(self.starts)

    def overlaps(self, low: int, high: int) -> bool:
        """Whether some stretch meets the closed range ``[low, high]``."""
        i = bisect.bisect_right(self.starts, high) - 1
        return i >= 0 and self.ends[i] > low

    def covers(self, low: int, high: int) -> bool:
        """Whether one stretch holds the whole closed range ``[low, high]``."""
        i = bisect.bisect_right(self.starts, low) - 1
        return i >= 0 and high < self.ends[i]

    def mask(self, column: pa.ChunkedArray) -> np.ndarray:
        """A boolean per value of the timestamp ``column``: in a stretch (NULL: never)."""
        bounds = self.bounds(column.type.unit)
        parts = [np.zeros(0, dtype=bool)]
        for chunk in column.chunks:
            if not len(chunk):
                continue
            values = np.frombuffer(chunk.buffers()[1], np.int64, len(chunk), chunk.offset * 8)
            inside = np.searchsorted(bounds, values, side="right") % 2 == 1
            if chunk.null_count:
                inside &= chunk.is_valid().to_numpy(zero_copy_only=False)
            parts.append(inside)
        return np.concatenate(parts)

    def bounds(self, unit: str) -> np.ndarray:
        """Starts and ends interleaved, in ``unit`` (rounded up: ``v >= ceil(s)`` iff ``v*f >= s``),
        so a value is in a stretch iff an odd number of bounds is at or below it."""
        if unit not in self._bounds:
            factor = _NANOS[unit]
            flat = [b for pair in zip(self.starts, self.ends, strict=True) for b in pair]
            clamped = [min(max(-(-b // factor), _INT64_MIN), _INT64_MAX) for b in flat]
            self._bounds[unit] = np.array(clamped, dtype=np.int64)
        return self._bounds[unit]


def _nanos(instant: datetime) -> int:
    return (instant - _EPOCH) // _MICROSECOND * 1000


@dataclass
class _StagedFile:
    """One staged file: its rows and the ranges of its timestamp columns (None: column absent)."""

    path: str
    rows: int
    ranges: dict[str, KeyRange | None] = field(default_factory=dict)


def _ranges(table: pa.Table, columns: Iterable[str]) -> dict[str, KeyRange | None]:
    """The ranges of ``columns`` in ``table`` (columns that are not timestamps are left out)."""
    ranges: dict[str, KeyRange | None] = {}
    for name in columns:
        if name not in table.column_names:
            ranges[name] = None
        elif pa.types.is_timestamp(table.schema.field(name).type):
            ranges[name] = KeyRange.of(table.column(name))
    return ranges


def _read(path: str, columns: list[str] | None = None) -> pa.Table:
    with pq.ParquetFile(path) as parquet:
        return parquet.read(columns=columns)


class ParquetStager:
    """A sink for one table's rows: Arrow tables in (:meth:`add`), Parquet files of
    ``ROWS_PER_FILE`` rows out. Rows wait as Arrow tables (compact, columnar), never as Python dicts.

    Checkpoints: :meth:`take` moves the rows of completed stretches of the window out into files of
    their own, which the caller merges, then hands back with :meth:`release` (merged: deleted) or
    :meth:`restore` (not merged: staged again). ``rows_written`` counts the rows still staged (what
    :meth:`finish` hands on), ``rows_taken`` those taken and not restored."""

    def __init__(
        self, spec: TableSpec, base_dir: str | None = None, rows_per_file: int = ROWS_PER_FILE
    ) -> None:
        self.spec = spec
        self.directory = make_staging_dir(spec.asset_name, base_dir)
        self.rows_per_file = rows_per_file
        self.files: list[str] = []
        self.rows_written = 0
        self.rows_taken = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._staged: dict[str, _StagedFile] = {}  # by path: every file in ``files``
        self._taken: dict[str, _StagedFile] = {}  # by path: taken, neither released nor restored
        self._names = {"part": 0, "taken": 0}

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
        keys = [self.spec.incremental_key] if self.spec.incremental_key else []
        staged = self._write(table, self._new_path("part"), keys)
        self.files.append(staged.path)
        self._staged[staged.path] = staged
        self.rows_written += staged.rows
        self._pending = []
        self._pending_rows = 0
        del table
        release_free_memory()  # every ROWS_PER_FILE rows: what the pages freed goes back to the OS

    def take(self, column: str, stretches: Sequence[TimeWindow]) -> list[str]:
        """Move every staged row whose ``column`` (a timestamp) lies in one of ``stretches`` into
        new files of this directory, one per file it came from (same schema); return their paths.
        NULL keys, and files without ``column``, are never taken. Files whose range misses every
        stretch are not read; a file taken whole is renamed. If it fails, every row stays staged."""
        self.flush()
        spans = Stretches(stretches)
        taken: list[str] = []
        if not spans:
            return taken
        try:
            for path in list(self.files):
                out = self._take_from(self._staged[path], column, spans)
                if out is not None:
                    self._taken[out.path] = out
                    self.rows_written -= out.rows
                    self.rows_taken += out.rows
                    taken.append(out.path)
        except BaseException:
            self.restore(taken)
            raise
        logger.debug("%s: took %d files from staging", self.spec.name, len(taken))
        return taken

    def release(self, files: Sequence[str]) -> None:
        """The taken ``files`` were merged: delete them (their rows stay counted in ``rows_taken``)."""
        for staged in self._pop_taken(files):
            with contextlib.suppress(FileNotFoundError):
                os.remove(staged.path)

    def restore(self, files: Sequence[str]) -> None:
        """The taken ``files`` were not merged: stage them again, for the final write."""
        for staged in self._pop_taken(files):
            self.files.append(staged.path)
            self._staged[staged.path] = staged
            self.rows_written += staged.rows
            self.rows_taken -= staged.rows

    def finish(
        self, window: TimeWindow | None, stats: dict[str, float], column_types: dict[str, str]
    ) -> StagedTable:
        """The staged files, once the last rows are written; ``column_types`` are the DuckDB types
        of every column the rows may hold (the decoder's ``column_types()``). Its ``rows`` are the
        rows still staged, ``rows_checkpointed`` those taken (and not restored) before."""
        self.flush()
        # Before the write, what extraction freed goes back to the OS: Arrow's pool, the garbage of
        # the workers' reference cycles, and glibc's free heap (measured: a 1M-event run's peak,
        # which is the write's, 385 MB instead of 397-405 MB). The full collection walks every
        # object in the process, Dagster's too (0.2 s, 3 s of a 15-table run): only after a large
        # extraction, whose garbage it is worth.
        ROWS_POOL.release_unused()
        if self.rows_written + self.rows_taken >= COLLECT_AFTER_ROWS:
            gc.collect()
        release_free_memory()
        return StagedTable(
            table=self.spec.name,
            directory=self.directory,
            files=list(self.files),
            column_types=dict(column_types),
            window=window,
            stats={**stats, "rows": self.rows_written, "rows_checkpointed": self.rows_taken},
        )

    def discard(self) -> None:
        """Remove every file: staged, pending or taken."""
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- taking ---------------------------------------------------------------------------------

    def _take_from(self, staged: _StagedFile, column: str, spans: Stretches) -> _StagedFile | None:
        """The file of ``staged``'s rows in ``spans`` (None: none), which leave ``staged``."""
        key = self._key_range(staged, column)
        if key is None or key.low is None or key.high is None or not spans.overlaps(key.low, key.high):
            return None
        if key.nulls == 0 and spans.covers(key.low, key.high):
            return self._move_whole(staged)
        inside = spans.mask(_read(staged.path, [column]).column(column))
        count = int(np.count_nonzero(inside))
        if count == 0:
            return None
        if count == staged.rows:
            return self._move_whole(staged)
        return self._split(staged, pa.array(inside))

    def _key_range(self, staged: _StagedFile, column: str) -> KeyRange | None:
        """``column``'s range in ``staged`` (None: absent), from the file if not known yet."""
        if column not in staged.ranges:
            if column not in pq.read_schema(staged.path).names:
                staged.ranges[column] = None
            else:
                staged.ranges[column] = KeyRange.of(_read(staged.path, [column]).column(column))
        return staged.ranges[column]

    def _move_whole(self, staged: _StagedFile) -> _StagedFile:
        target = self._new_path("taken")
        try:
            os.rename(staged.path, target)
        except OSError as exc:
            raise StagingDirError(
                f"cannot move staged rows of {self.spec.name} to {target} ({exc.strerror or exc})"
            ) from exc
        self.files.remove(staged.path)
        del self._staged[staged.path]
        return _StagedFile(target, staged.rows, staged.ranges)

    def _split(self, staged: _StagedFile, inside: pa.BooleanArray) -> _StagedFile:
        """Write ``staged``'s rows where ``inside`` to a new file, and the others back in place."""
        table = _read(staged.path)
        taken = self._write(table.filter(inside), self._new_path("taken"), staged.ranges)
        scratch = f"{staged.path}.tmp"
        try:
            kept = self._write(table.filter(pc.invert(inside)), scratch, staged.ranges)
            os.replace(scratch, staged.path)
        except BaseException:
            for path in (taken.path, scratch):
                with contextlib.suppress(OSError):
                    os.remove(path)
            raise
        staged.rows, staged.ranges = kept.rows, kept.ranges
        return taken

    def _pop_taken(self, files: Sequence[str]) -> list[_StagedFile]:
        """The taken files ``files`` names, forgotten as taken; all or none (ValueError)."""
        paths = list(dict.fromkeys(os.fspath(f) for f in files))
        unknown = [p for p in paths if p not in self._taken]
        if unknown:
            raise ValueError(f"not taken from this stager, or already released or restored: {unknown}")
        return [self._taken.pop(p) for p in paths]

    # -- files ----------------------------------------------------------------------------------

    def _new_path(self, kind: str) -> str:
        number = self._names[kind]
        self._names[kind] += 1
        return str(Path(self.directory) / f"{kind}-{number:06d}.parquet")

    def _write(self, table: pa.Table, path: str, keys: Iterable[str]) -> _StagedFile:
        """Write ``table`` to ``path``; the file, with the ranges of its timestamp columns ``keys``."""
        try:
            pq.write_table(table, path, compression=STAGING_COMPRESSION)
        except OSError as exc:  # the disk is full, or the directory was removed under the run
            raise StagingDirError(
                f"cannot write staged rows of {self.spec.name} to {path} ({exc.strerror or exc}); "
                f"free space there or set {STAGING_DIR_ENV} to a writable directory with room for "
                "them (~150 MB per million events)"
            ) from exc
        return _StagedFile(path, table.num_rows, _ranges(table, keys))
