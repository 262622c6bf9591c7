"""One software-defined asset per catalogue table, built by one factory."""

import json
import time
import warnings
from collections.abc import Callable
from functools import cache
from importlib import resources

import dagster as dg
import pyarrow as pa

from omniload_assets import progress, settings
from omniload_assets.klaviyo import extraction
from omniload_assets.klaviyo.catalog import TABLES, TableSpec
from omniload_assets.klaviyo.client import ClientStats
from omniload_assets.klaviyo.decoders import decoder_for
from omniload_assets.klaviyo.resource import KlaviyoResource
from omniload_assets.partitions import WindowConfig, daily_partitions, run_window
from omniload_assets.warehouse.staging import ParquetStager, StagedTable

IO_MANAGER_KEY = "klaviyo_duckdb"
KEY_PREFIX = "klaviyo"
LOG_EVERY_PAGES = 50


def asset_key(spec: TableSpec) -> dg.AssetKey:
    return dg.AssetKey([KEY_PREFIX, spec.asset_name])


@cache
def column_docs() -> dict[str, dict[str, str]]:
    """Table -> column -> description, generated from Klaviyo's OpenAPI document into the package
    (``python -m omniload_assets_tests.contract_tools.column_docs``)."""
    text = resources.files("omniload_assets.klaviyo").joinpath("column_docs.json").read_text("utf-8")
    return json.loads(text)


def column_schema(spec: TableSpec) -> dg.TableSchema:
    docs = column_docs().get(spec.name, {})
    return dg.TableSchema(
        columns=[
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
    )


def extract(
    context: dg.AssetExecutionContext, spec: TableSpec, klaviyo: KlaviyoResource, config: WindowConfig
) -> StagedTable:
    """Page through the table's window and stage its rows as Parquet: the client fetches,
    extraction plans, the decoder makes rows, the stager writes them (see the README's Design)."""
    window = run_window(context, config)
    stager = ParquetStager(spec, settings.env("OMNILOAD_STAGING_DIR"))
    decoder = decoder_for(spec, klaviyo.decode_processes)
    started = time.monotonic()
    context.log.info(f"extracting {spec.name} {'(all)' if window is None else window}")
    report = _Progress(context, spec, started)
    try:
        with klaviyo.get_client() as client:
            extraction.extract(
                client,
                spec,
                window,
                decoder,
                report.staging(stager),
                page_size=klaviyo.page_size,
                parallelism=klaviyo.extract_parallelism,
                stats=report.stats,
            )
        decoder.close()
        extract_s = time.monotonic() - started
        # started_at (epoch seconds) lets the IO manager report the whole duration, write included.
        timing = {"extract_s": extract_s, "started_at": time.time() - extract_s}
        stats = {**report.stats.as_dict(), **timing, "pages_decoded_in_processes": decoder.pages_in_processes}
        staged = stager.finish(window, stats, decoder.column_types())
        progress.extraction_finished(spec.name, report.stats)
    except BaseException:
        decoder.close()
        stager.discard()
        raise
    context.log.info(f"{spec.name}: staged {staged.rows} rows in {len(staged.files)} files")
    return staged


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


def build_asset(spec: TableSpec, partitions_def: dg.PartitionsDefinition | None) -> dg.AssetsDefinition:
    """The asset of one table: partitioned daily on its incremental key, or replaced whole."""
    partitioned = spec.partitioned

    @dg.asset(
        key=asset_key(spec),
        group_name=KEY_PREFIX,
        description=spec.description,
        kinds={"klaviyo", "duckdb"},
        owners=settings.asset_owners(),
        tags={"klaviyo/strategy": spec.strategy, "klaviyo/rate_tier": spec.rate_limit.tier},
        metadata={
            "dagster/column_schema": column_schema(spec),
            "dagster/table_name": f"{settings.duckdb_schema()}.{spec.asset_name}",
            "klaviyo/endpoint": spec.path,
            "klaviyo/scope": spec.scope,
            "klaviyo/incremental_key": spec.incremental_key or "none (full replace)",
            "klaviyo/window_filter": "server" if spec.server_side_window else "client",
            "klaviyo/rate_limit": f"{spec.rate_limit.burst_per_s}/s, {spec.rate_limit.steady_per_min}/m",
        },
        partitions_def=partitions_def if partitioned else None,
        backfill_policy=dg.BackfillPolicy.single_run(),
        io_manager_key=IO_MANAGER_KEY,
        # One pool per Klaviyo endpoint: with a pool limit of 1 (README, Automation), runs never
        # extract the same endpoint at once, so each run's pacing holds the account's rate limit.
        pool=f"{KEY_PREFIX}_{spec.asset_name}",
    )
    def _asset(
        context: dg.AssetExecutionContext, klaviyo: KlaviyoResource, config: WindowConfig
    ) -> StagedTable:
        return extract(context, spec, klaviyo, config)

    return _asset


def build_assets() -> list[dg.AssetsDefinition]:
    """The 15 assets, with daily partitions from ``OMNILOAD_START_DATE``."""
    partitions_def = daily_partitions()
    with warnings.catch_warnings():
        # BackfillPolicy is marked beta; single-run backfills are what these tables need.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return [build_asset(spec, partitions_def) for spec in TABLES]
