"""One software-defined asset per catalogue table, built by one factory.

A child table's asset (``klaviyo/list_profiles``) depends on its parent's (``klaviyo/lists``): it
reads the parent ids from the parent's DuckDB table (ids marked deleted left out) and fetches each
one's children; the parent must have been materialized once.
"""

import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import cache
from importlib import resources
from typing import Any

import dagster as dg
import pyarrow as pa

from omniload_assets import checkpointing, progress, settings
from omniload_assets.klaviyo import extraction
from omniload_assets.klaviyo.catalog import TableSpec, get_table
from omniload_assets.klaviyo.client import ClientStats
from omniload_assets.klaviyo.decoders import Decoder, decoder_for
from omniload_assets.klaviyo.resource import KlaviyoResource
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets.layout import DEFAULT_PREFIX, Layout, parse_prefix
from omniload_assets.partitions import WindowConfig, daily_partitions, run_window
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager
from omniload_assets.warehouse.reads import DELETED_AT, active_ids, table_exists
from omniload_assets.warehouse.staging import ParquetStager, StagedTable
from omniload_assets.warehouse.writer import DELETED_AT_DESCRIPTION

IO_MANAGER_KEY = "klaviyo_duckdb"
KLAVIYO_KEY = "klaviyo"
KEY_PREFIX = "klaviyo"
LOG_EVERY_PAGES = 50

log = logging.getLogger(__name__)


def asset_key(spec: TableSpec, prefix: str | Sequence[str] | None = None) -> dg.AssetKey:
    """``klaviyo/<table>``, or the table under ``prefix`` (``raw/klaviyo`` or ``["raw", "klaviyo"]``)."""
    parts = DEFAULT_PREFIX if prefix is None else parse_prefix(prefix)
    return dg.AssetKey([*parts, spec.asset_name])


def pool_name(spec: TableSpec) -> str:
    """The concurrency pool of the table's endpoint, whatever the key prefix: one Klaviyo account's
    rate limit is per endpoint, so every run extracting (or sweeping) it shares the pool."""
    return f"{KEY_PREFIX}_{spec.asset_name}"


@cache
def column_docs() -> dict[str, dict[str, str]]:
    """Table -> column -> description, generated from Klaviyo's OpenAPI document into the package
    (``python -m omniload_assets_tests.contract_tools.column_docs``)."""
    text = resources.files("omniload_assets.klaviyo").joinpath("column_docs.json").read_text("utf-8")
    return json.loads(text)


def column_schema(spec: TableSpec) -> dg.TableSchema:
    """The table's columns as the UI shows them: the catalogue's, and a merge table's deletion mark."""
    docs = column_docs().get(spec.name, {})
    columns = [
        dg.TableColumn(
            name,
            duck_type,
            description=docs.get(name),
            constraints=dg.TableColumnConstraints(nullable=False, unique=True)
            if name == spec.primary_key
            else None,
        )
        for name, duck_type in spec.column_types().items()
    ]
    if spec.strategy == "merge":
        columns.append(dg.TableColumn(DELETED_AT, "TIMESTAMPTZ", description=DELETED_AT_DESCRIPTION))
    return dg.TableSchema(columns=columns)


class ParentNotLoadedError(RuntimeError):
    """A child table's parent table is not in the warehouse yet."""


def parent_ids(
    warehouse: KlaviyoDuckDBIOManager, parent: TableSpec, key: dg.AssetKey | None = None
) -> list[str]:
    """The ids of ``parent``'s table in the warehouse, rows marked deleted left out; a one-line
    :class:`ParentNotLoadedError` (naming the parent's asset ``key``) when the table is not there."""
    reader = warehouse.reader()
    table = reader.table_name(parent)
    with reader.connect() as conn:
        if conn is not None and table_exists(conn, reader.schema, table):
            return active_ids(conn, reader.schema, table)
    raise ParentNotLoadedError(
        f"{reader.schema}.{table} is not in the warehouse yet: materialize "
        f"{(key or asset_key(parent)).to_user_string()} first (its ids say whose children to load)"
    )


def extract(
    context: dg.AssetExecutionContext,
    spec: TableSpec,
    klaviyo: KlaviyoResource,
    config: WindowConfig,
    warehouse: KlaviyoDuckDBIOManager,
    parents: Sequence[str] | None = None,
) -> StagedTable:
    """Page through the table's window (a child table: each of ``parents``) and stage its rows as
    Parquet: the client fetches, extraction plans, the decoder makes rows, the stager writes them
    (see the README's Design). A long run over a window commits its complete days as it goes, and
    resumes a failed attempt's (:mod:`omniload_assets.checkpointing`)."""
    from omniload_assets.partitions import is_partitioned_run, write_options

    spec = klaviyo.table_spec(spec)  # the resource's opt-ins: profiles' predictive analytics
    window = run_window(context, config)
    # The run config's write options, checked before any request; only a plain merge checkpoints.
    write = write_options(spec, config, window, partitioned_run=is_partitioned_run(context))
    resume = None
    if window is not None and checkpointing.applies(spec, window) and write.checkpoints:
        resume = checkpointing.plan_resume(warehouse, spec, window, resume=config.resume)
        _say(context, resume.describe(spec.name))
    what = (
        f"of {len(parents)} {spec.parent}" if parents is not None else "(all)" if window is None else window
    )
    context.log.info(f"extracting {spec.name} {what}")
    stager = ParquetStager(spec, settings.env("OMNILOAD_STAGING_DIR"))
    decoder = decoder_for(spec, klaviyo.decode_processes)
    checkpoints = None
    if resume is not None:
        checkpoints = checkpointing.Checkpoints(
            context, spec, warehouse, stager, resume, decoder.column_types
        )
    try:
        staged = _extract(context, spec, klaviyo, window, decoder, stager, checkpoints, parents)
    except BaseException:
        stager.discard()
        raise
    if resume is not None and checkpoints is not None:
        staged.requested = window
        staged.metadata.update({**resume.metadata(), **checkpoints.metadata()})
    staged.strategy, staged.full_refresh = write.strategy, write.full_refresh
    staged.primary_key, staged.columns = write.primary_key, write.columns
    staged.column_hints = write.column_types
    context.log.info(f"{spec.name}: staged {staged.rows} rows in {len(staged.files)} files")
    return staged


def _say(context: dg.AssetExecutionContext, message: str) -> None:
    """A line for the run's log and for ``omniload ingest``'s output."""
    context.log.info(message)
    log.info(message)


def _extract(
    context: dg.AssetExecutionContext,
    spec: TableSpec,
    klaviyo: KlaviyoResource,
    window: TimeWindow | None,
    decoder: Decoder[pa.Table],
    stager: ParquetStager,
    checkpoints: checkpointing.Checkpoints | None,
    parents: Sequence[str] | None,
) -> StagedTable:
    """The extraction itself: every page staged, and checkpointed when ``checkpoints`` is given;
    on failure, what is complete is committed first."""
    started = time.monotonic()
    report = _Progress(context, spec, started)
    done = checkpoints.committed if checkpoints is not None else []
    run = None
    try:
        with klaviyo.get_client() as client:
            run = extraction.Extraction(
                client,
                spec,
                window,
                decoder,
                page_size=klaviyo.page_size,
                parallelism=klaviyo.extract_parallelism,
                stats=report.stats,
                parents=parents,
                done=done,
            )
            sink = report.staging(stager)
            for rows in run:
                sink(rows)
                if checkpoints is not None:
                    checkpoints.after_page(run.completed)
        decoder.close()
    except BaseException as exc:
        decoder.close()
        if checkpoints is None:
            raise
        instead = checkpoints.failed(run.completed() if run is not None else done, exc)
        if instead is None:
            raise
        raise instead from exc
    if parents is not None:
        _report_gone(context, spec, len(parents), run.gone)
    extract_s = time.monotonic() - started
    # started_at (epoch seconds) lets the IO manager report the whole duration, write included.
    timing = {"extract_s": extract_s, "started_at": time.time() - extract_s}
    stats = {**report.stats.as_dict(), **timing, "pages_decoded_in_processes": decoder.pages_in_processes}
    staged = stager.finish(window, stats, decoder.column_types())
    progress.extraction_finished(spec.name, report.stats)
    return staged


def _report_gone(context: dg.AssetExecutionContext, spec: TableSpec, parents: int, gone: list[str]) -> None:
    """Say how many parents Klaviyo no longer knew (deleted since their table was loaded)."""
    context.add_output_metadata({"parents": parents, "parents_gone": len(gone)})
    if gone:
        context.log.info(
            f"{spec.name}: {len(gone)} of {parents} {spec.parent} are no longer in Klaviyo (404), so "
            f"have no {spec.name} (e.g. {gone[0]})"
        )


class _Progress:
    """Counts an extraction for the CLI's progress line and logs every ``LOG_EVERY_PAGES`` pages."""

    def __init__(self, context: dg.AssetExecutionContext, spec: TableSpec, started: float) -> None:
        self.context, self.spec, self.started = context, spec, started
        self.stats = ClientStats()
        self.pages = 0
        progress.extraction_started(spec.name, self.stats)

    def staging(self, stager: ParquetStager) -> Callable[[pa.Table], None]:
        """A sink that stages each page's rows, then reports."""

        def sink(rows: pa.Table) -> None:
            stager.add(rows)
            self.advanced()

        return sink

    def advanced(self) -> None:
        stats = self.stats
        progress.extraction_advanced(self.spec.name, stats)
        self.pages += 1
        if self.pages % LOG_EVERY_PAGES == 0:
            rate = stats.records / max(time.monotonic() - self.started, 1e-6)
            self.context.log.info(
                f"{self.spec.name}: {stats.pages} pages, {stats.records} records "
                f"({rate:,.0f}/s), {stats.throttled} throttled"
            )


def freshness_policy(spec: TableSpec) -> dg.FreshnessPolicy:
    """Dagster's freshness policy of the table: materialized within ``OMNILOAD_FRESHNESS_HOURS``
    (per table) of now, else the asset's freshness fails in the UI."""
    hours = settings.freshness_max_age_hours(spec.name)
    return dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=hours))


def asset_arguments(
    spec: TableSpec, partitions_def: dg.PartitionsDefinition | None, layout: Layout | None = None
) -> dict[str, Any]:
    """What ``dg.asset`` is told of one table (a child's parent becomes a dependency)."""
    layout = layout or Layout()
    metadata: dict[str, Any] = {
        "dagster/column_schema": column_schema(spec),
        "dagster/table_name": f"{layout.schema()}.{spec.asset_name}",
        "klaviyo/endpoint": spec.path,
        "klaviyo/scope": ", ".join(spec.scopes),
        "klaviyo/incremental_key": spec.incremental_key or "none (full replace)",
        "klaviyo/window_filter": "server" if spec.server_side_window else "client",
        "klaviyo/rate_limit": f"{spec.rate_limit.burst_per_s}/s, {spec.rate_limit.steady_per_min}/m",
    }
    if spec.parent is not None:
        metadata["klaviyo/parent"] = layout.key(get_table(spec.parent)).to_user_string()
    return {
        "key": layout.key(spec),
        "group_name": layout.group_name,
        "description": spec.description,
        "kinds": {"klaviyo", "duckdb"},
        "owners": layout.asset_owners(),
        "tags": {"klaviyo/strategy": spec.strategy, "klaviyo/rate_tier": spec.rate_limit.tier, **layout.tags},
        "metadata": metadata,
        "partitions_def": partitions_def if spec.partitioned else None,
        "backfill_policy": dg.BackfillPolicy.single_run(),
        "freshness_policy": freshness_policy(spec),
        "io_manager_key": layout.name(IO_MANAGER_KEY),
        # One pool per Klaviyo endpoint: with a pool limit of 1 (omniload_assets/dagster.yaml), runs
        # never extract the same endpoint at once, so each run's pacing holds the account's rate limit.
        "pool": pool_name(spec),
    }


def build_asset(
    spec: TableSpec, partitions_def: dg.PartitionsDefinition | None, layout: Layout | None = None
) -> dg.AssetsDefinition:
    """The asset of one table: partitioned daily on its incremental key, or replaced whole."""
    layout = layout or Layout()
    if spec.parent is not None:
        return build_child_asset(spec, layout)
    klaviyo_key, io_key = layout.name(KLAVIYO_KEY), layout.name(IO_MANAGER_KEY)

    @dg.asset(**asset_arguments(spec, partitions_def, layout), required_resource_keys={klaviyo_key, io_key})
    def _asset(context: dg.AssetExecutionContext, config: WindowConfig) -> StagedTable:
        warehouse: KlaviyoDuckDBIOManager = getattr(context.resources, io_key)
        klaviyo: KlaviyoResource = getattr(context.resources, klaviyo_key)
        return extract(context, spec, klaviyo, config, warehouse)

    return _asset


def build_child_asset(spec: TableSpec, layout: Layout | None = None) -> dg.AssetsDefinition:
    """The asset of a child table: after its parent's, replaced whole with the children of the
    parent ids the warehouse holds."""
    layout = layout or Layout()
    parent = get_table(spec.parent or "")
    klaviyo_key, io_key = layout.name(KLAVIYO_KEY), layout.name(IO_MANAGER_KEY)

    @dg.asset(
        **asset_arguments(spec, None, layout),
        deps=[layout.key(parent)],
        required_resource_keys={klaviyo_key, io_key},
    )
    def _asset(context: dg.AssetExecutionContext, config: WindowConfig) -> StagedTable:
        warehouse: KlaviyoDuckDBIOManager = getattr(context.resources, io_key)
        klaviyo: KlaviyoResource = getattr(context.resources, klaviyo_key)
        ids = parent_ids(warehouse, parent, layout.key(parent))
        return extract(context, spec, klaviyo, config, warehouse, ids)

    return _asset


def partitions_of(layout: Layout) -> dg.DailyPartitionsDefinition:
    """Daily partitions from the layout's start date (``OMNILOAD_START_DATE`` when it has none)."""
    if layout.start_date is None:
        return daily_partitions()
    start = layout.start_date.isoformat()
    return dg.DailyPartitionsDefinition(start_date=start, timezone="UTC", end_offset=1)


def build_assets(layout: Layout | None = None) -> list[dg.AssetsDefinition]:
    """One asset per table of ``layout`` (default: every catalogue table under ``klaviyo/``), with
    daily partitions from its start date (``OMNILOAD_START_DATE``)."""
    layout = layout or Layout()
    partitions_def = partitions_of(layout)
    with warnings.catch_warnings():
        # BackfillPolicy is marked beta; single-run backfills are what these tables need.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return [build_asset(spec, partitions_def, layout) for spec in layout.tables]
