"""Checkpoints of long runs: complete days committed as a run goes, and a failed run resumed.

A run of a merge table over a window the API filters on (events, profiles, campaigns, ...) commits
every ``OMNILOAD_CHECKPOINT_EVERY_S`` seconds the stretches of its window it has completely fetched
(:meth:`Extraction.completed`: every record of them is staged): their rows are merged and the
stretches recorded in ``_omniload_checkpoints``, in one transaction
(:meth:`KlaviyoDuckDBIOManager.commit_checkpoint`). A partition-range run reports a day to Dagster
as materialized once all of it is committed, never before.

Stretches, not whole days: the workers page ~40 pieces of the window at once, each from its start,
so at 80% of a 60-day run each piece has a part-fetched day; committing whole days only would have
left 65% of that run to fetch again (measured with ``bench/resume.py`` at 100k-600k events), the
exact stretches leave the unfetched 20% and the pages in flight.

When it fails, the run first commits what is complete. Out of quota (a 429 whose ``Retry-After``
is longer than the run waits) or out of retries on a long outage, it records in
``_omniload_deferrals`` when Klaviyo should answer again, which the schedules and the sensor
respect, and fails with one line saying so.

The next run of the same table and window (the same ``omniload ingest`` command, ``dagster asset
materialize --partition-range``, or a re-execution) fetches only the days not committed, if they
were committed less than ``OMNILOAD_CHECKPOINT_MAX_AGE_H`` ago. A successful run forgets its
window's checkpoints, so the one after it re-syncs the whole window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from omniload_assets import settings
from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.errors import KlaviyoQuotaExhausted, KlaviyoUnavailableError
from omniload_assets.klaviyo.intervals import covered, day_keys, intersect, normalise, subtract, whole_days
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager
from omniload_assets.warehouse.staging import ParquetStager

log = logging.getLogger(__name__)

#: How long the schedules and the sensor leave an endpoint alone after retries ran out on it.
OUTAGE_PAUSE = timedelta(minutes=15)


def applies(spec: TableSpec, window: TimeWindow | None) -> bool:
    """Whether a run keeps checkpoints: a merge table over a window the API filters on (a table
    read whole completes nothing before its last page)."""
    return spec.strategy == "merge" and window is not None and spec.server_side_window


def _days(windows: Sequence[TimeWindow]) -> float:
    return covered(windows) / timedelta(days=1)


def _when(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class Resume:
    """What earlier failed attempts of the same request committed, for a run to skip."""

    window: TimeWindow
    done: list[TimeWindow] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    since: datetime | None = None

    def describe(self, table: str) -> str:
        """One line: whether the run resumes, from which run and when, and what it skips."""
        if not self.done:
            return f"{table}: no checkpoints to resume from: fetching all of {self.window}"
        left = _days(subtract(self.window, self.done))
        return (
            f"{table}: resuming run {', '.join(r[:8] for r in self.runs)} (checkpointed since "
            f"{_when(self.since or self.window.start)}): skipping {_days(self.done):,.1f} of "
            f"{_days([self.window]):,.1f} days already committed, fetching the other {left:,.1f}"
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "resumed": bool(self.done),
            "resumed_from_runs": ", ".join(self.runs) or "none",
            "days_skipped": round(_days(self.done), 2),
        }


def plan_resume(
    warehouse: KlaviyoDuckDBIOManager, spec: TableSpec, window: TimeWindow, *, resume: bool
) -> Resume:
    """The committed days of failed attempts over ``window`` young enough to keep (none unless
    ``resume``)."""
    if not resume:
        return Resume(window)
    newer_than = datetime.now(UTC) - timedelta(hours=settings.checkpoint_max_age_h())
    found = warehouse.committed_stretches(spec, window, newer_than)
    if not found:
        return Resume(window)
    return Resume(
        window,
        normalise(s.window for s in found),
        list(dict.fromkeys(s.run_id for s in found)),
        min(s.committed_at for s in found),
    )


class Checkpoints:
    """Commits the complete days of one run as it goes (:meth:`after_page`) and when it fails
    (:meth:`failed`)."""

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        spec: TableSpec,
        warehouse: KlaviyoDuckDBIOManager,
        stager: ParquetStager,
        resume: Resume,
        column_types: Callable[[], dict[str, str]],
    ) -> None:
        self.context, self.spec, self.warehouse, self.stager = context, spec, warehouse, stager
        self.window = resume.window
        self.column_types = column_types
        self.every_s = settings.checkpoint_every_s()
        self.committed = list(resume.done)
        self.commits = 0
        self.rows = 0
        self._due = time.monotonic() + self.every_s

    def after_page(self, completed: Callable[[], list[TimeWindow]]) -> None:
        """Commit the days complete so far once ``every_s`` has passed since the last attempt."""
        if time.monotonic() >= self._due:
            self.commit(completed())
            self._due = time.monotonic() + self.every_s

    def commit(self, completed: Sequence[TimeWindow]) -> int:
        """Merge the staged rows of the whole days in ``completed`` not committed yet, and record
        them, in one transaction; the rows written."""
        inside = intersect(completed, [self.window])
        new = normalise(p for s in inside for p in subtract(s, self.committed))
        if not new:
            return 0
        key = self.spec.incremental_key or ""
        files = self.stager.take(key, new)
        try:
            result = self.warehouse.commit_checkpoint(
                self.spec,
                files,
                self.column_types(),
                requested=self.window,
                stretches=new,
                run_id=self.context.run.run_id,
            )
        except BaseException:
            self.stager.restore(files)
            raise
        self.stager.release(files)
        whole_before = set(day_keys(whole_days(self.committed, self.window)))
        self.committed = normalise([*self.committed, *new])
        self.commits += 1
        self.rows += result.rows_written
        whole_now = day_keys(whole_days(self.committed, self.window))
        self._report(new, result.rows_written, [d for d in whole_now if d not in whole_before])
        return result.rows_written

    def _report(self, new: list[TimeWindow], rows: int, days: list[str]) -> None:
        """Say what was committed; in a partition-range run, mark the ``days`` now whole materialized."""
        message = (
            f"{self.spec.name}: checkpoint {self.commits}: committed {rows:,} rows of "
            f"{_days(new):,.2f} more days ({_days(self.committed):,.1f} of {_days([self.window]):,.1f})"
        )
        self.context.log.info(message)
        log.info(message)
        if not self.context.has_partition_key_range:
            return
        wanted = set(self.context.partition_keys)
        table = f"{self.warehouse.schema_name}.{self.warehouse.table_name(self.spec)}"
        for key in days:
            if key in wanted:
                self.context.log_event(
                    dg.AssetMaterialization(
                        asset_key=self.context.asset_key,
                        partition=key,
                        description="committed by a checkpoint of a longer run",
                        metadata={
                            "dagster/table_name": table,
                            "checkpoint": self.commits,
                            "rows_committed_by_the_run": self.rows,
                        },
                    )
                )

    def failed(self, completed: Sequence[TimeWindow], error: BaseException) -> BaseException | None:
        """The run failed with ``error``: commit what is complete, record a deferral for a quota or
        an outage, and return the one-line error to raise instead (None: raise ``error``)."""
        try:
            self.commit(completed)
        except Exception as exc:  # the original error matters more; the next run fetches these days
            self.context.log.warning(f"{self.spec.name}: the last checkpoint failed too: {exc}")
        done = (
            f"{_days(self.committed):,.1f} of {_days([self.window]):,.1f} days are committed and the "
            "same run resumes from them"
            if self.committed
            else "no day was complete to commit"
        )
        if isinstance(error, KlaviyoQuotaExhausted):
            until = datetime.now(UTC) + timedelta(seconds=error.retry_after_s)
            self._defer(until, "Klaviyo quota exhausted")
            return KlaviyoQuotaExhausted(
                f"{error}; {done}; schedules and the sensor wait until {_when(until)}",
                status=error.status,
                path=error.path,
                retry_after_s=error.retry_after_s,
            )
        if isinstance(error, KlaviyoUnavailableError):
            until = datetime.now(UTC) + OUTAGE_PAUSE
            self._defer(until, "Klaviyo unavailable")
            return KlaviyoUnavailableError(
                f"{error}; {done}; schedules and the sensor wait until {_when(until)}"
            )
        if self.committed:
            self.context.log.info(f"{self.spec.name}: {done}")
        return None

    def _defer(self, until: datetime, reason: str) -> None:
        try:
            self.warehouse.defer(self.spec, until, reason, self.context.run.run_id)
        except Exception as exc:
            self.context.log.warning(f"{self.spec.name}: could not record the deferral: {exc}")

    def metadata(self) -> dict[str, Any]:
        return {"checkpoints": self.commits, "rows_checkpointed": self.rows}
