"""``omniload ingest``: the seed's command, running the tables' Dagster assets in process.

Nothing here extracts or writes data: the command checks its flags, points the code location's
resources at the given source and destination, and materializes the assets of one table, several or
all of them over the partition range of ``[--interval-start, --interval-end)`` with
``runner.materialize_tables``.
Dagster is imported only once the flags are valid, so ``--help`` and usage errors are instant.
ingestr's flags (the write options, the no-ops and the refused) are declared and checked in
``omniload_assets.ingestr_flags``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, NoReturn

from omniload_assets import progress, settings
from omniload_assets.ingestr_flags import (
    UsageError,
    WriteOptions,
    add_no_op_flags,
    add_refused_flags,
    add_write_flags,
    parse_page_size,
    parse_progress,
    plan_write_options,
    shown,
    staging_dir_from_flag,
)
from omniload_assets.klaviyo.catalog import TABLES, TableSpec, get_table
from omniload_assets.klaviyo.errors import KlaviyoConfigError, redact, retarget_key_advice
from omniload_assets.klaviyo.source_uri import api_key_from_key_or_uri, api_key_from_uri
from omniload_assets.progress import BarDisplay, LogDisplay, NullDisplay
from omniload_assets.warehouse.connection import (
    WarehouseError,
    is_local_file,
    resolve_database,
    show_database,
)

if TYPE_CHECKING:
    import dagster as dg

    from omniload_assets.runner import RunOutcome

PROG = "omniload"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MIN_PARALLELISM, MAX_PARALLELISM = 1, 64  # KlaviyoResource.extract_parallelism's bounds
TABLE_NAMES = ", ".join(t.name for t in TABLES)

EXAMPLE = """\
examples (the first is the seed's command; the second loads all {count} tables into klaviyo.<table>):
  omniload ingest --source-table 'events' --source-uri 'klaviyo://?api_key=pk_test' \\
    --dest-uri duckdb:///klaviyo.duckdb --interval-start 2022-01-01 \\
    --dest-table 'dest.events' --extract-parallelism 20
  omniload ingest --source-table all --dest-uri duckdb:///klaviyo.duckdb \\
    --interval-start 2024-01-01 --interval-end 2024-02-01

tables: {tables} (or all; several: events,profiles)

The interval is widened to whole UTC days (the assets' daily partitions): 2024-01-05T12:00 to
2024-01-06T01:00 loads the days 2024-01-05 and 2024-01-06. Merge tables upsert by id, so loading a
day twice changes nothing; tags, coupons and the child tables are replaced whole and ignore the
interval. A child table loads the children of the parent ids already in the warehouse (list_profiles:
the members of the lists in klaviyo.lists): load its parent before it, or in the same command.
child tables: {children}
Several tables go in one run (two with $DAGSTER_HOME: the partitioned ones, then the rest), each
into its own name in the schema; --dest-table names the destination of a single table only.
Runs use an ephemeral Dagster instance, or the instance in $DAGSTER_HOME when that is set.

ingestr's flags: ingest takes the flags of `ingestr ingest` with ingestr's meaning where they apply
to a Klaviyo -> DuckDB load (--incremental-strategy, --primary-key, --columns, --full-refresh,
--page-size, --yes, ...); the ones that cannot apply are listed last and refused with the reason.
--dry-run prints the plan without a request.

exit status: 0 loaded; 1 the run failed (the reason is printed on one line); 2 bad flags;
130 interrupted.
"""


class IngestFailed(Exception):
    """The run failed; the message is the one-line reason, from the run's event log."""

    def __init__(self, reason: str, *, interrupted: bool = False, tables: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.interrupted = interrupted
        self.tables = tuple(tables)  # the tables whose steps (or, if unknown, runs) failed


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``omniload ingest: error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- flag values ---------------------------------------------------------------------------------


def parse_when(text: str) -> datetime:
    """``2022-01-01``, ``2022-01-01T10:30``, ``2022-01-01 10:30:00Z`` or with an offset -> UTC.

    Anything else is an :class:`argparse.ArgumentTypeError` (a one-line usage error), never another
    exception: an offset that moves the instant past year 1 or 9999 in UTC included.
    """
    quoted = shown(text)
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{quoted} is not a date or datetime; use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS (UTC)"
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00-02:00 is in the year 10000 in UTC
        raise argparse.ArgumentTypeError(
            f"{quoted} is outside the years 1 to 9999 in UTC; use a UTC date such as 2024-01-01"
        ) from None


def parse_parallelism(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not MIN_PARALLELISM <= value <= MAX_PARALLELISM:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number from {MIN_PARALLELISM} to {MAX_PARALLELISM}"
        )
    return value


def api_key_from_source_uri(uri: str | None) -> str:
    """The key of ``--source-uri klaviyo://?api_key=...``, else of ``KLAVIYO_API_KEY`` (the key or
    such a URI); a :class:`UsageError` naming the one it came from unless it is one printable token
    (a line break, tab or control character: a mangled paste)."""
    try:
        if uri is not None:
            return api_key_from_uri(uri, "--source-uri")
        from_env = os.environ.get("KLAVIYO_API_KEY") or ""
        if not from_env.strip():
            raise UsageError(
                "no Klaviyo API key: pass --source-uri 'klaviyo://?api_key=pk_...' or set KLAVIYO_API_KEY"
            )
        return api_key_from_key_or_uri(from_env, "KLAVIYO_API_KEY")
    except KlaviyoConfigError as exc:  # its message names the flag or variable, never the key
        raise UsageError(str(exc)) from None


def database_from_dest_uri(uri: str | None) -> str:
    """What DuckDB opens for ``--dest-uri`` (else $OMNILOAD_DUCKDB_PATH): ``duckdb:///path``, a path, ``md:``.

    Checked now, before Dagster runs, creating nothing: another scheme, an in-memory database
    (nothing would be kept), a directory, a path on ``/proc`` and an existing file that is not a
    DuckDB database are a :class:`UsageError` whose one line names where the value came from and
    masks any token or password in it (``connection.mask_database``).
    """
    from omniload_assets.warehouse.connection import DUCKDB_PATH_ENV, check_destination, show_database

    origin = "--dest-uri" if uri is not None else DUCKDB_PATH_ENV
    raw = settings.duckdb_path() if uri is None else uri.strip()
    if "://" in raw and not raw.startswith("duckdb://"):
        raise UsageError(
            f"{origin} {show_database(raw)} is not a DuckDB destination; use duckdb:///path/to/file.duckdb "
            "or md:database (MotherDuck)"
        )
    try:
        target = resolve_database(raw, setting=origin)
        check_destination(raw, setting=origin)
    except WarehouseError as exc:
        raise UsageError(str(exc)) from None
    return str(Path(target).absolute()) if is_local_file(target) else target


def parse_tables(text: str) -> tuple[TableSpec, ...]:
    """``events``, ``events,catalog_items`` or ``all`` -> the tables, duplicates dropped, order kept."""
    specs: list[TableSpec] = []
    names = [name.strip() for name in text.split(",") if name.strip()] or [text]
    for name in names:
        try:
            found = TABLES if name.lower() == "all" else (get_table(name),)
        except KeyError:
            raise UsageError(
                f"unknown --source-table {name!r}; valid tables: {TABLE_NAMES} (or all)"
            ) from None
        specs.extend(spec for spec in found if spec not in specs)
    return tuple(specs)


def split_dest_table(text: str | None, spec: TableSpec) -> tuple[str, str]:
    """``schema.table`` (or ``table``) -> (schema, table); defaults: the configured schema, the table.

    Each name must be usable (``writer.check_name``: printable, at most 63 characters); anything
    else is a one-line :class:`UsageError`.
    """
    from omniload_assets.warehouse.writer import TableNameError, check_name, show_name

    if text is None:
        return settings.duckdb_schema(), spec.asset_name
    parts = [p.strip() for p in text.strip().split(".")]
    if len(parts) > 2 or not all(parts):
        raise UsageError(f"--dest-table {show_name(text)} must be schema.table or table, e.g. dest.events")
    try:
        schema = check_name(parts[0], "schema") if len(parts) == 2 else settings.duckdb_schema()
        return schema, check_name(parts[-1], "table")
    except TableNameError as exc:
        raise UsageError(f"--dest-table: {exc}") from None


# -- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestPlan:
    """Everything ``ingest`` will do, checked before Dagster is imported."""

    specs: tuple[TableSpec, ...]
    api_key: str
    database: str
    schema: str
    #: The DuckDB table of each of ``specs``, in ``schema``.
    tables: tuple[str, ...]
    first_day: date
    last_day: date
    parallelism: int | None
    #: Resume from a failed attempt's checkpoints (``--no-resume``: a full pass).
    resume: bool = True
    #: How to write (ingestr's --full-refresh, --incremental-strategy, --primary-key, --columns).
    write: WriteOptions = WriteOptions()
    #: Records per Klaviyo page (``--page-size``; None: each endpoint's largest).
    page_size: int | None = None
    #: Where the run stages its files (``--pipelines-dir``; None: ``$OMNILOAD_STAGING_DIR``).
    staging_dir: str | None = None

    @property
    def days(self) -> int:
        return (self.last_day - self.first_day).days + 1

    @property
    def names(self) -> str:
        """``events, profiles``: the tables as the user names them."""
        return ", ".join(spec.name for spec in self.specs)

    def table_of(self, spec: TableSpec) -> str:
        """The DuckDB table (in ``schema``) that ``spec`` goes to."""
        return self.tables[self.specs.index(spec)]

    def describe(self) -> str:
        workers = "" if self.parallelism is None else f", {self.parallelism} parallel requests"
        pages = "" if self.page_size is None else f", pages of up to {self.page_size:,} records"
        workers += pages + self.write.describe()
        if len(self.specs) == 1:
            (spec,) = self.specs
            what = (
                f"{spec.name} {self.first_day}..{self.last_day} "
                f"({self.days:,} daily partition{'' if self.days == 1 else 's'})"
                if spec.partitioned
                else f"{spec.name} (replaced whole; the interval does not apply)"
            )
            return f"{what} -> {self.schema}.{self.tables[0]} in {show_database(self.database)}{workers}"
        whole = [spec.name for spec in self.specs if not spec.partitioned]
        if len(whole) == len(self.specs):
            what = f"{self.names} (replaced whole; the interval does not apply)"
        else:
            replaced = f"; {', '.join(whole)} replaced whole" if whole else ""
            days = f"{self.days:,} day{'' if self.days == 1 else 's'}"
            what = f"{self.names} {self.first_day}..{self.last_day} ({days}{replaced})"
        return f"{what} -> schema {self.schema} in {show_database(self.database)}{workers}"


def dry_run_lines(plan: IngestPlan) -> list[str]:
    """What ``ingest`` would do (``--dry-run``), a line per table in ingestr's terms: strategy,
    incremental key, primary key, columns."""
    write = plan.write
    if any(spec.partitioned for spec in plan.specs):
        interval = f"{plan.first_day}..{plan.last_day} ({plan.days:,} UTC day{'' if plan.days == 1 else 's'})"
    else:
        interval = "none (the tables are replaced whole)"
    pages = (
        "each endpoint's largest" if plan.page_size is None else f"{plan.page_size:,} (capped per endpoint)"
    )
    lines = [
        f"{PROG}: dry run: no request made, nothing written",
        f"  destination: {show_database(plan.database)}, schema {plan.schema}",
        f"  interval: {interval}",
        f"  full refresh: {'yes' if write.full_refresh else 'no'}; page size: {pages}; "
        f"parallel requests: {plan.parallelism or 'the resource default'}",
    ]
    for spec in plan.specs:
        strategy = write.strategy_of(spec)
        own = " (the table's own)" if strategy == spec.strategy else ""
        whole = "" if spec.partitioned else ", the interval does not apply"
        key = ", ".join(write.primary_key or (spec.primary_key,))
        columns = ", ".join(write.selected(spec) or ["all"])
        typed = [entry for entry in write.columns or () if ":" in entry]
        columns += f" (types: {', '.join(typed)})" if typed else ""
        lines.append(
            f"  {spec.name} -> {plan.schema}.{plan.table_of(spec)}: strategy {strategy}{own}{whole}; "
            f"incremental key {spec.incremental_key or 'none'}; primary key {key}; columns {columns}"
        )
    return lines


def plan_days(
    interval_start: datetime | None, interval_end: datetime | None, now: datetime
) -> tuple[date, date]:
    """The first and last UTC day of ``[start, end)``; a :class:`UsageError` names the flag (or the
    variable) that set the bound it is about: the start is ``--interval-start`` or
    ``$OMNILOAD_START_DATE`` (or its default), the end ``--interval-end`` or now."""
    if interval_start is not None:
        start, start_name = interval_start, "--interval-start"
    else:
        try:
            start = datetime.combine(settings.start_date(), datetime.min.time(), UTC)
        except settings.SettingsError as exc:
            raise UsageError(f"{exc} (or pass --interval-start)") from None
        from_env = bool(os.environ.get("OMNILOAD_START_DATE"))
        start_name = "OMNILOAD_START_DATE" if from_env else "the default start (no --interval-start)"
    if start > now:
        raise UsageError(f"{start_name} {start.isoformat()} is in the future; use a past UTC date")
    if start.date() < settings.EARLIEST_START:
        raise UsageError(
            f"{start_name} {start.isoformat()} is before {settings.EARLIEST_START.isoformat()}, the first "
            f"day omniload loads (Klaviyo holds nothing older); use {settings.EARLIEST_START.isoformat()} "
            "or later"
        )
    end = now if interval_end is None else interval_end
    if end <= start:
        end_name = "--interval-end" if interval_end is not None else "now"
        raise UsageError(f"{end_name} {end.isoformat()} is not after {start_name} {start.isoformat()}")
    # [start, end) in whole days: the last day is the one holding the instant just before `end`.
    return start.date(), min((end - timedelta(microseconds=1)).date(), now.date())


def plan_ingest(args: argparse.Namespace, now: datetime | None = None) -> IngestPlan:
    """Check the flags together; raise :class:`UsageError` with a one-line reason."""
    specs = parse_tables(args.source_table)
    first_day, last_day = plan_days(args.interval_start, args.interval_end, now or datetime.now(UTC))
    try:
        settings.duckdb_schema()  # a bad $OMNILOAD_DUCKDB_SCHEMA: one line, before the lines below use it
    except settings.SettingsError as exc:
        raise UsageError(str(exc)) from None
    if len(specs) == 1:
        schema, table = split_dest_table(args.dest_table, specs[0])
        tables: tuple[str, ...] = (table,)
    elif args.dest_table is not None:
        raise UsageError(
            f"--dest-table names one table's destination; the {len(specs)} tables of --source-table "
            f"keep their own names, in schema {settings.duckdb_schema()!r} ($OMNILOAD_DUCKDB_SCHEMA, "
            "default klaviyo): drop --dest-table"
        )
    else:
        schema, tables = settings.duckdb_schema(), tuple(spec.asset_name for spec in specs)
    return IngestPlan(
        specs=specs,
        api_key=api_key_from_source_uri(args.source_uri),
        database=database_from_dest_uri(args.dest_uri),
        schema=schema,
        tables=tables,
        first_day=first_day,
        last_day=last_day,
        parallelism=args.extract_parallelism,
        # ingestr's --full-refresh ignores the state: a failed attempt's checkpoints included.
        resume=not (args.no_resume or args.full_refresh),
        write=plan_write_options(args, specs),
        page_size=args.page_size,
        staging_dir=staging_dir_from_flag(args.pipelines_dir),
    )


def check_tables_hold_their_source(plan: IngestPlan) -> None:
    """Refuse, before any request, to write a table into one that holds another Klaviyo table.

    The write checks it again inside its transaction; this only saves the extraction. A database
    another process holds open is left to that check.
    """
    import duckdb

    from omniload_assets.warehouse.writer import table_refusal

    if not is_local_file(plan.database) or not Path(plan.database).exists():
        return
    try:
        conn = duckdb.connect(plan.database, read_only=True)
    except duckdb.Error:
        return
    try:
        for spec in plan.specs:
            refusal = table_refusal(conn, plan.schema, plan.table_of(spec), spec.name, spec.primary_key)
            if refusal is not None:
                raise UsageError(refusal)
    finally:
        conn.close()


# -- running it ----------------------------------------------------------------------------------


class _DisplayHandler(logging.Handler):
    """Our modules' log records (lock waits, retries) as status lines of the display."""

    def __init__(self, display: LogDisplay | BarDisplay | NullDisplay) -> None:
        super().__init__(logging.INFO)
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.display.message(record.getMessage())
        except Exception:  # a display problem must not fail the load
            self.handleError(record)


def open_instance() -> dg.DagsterInstance:
    """The instance in ``$DAGSTER_HOME`` when set (runs show in its UI), else an ephemeral one."""
    import dagster as dg

    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def set_environment(plan: IngestPlan) -> None:
    """Point the definitions at ``plan``'s key, destination, start date and staging directory.

    The definitions read these when built: the destination, and partitions that hold the range.
    The key goes through the environment, as the definitions' EnvVar: a literal value would be
    stored in the run's config snapshot of a persistent ($DAGSTER_HOME) instance.
    """
    os.environ["KLAVIYO_API_KEY"] = plan.api_key
    # The command names its tables: the code location's own selection (OMNILOAD_TABLES) does not apply.
    os.environ.pop("OMNILOAD_TABLES", None)
    os.environ["OMNILOAD_DUCKDB_PATH"] = plan.database
    os.environ["OMNILOAD_DUCKDB_SCHEMA"] = plan.schema
    if any(spec.partitioned for spec in plan.specs):
        os.environ["OMNILOAD_START_DATE"] = plan.first_day.isoformat()
    if plan.staging_dir is not None:
        os.environ["OMNILOAD_STAGING_DIR"] = plan.staging_dir


def run_resources(defs: dg.Definitions, plan: IngestPlan) -> dict[str, Any]:
    """The definitions' resources with ``plan``'s parallelism, page size and destination tables."""
    from omniload_assets.assets import IO_MANAGER_KEY
    from omniload_assets.klaviyo.resource import with_fields

    resources: dict[str, Any] = dict(defs.resources or {})
    if plan.parallelism is not None:
        resources["klaviyo"] = with_fields(resources["klaviyo"], extract_parallelism=plan.parallelism)
    if plan.page_size is not None:
        resources["klaviyo"] = with_fields(resources["klaviyo"], page_size=plan.page_size)
    io_manager = resources[IO_MANAGER_KEY]
    dest_tables = {spec.asset_name: table for spec, table in zip(plan.specs, plan.tables, strict=True)}
    resources[IO_MANAGER_KEY] = with_fields(io_manager, table_names={**io_manager.table_names, **dest_tables})
    return resources


def run_ingest(plan: IngestPlan, display: LogDisplay | BarDisplay | NullDisplay, verbose: bool) -> list[str]:
    """Materialize the tables' assets as ``plan`` says; return a one-line summary of each write."""
    set_environment(plan)

    import dagster as dg

    from omniload_assets.assets import asset_key
    from omniload_assets.definitions import build_definitions
    from omniload_assets.runner import materialize_tables

    defs = build_definitions()
    log_level = "INFO" if verbose else "CRITICAL"
    # A table swapped whole is no set of days: such runs carry the interval as a window instead.
    replaces = any(spec.partitioned and plan.write.strategy_of(spec) == "replace" for spec in plan.specs)
    began = time.monotonic()
    with open_instance() as instance, progress.listening(display):
        outcomes = materialize_tables(
            defs,
            plan.specs,
            first_day=plan.first_day,
            last_day=plan.last_day,
            instance=instance,
            resources=run_resources(defs, plan),
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            partition_status=False if replaces else None,
            resume=plan.resume,
            write_options={spec.asset_name: plan.write.run_config(spec) for spec in plan.specs},
        )
        failed_runs = list(dict.fromkeys(o.run_id for o in outcomes if not o.success))
        if failed_runs:
            reason, interrupted = run_failure_reason(instance, failed_runs[0])
            raise IngestFailed(
                reason, interrupted=interrupted, tables=failed_tables(instance, defs, plan, outcomes)
            )
        metas = [latest_metadata(instance, asset_key(spec)) for spec in plan.specs]
    elapsed_s = time.monotonic() - began
    return [
        summarize(plan, spec, meta, elapsed_s, dg.__version__)
        for spec, meta in zip(plan.specs, metas, strict=True)
    ]


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any]:
    """The metadata values of the asset's latest materialization (empty if it has none)."""
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def failed_tables(
    instance: dg.DagsterInstance, defs: dg.Definitions, plan: IngestPlan, outcomes: Sequence[RunOutcome]
) -> list[str]:
    """The names of the tables whose steps failed, else those of the failed runs, in ``plan``'s order."""
    from dagster import DagsterEventType

    from omniload_assets.assets import asset_key

    steps = {defs.get_assets_def(asset_key(spec)).op.name: spec.asset_name for spec in plan.specs}
    failed = {
        steps[entry.step_key]
        for run_id in {o.run_id for o in outcomes if not o.success}
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
        if entry.step_key in steps
    } or {o.table for o in outcomes if not o.success}
    return [spec.name for spec in plan.specs if spec.asset_name in failed]


def summarize(
    plan: IngestPlan, spec: TableSpec, meta: Mapping[str, Any], elapsed_s: float, dagster_version: str
) -> str:
    """``loaded events into dest.events (...): 1,200 rows written (...); table holds 5,000 rows``."""

    def n(key: str) -> str:
        value = meta.get(key)
        return f"{int(value):,}" if isinstance(value, int | float) else "?"

    def seconds(value: object) -> str:
        return f"{value:.1f} s" if isinstance(value, int | float) else "?"

    extract_s, duration_s = meta.get("extract_s"), meta.get("duration_s")
    write_s = (
        duration_s - extract_s if isinstance(extract_s, float) and isinstance(duration_s, float) else None
    )
    return (
        f"loaded {spec.name} into {plan.schema}.{plan.table_of(spec)} in {show_database(plan.database)}: "
        f"{n('rows_written')} rows written ({n('rows_inserted')} inserted, {n('rows_updated')} updated, "
        f"{n('rows_skipped_stale')} older than stored); the table holds {n('dagster/row_count')} rows; "
        f"{n('pages')} pages, {n('requests')} requests, {n('throttled_429')} 429 waits; "
        f"extracted in {seconds(extract_s)}, written in {seconds(write_s)}; the run took "
        f"{elapsed_s:.1f} s (dagster {dagster_version})"
    )


# -- why it failed: one line ----------------------------------------------------------------------

#: Where an error of a failure's chain comes from, in the order a reason prefers them: this package
#: (its messages say what to do), anywhere else, Dagster (its wrappers only say a step failed).
OURS, OTHER, DAGSTER = "omniload_assets", "other", "dagster"
INTERRUPTIONS = frozenset({"KeyboardInterrupt", "DagsterExecutionInterruptedError"})


class ChainedError(NamedTuple):
    """One error of a failure's chain: where it comes from, and the line a reason shows for it."""

    source: str  # OURS, OTHER or DAGSTER
    line: str


def pick_reason(chain: Sequence[ChainedError], default: str) -> str:
    """The one line that says why a run failed: the first of this package's errors in ``chain``,
    else the first that is not Dagster's, else Dagster's own; ``default`` for an empty chain."""
    for source in (OURS, OTHER, DAGSTER):
        for error in chain:
            if error.source == source:
                return error.line
    return default


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: Dagster's ``user_exception``, ``__cause__``, ``__context__``."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = getattr(current, "user_exception", None) or current.__cause__ or current.__context__
    return chain


def was_interrupted(exc: BaseException) -> bool:
    """Whether Ctrl-C is in ``exc``'s chain (Dagster wraps it)."""
    return any(isinstance(e, KeyboardInterrupt) or type(e).__name__ in INTERRUPTIONS for e in causes(exc))


def exception_chain(exc: BaseException) -> list[ChainedError]:
    """``exc``'s chain (:func:`causes`) as :func:`pick_reason` takes it: the first line of each
    message, after the class name unless the error is ours."""
    chain = []
    for error in causes(exc):
        name, text = type(error).__name__, str(error).strip()
        first = text.splitlines()[0] if text else ""
        module = type(error).__module__
        if module.startswith(OURS):
            chain.append(ChainedError(OURS, first or name))
        else:
            source = DAGSTER if module.startswith(DAGSTER) else OTHER
            chain.append(ChainedError(source, f"{name}: {first}".rstrip(": ")))
    return chain


def run_errors(instance: dg.DagsterInstance, run_id: str) -> list[Any]:
    """The errors (``SerializableErrorInfo``) of a run's step and run failure events, each followed
    breadth-first by its causes and contexts: Dagster keeps the whole chain there."""
    from dagster import DagsterEventType

    queue = [
        getattr(entry.dagster_event.event_specific_data, "error", None) if entry.dagster_event else None
        for entry in instance.all_logs(
            run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
        )
    ]
    seen: list[Any] = []
    while queue:
        info = queue.pop(0)
        if info is None or any(info is s for s in seen):
            continue
        seen.append(info)
        queue.extend((info.cause, info.context))
    return seen


def run_failure_reason(instance: dg.DagsterInstance, run_id: str) -> tuple[str, bool]:
    """Why a run failed (:func:`pick_reason` over :func:`run_errors`), and whether it was
    interrupted (Ctrl-C). Dagster's messages start with the class's full name
    (``omniload_assets.…Error: message``); ours are shown without it."""
    errors = run_errors(instance, run_id)
    chain = []
    for message in (str(info.message).strip() for info in errors):
        if message.startswith(f"{OURS}."):
            chain.append(ChainedError(OURS, message.split(": ", 1)[-1].splitlines()[0]))
        elif message:
            source = DAGSTER if message.startswith(DAGSTER) else OTHER
            chain.append(ChainedError(source, message.splitlines()[0]))
    interrupted = any(info.cls_name in INTERRUPTIONS for info in errors)
    return pick_reason(chain, f"run {run_id} failed"), interrupted


def failure_reason(exc: BaseException, secret: str | None = None, key_origin: str = "KLAVIYO_API_KEY") -> str:
    """The one line ``omniload ingest`` prints for a failure: :func:`pick_reason` over ``exc``'s
    chain (an :class:`IngestFailed` holds it, from the run's events), ``secret`` masked, and advice
    to fix ``KLAVIYO_API_KEY`` aimed at ``key_origin``, where the user gave the key."""
    if isinstance(exc, IngestFailed):
        line = str(exc)
    else:
        line = pick_reason(exception_chain(exc), type(exc).__name__)
    return retarget_key_advice(redact(line, secret), key_origin)


def choose_display(mode: str, stream: IO[str]) -> LogDisplay | BarDisplay | NullDisplay:
    """``auto``: a bar when ``stream`` is a terminal, plain lines otherwise."""
    if mode == "auto":
        is_tty = getattr(stream, "isatty", lambda: False)()
        mode = "bar" if is_tty and os.environ.get("TERM") != "dumb" else "log"
    if mode == "bar":
        return BarDisplay(stream, prefix=PROG)
    if mode == "log":
        return LogDisplay(stream, prefix=PROG)
    return NullDisplay()


def ingest(args: argparse.Namespace) -> int:
    """``omniload ingest``: plan, run, report; the exit status."""
    try:
        plan = plan_ingest(args)
        check_tables_hold_their_source(plan)
    except UsageError as exc:
        print(f"{PROG} ingest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        print("\n".join(dry_run_lines(plan)))
        return EXIT_OK
    if not args.verbose:
        warnings.simplefilter("ignore")  # Dagster's beta/preview notices are not the user's concern
    display = choose_display(args.progress, sys.stderr)
    handler = _DisplayHandler(display)
    package_logger = logging.getLogger("omniload_assets")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    try:
        with display:
            display.message(plan.describe())
            summaries = run_ingest(plan, display, args.verbose)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if was_interrupted(exc) or getattr(exc, "interrupted", False):  # Dagster wraps Ctrl-C
            print(f"{PROG}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if args.verbose:
            import traceback

            traceback.print_exc(file=sys.stderr)
        # The run read the key from the variable even when it came from the flag.
        key_origin = "KLAVIYO_API_KEY" if args.source_uri is None else "--source-uri"
        reason = failure_reason(exc, plan.api_key, key_origin)
        names = ", ".join(getattr(exc, "tables", ())) or plan.names
        print(f"{PROG}: error: ingest of {names} failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        package_logger.removeHandler(handler)
    for summary in summaries:
        print(f"{PROG}: {summary}")
    return EXIT_OK


# -- the parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """``omniload`` and its ``ingest`` command, every flag documented."""
    parser = OneLineParser(
        prog=PROG,
        description="Load Klaviyo tables into DuckDB by materializing this project's Dagster assets.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    cmd = commands.add_parser(
        "ingest",
        help=f"load Klaviyo tables (one, several or all {len(TABLES)}) into DuckDB tables",
        description="Load Klaviyo tables into DuckDB tables: materializes the tables' Dagster assets "
        "in this process over the daily partitions of [--interval-start, --interval-end).",
        epilog=EXAMPLE.format(
            tables=TABLE_NAMES,
            count=len(TABLES),
            children=", ".join(t.asset_name for t in TABLES if t.parent is not None),
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_flags(cmd)
    add_destination_flags(cmd)
    add_interval_flags(cmd)
    add_write_flags(cmd)
    add_run_flags(cmd)
    add_no_op_flags(cmd)
    add_refused_flags(cmd)
    cmd.set_defaults(handler=ingest)
    return parser


def package_version() -> str:
    """This package's installed version, else ``unknown``."""
    try:
        return metadata.version("omniload_assets")
    except metadata.PackageNotFoundError:
        return "unknown"


def add_source_flags(cmd: argparse.ArgumentParser) -> None:
    """``--source-table`` and ``--source-uri``: what to load, and the key to load it with."""
    cmd.add_argument(
        "--source-table",
        required=True,
        metavar="TABLE",
        help=f"the Klaviyo table(s): one of the {len(TABLES)} listed below (catalog_items works as well as "
        "catalog-items), several separated by commas (events,profiles: loaded together, duplicates "
        "ignored), or all",
    )
    cmd.add_argument(
        "--source-uri",
        metavar="URI",
        help="klaviyo://?api_key=pk_... (default: $KLAVIYO_API_KEY, a key or such a URI; prefer the "
        "variable, as command lines are visible to other users); the API base URL is $KLAVIYO_BASE_URL",
    )


def add_destination_flags(cmd: argparse.ArgumentParser) -> None:
    """``--dest-uri`` and ``--dest-table``: the DuckDB database and table to write."""
    cmd.add_argument(
        "--dest-uri",
        metavar="URI",
        help="duckdb:///relative.duckdb, duckdb:////absolute.duckdb, a plain path, or md:database for "
        "MotherDuck (default: $OMNILOAD_DUCKDB_PATH, else klaviyo.duckdb)",
    )
    cmd.add_argument(
        "--dest-table",
        metavar="[SCHEMA.]TABLE",
        help="the DuckDB table to merge into or replace; a bare TABLE goes in the default schema "
        "(default: $OMNILOAD_DUCKDB_SCHEMA or klaviyo, then the table's name with - as _, "
        "e.g. klaviyo.catalog_items)",
    )


def add_interval_flags(cmd: argparse.ArgumentParser) -> None:
    """``--interval-start`` and ``--interval-end``: the UTC days to load."""
    cmd.add_argument(
        "--interval-start",
        type=parse_when,
        metavar="WHEN",
        help="first UTC date (YYYY-MM-DD) or datetime to load, inclusive, rounded down to its day "
        "(default: $OMNILOAD_START_DATE, else 2022-01-01)",
    )
    cmd.add_argument(
        "--interval-end",
        type=parse_when,
        metavar="WHEN",
        help="UTC date or datetime to load up to, exclusive, rounded up to a whole day (default: now)",
    )


def add_run_flags(cmd: argparse.ArgumentParser) -> None:
    """How the run goes and shows: parallelism, page size, staging, resume, progress, dry run."""
    cmd.add_argument(
        "--extract-parallelism",
        type=parse_parallelism,
        metavar="N",
        help=f"concurrent Klaviyo requests inside the run, {MIN_PARALLELISM}-{MAX_PARALLELISM} (default: "
        "the resource's extract_parallelism, 40); Klaviyo's rate limits still apply",
    )
    cmd.add_argument(
        "--page-size",
        type=parse_page_size,
        metavar="N",
        help="records per Klaviyo page (the resource's page_size), capped at each endpoint's largest "
        "(10 to 1,000; default: the largest)",
    )
    cmd.add_argument(
        "--pipelines-dir",
        metavar="DIR",
        help="where the run stages its Parquet files before DuckDB loads them (default: "
        "$OMNILOAD_STAGING_DIR, else the system temp dir); resume state lives in the database",
    )
    cmd.add_argument(
        "--no-resume",
        action="store_true",
        help="fetch the whole interval even if a failed run of the same command committed part of it "
        "(by default a re-run fetches only what such a run, less than $OMNILOAD_CHECKPOINT_MAX_AGE_H "
        "hours ago, did not commit)",
    )
    cmd.add_argument(
        "--progress",
        type=parse_progress,
        default="auto",
        metavar="{auto,bar,interactive,log,off}",
        help="progress on stderr: a bar (pages, records, records/s, 429 waits; ingestr's interactive), "
        "plain log lines, or none (default: auto, a bar on a terminal and log lines otherwise)",
    )
    cmd.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (tables, interval, destination, strategy, keys, columns) and exit without "
        "a request or a write (omniload's own: ingestr has no dry run)",
    )
    cmd.add_argument(
        "--yes",
        action="store_true",
        help="skip the confirmation prompt (ingestr's flag; omniload asks none, so it changes nothing)",
    )
    cmd.add_argument(
        "-v",
        "--verbose",
        "--debug",
        action="store_true",
        help="also show Dagster's run logs, warnings, and the full traceback of a failure (--debug: "
        "ingestr's name)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The ``omniload`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return int(args.handler(args))


def console() -> NoReturn:
    """The ``omniload`` console script: :func:`main`, then an exit that skips the interpreter's teardown.

    By the time ``main`` returns, the run has closed its DuckDB connections, staged files and
    decoding processes; what is left is freeing the objects of every module Dagster loaded, which took
    0.7-0.8 s after each command (a quarter of a short load's wall time). Output is flushed first.
    """
    try:
        status = main()
    except SystemExit as exc:  # argparse: --help, --version and usage errors
        status = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    console()
