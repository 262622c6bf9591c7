"""Live extraction progress: a hook the assets report to, and the CLI's displays of it.

Dagster's event log only carries what an asset logs or yields, and in-process runs write it at
step boundaries; a progress bar needs the counters while the pages arrive. So the asset reports
its live counters (pages, records, 429s) through :func:`extraction_started` /
:func:`extraction_advanced` / :func:`extraction_finished`, and whoever listens in the same
process (the ``omniload`` CLI, which runs the asset in process) shows them. With no listener the
calls cost a list lookup; in a deployment (other processes) they do nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Protocol

#: Seconds between two plain progress lines of the same table.
LOG_INTERVAL_S = 5.0


class StatsSource(Protocol):
    """Live counters of one extraction (``ClientStats``): read whenever a display refreshes."""

    def as_dict(self) -> dict[str, float]: ...


class ProgressListener(Protocol):
    """Receives the progress of extractions running in this process."""

    def started(self, table: str, stats: StatsSource) -> None: ...

    def advanced(self, table: str, stats: StatsSource) -> None: ...

    def finished(self, table: str, stats: StatsSource) -> None: ...


_listeners: list[ProgressListener] = []
_lock = threading.Lock()


@contextmanager
def listening(listener: ProgressListener) -> Iterator[ProgressListener]:
    """Send this process's extraction progress to ``listener`` inside the block."""
    with _lock:
        _listeners.append(listener)
    try:
        yield listener
    finally:
        with _lock:
            _listeners.remove(listener)


def _publish(method: str, table: str, stats: StatsSource) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        getattr(listener, method)(table, stats)


def extraction_started(table: str, stats: StatsSource) -> None:
    """An asset began extracting ``table``; ``stats`` stays live until it finishes."""
    _publish("started", table, stats)


def extraction_advanced(table: str, stats: StatsSource) -> None:
    """A batch of ``table`` arrived (called once per batch, so keep listeners cheap)."""
    _publish("advanced", table, stats)


def extraction_finished(table: str, stats: StatsSource) -> None:
    """``table`` is extracted; what remains is the write to DuckDB."""
    _publish("finished", table, stats)


@dataclass(frozen=True)
class Snapshot:
    """The counters of one extraction at one moment, with its rate."""

    pages: int
    records: int
    requests: int
    throttled: int
    throttle_wait_s: float
    elapsed_s: float

    @classmethod
    def of(cls, stats: Mapping[str, float], elapsed_s: float) -> Snapshot:
        return cls(
            pages=int(stats.get("pages", 0)),
            records=int(stats.get("records", 0)),
            requests=int(stats.get("requests", 0)),
            throttled=int(stats.get("throttled", 0)),
            throttle_wait_s=float(stats.get("throttle_wait_s", 0.0)),
            elapsed_s=elapsed_s,
        )

    @property
    def rate(self) -> float:
        """Records per second so far."""
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def describe(self) -> str:
        """``12 pages, 11,500 records (2,300/s), 429 waits: 1 (3.0 s)``."""
        return (
            f"{self.pages:,} pages, {self.records:,} records ({self.rate:,.0f}/s), "
            f"429 waits: {self.throttled:,} ({self.throttle_wait_s:.1f} s)"
        )


class LogDisplay:
    """Plain progress lines (for logs and pipes): at the start, every few seconds, at the end."""

    def __init__(self, stream: IO[str], prefix: str = "omniload", interval_s: float = LOG_INTERVAL_S) -> None:
        self.stream = stream
        self.prefix = prefix
        self.interval_s = interval_s
        self._began: dict[str, float] = {}
        self._last_line: dict[str, float] = {}

    def _line(self, text: str) -> None:
        self.stream.write(f"{self.prefix}: {text}\n")
        self.stream.flush()

    def _snapshot(self, table: str, stats: StatsSource) -> Snapshot:
        return Snapshot.of(stats.as_dict(), time.monotonic() - self._began.get(table, time.monotonic()))

    def started(self, table: str, stats: StatsSource) -> None:
        now = time.monotonic()
        self._began[table] = self._last_line[table] = now
        self._line(f"{table}: extracting")

    def advanced(self, table: str, stats: StatsSource) -> None:
        now = time.monotonic()
        if now - self._last_line.get(table, now) >= self.interval_s:
            self._last_line[table] = now
            self._line(f"{table}: {self._snapshot(table, stats).describe()}")

    def finished(self, table: str, stats: StatsSource) -> None:
        self._line(f"{table}: extracted {self._snapshot(table, stats).describe()}; writing to DuckDB")

    def message(self, text: str) -> None:
        """A status line between progress lines."""
        self._line(text)

    def __enter__(self) -> LogDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class BarDisplay:
    """A live progress bar on a terminal (``rich``, which Dagster already depends on; imported
    only when a bar is shown, as it adds a fifth of a second to start-up).

    The statistics column reads the live counters on every refresh, so 429 waits show while the
    client sleeps, not only when the next page arrives.
    """

    def __init__(self, stream: IO[str], prefix: str = "omniload") -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.prefix = prefix
        self.console = Console(file=stream)
        if not self.console.is_terminal:  # a forced bar into a file: one unwrapped line per frame
            self.console = Console(file=stream, width=240)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            _stats_column(),
            TimeElapsedColumn(),
            console=self.console,
            refresh_per_second=8,
        )
        self._tasks: dict[str, int] = {}

    def started(self, table: str, stats: StatsSource) -> None:
        self._tasks[table] = self.progress.add_task(
            table, total=None, stats=stats, began=time.monotonic(), state="extracting"
        )

    def advanced(self, table: str, stats: StatsSource) -> None:
        task = self._tasks.get(table)
        if task is not None:
            self.progress.update(task, completed=int(stats.as_dict().get("pages", 0)))

    def finished(self, table: str, stats: StatsSource) -> None:
        task = self._tasks.get(table)
        if task is not None:
            pages = int(stats.as_dict().get("pages", 0))
            self.progress.update(
                task,
                total=max(pages, 1),
                completed=max(pages, 1),
                state="extracted; writing to DuckDB",
                ended=time.monotonic(),  # the rate stops at the end of the extraction
            )

    def message(self, text: str) -> None:
        """A status line printed above the bar."""
        self.progress.console.print(f"{self.prefix}: {text}", markup=False, highlight=False)

    def __enter__(self) -> BarDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


class NullDisplay:
    """No progress output at all (``--progress off``)."""

    def started(self, table: str, stats: StatsSource) -> None:
        return None

    def advanced(self, table: str, stats: StatsSource) -> None:
        return None

    def finished(self, table: str, stats: StatsSource) -> None:
        return None

    def message(self, text: str) -> None:
        return None

    def __enter__(self) -> NullDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _stats_column() -> Any:
    """A rich column showing pages, records, records/s and 429 waits from the live counters."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class StatsColumn(ProgressColumn):
        max_refresh = None

        def render(self, task: Task) -> Text:
            fields = task.fields
            stats: StatsSource = fields["stats"]
            snap = Snapshot.of(stats.as_dict(), (fields.get("ended") or time.monotonic()) - fields["began"])
            return Text(f"{snap.describe()} · {fields['state']}")

    return StatsColumn()
