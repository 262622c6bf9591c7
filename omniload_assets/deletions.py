"""The deletion sweep: a job that finds the rows whose record Klaviyo no longer has.

``klaviyo_deletion_sweep`` holds one op per swept table (``OMNILOAD_SWEEP_TABLES``; by default every
merge table but events). Each op lists the ids the table's endpoint holds now
(:func:`omniload_assets.klaviyo.sweep.list_ids`: largest pages, one sparse field, paced like every
request), and only once that listing is complete compares it with DuckDB in one transaction
(:func:`omniload_assets.warehouse.deletions.apply_listing`): rows whose id is gone get ``_deleted_at``
(or are deleted, with ``hard_delete``), marked rows whose id is back are restored. A listing that
fails or is interrupted marks nothing; the other tables' ops run on. A table not materialized yet
costs no request.

Each op reports what it did as an observation of its table's asset (ids listed, newly deleted,
restored, requests...) and the table's ``deleted_rows`` check. Its op sits in its endpoint's pool, as
the table's asset does, so the sweep and an extraction of one endpoint never share its rate limit.
"""

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field

from omniload_assets.assets import IO_MANAGER_KEY, KLAVIYO_KEY, pool_name
from omniload_assets.checks import DELETED, deleted_metadata
from omniload_assets.klaviyo.catalog import TableSpec, get_table
from omniload_assets.klaviyo.client import ClientStats
from omniload_assets.klaviyo.resource import KlaviyoResource
from omniload_assets.klaviyo.sweep import list_ids, sweep_field
from omniload_assets.layout import Layout
from omniload_assets.warehouse.deletions import SuspiciousListingError, SweepResult, apply_listing
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager
from omniload_assets.warehouse.reads import table_exists
from omniload_assets.warehouse.writer import TableOwnerError, table_refusal

SWEEP_JOB = "klaviyo_deletion_sweep"
#: Resource key of the sweep's options (:class:`DeletionSweepResource`).
SWEEP_RESOURCE = "klaviyo_sweep"
LOG_EVERY_PAGES = 100


class DeletionSweepResource(dg.ConfigurableResource):
    """What the deletion sweep does with rows whose id Klaviyo no longer lists."""

    hard_delete: bool = Field(
        default=False,
        description="Delete the rows gone from Klaviyo instead of setting their _deleted_at "
        "(OMNILOAD_HARD_DELETE).",
    )
    allow_empty: bool = Field(
        default=False,
        description="Let a table whose listing comes back empty have every row marked "
        "(OMNILOAD_SWEEP_ALLOW_EMPTY); otherwise that is refused as suspicious and nothing is marked.",
    )


def sweep_op_name(spec: TableSpec, layout: Layout | None = None) -> str:
    """``sweep_<table>``; under another key prefix, with its stem first (op names are unique in a
    code location)."""
    return (layout or Layout()).name(f"sweep_{spec.asset_name}")


def build_sweep_op(spec: TableSpec, layout: Layout | None = None) -> dg.OpDefinition:
    """The op that sweeps one table (of ``layout``: its resource keys and asset key)."""
    layout = layout or Layout()
    resource_keys = {layout.name(KLAVIYO_KEY), layout.name(IO_MANAGER_KEY), layout.name(SWEEP_RESOURCE)}

    @dg.op(
        name=sweep_op_name(spec, layout),
        description=f"Lists the ids of Klaviyo {spec.name} ({spec.path}, fields[{spec.resource_type}]="
        f"{sweep_field(spec)}) and marks the rows of the table whose id is gone.",
        out=dg.Out(dg.Nothing),
        required_resource_keys=resource_keys,
        tags={"klaviyo/table": spec.name, "klaviyo/rate_tier": spec.rate_limit.tier},
        pool=pool_name(spec),
    )
    def _sweep(context: dg.OpExecutionContext) -> None:
        sweep_table(context, spec, layout)

    return _sweep


def sweep_table(context: dg.OpExecutionContext, spec: TableSpec, layout: Layout | None = None) -> SweepResult:
    """List ``spec``'s ids, then mark and restore its rows in one transaction; report what it did."""
    layout = layout or Layout()
    klaviyo: KlaviyoResource = getattr(context.resources, layout.name(KLAVIYO_KEY))
    warehouse: KlaviyoDuckDBIOManager = getattr(context.resources, layout.name(IO_MANAGER_KEY))
    options: DeletionSweepResource = getattr(context.resources, layout.name(SWEEP_RESOURCE))
    schema, table = warehouse.schema_name, warehouse.table_name(spec)
    if not _ready(warehouse, spec):
        context.log.info(f"{schema}.{table} does not exist yet: nothing to sweep (materialize it first)")
        return SweepResult(table, exists=False)
    listed_since, started = datetime.now(UTC), time.monotonic()
    stats = ClientStats()
    with klaviyo.get_client() as client:
        ids = list_ids(client, spec, stats, on_page=_page_logger(context, spec))
    context.log.info(f"{spec.name}: Klaviyo lists {len(ids):,} ids ({stats.requests} requests)")
    try:
        with warehouse.connect_for_write() as conn:
            result = apply_listing(
                conn,
                schema=schema,
                table=table,
                ids=ids,
                listed_since=listed_since,
                primary_key=spec.primary_key,
                source=spec.name,
                hard_delete=options.hard_delete,
                allow_empty=options.allow_empty,
            )
    except SuspiciousListingError as exc:
        raise dg.Failure(str(exc), metadata={"ids_listed": 0, "requests": stats.requests}) from None
    duration_s = time.monotonic() - started
    _report(context, layout.key(spec), spec, result, stats, duration_s, hard_delete=options.hard_delete)
    return result


def _ready(warehouse: KlaviyoDuckDBIOManager, spec: TableSpec) -> bool:
    """Whether the table exists (else there is nothing to sweep); refuses a table holding another
    source before any request is made."""
    schema, table = warehouse.schema_name, warehouse.table_name(spec)
    with warehouse.reader().connect() as conn:
        if conn is None or not table_exists(conn, schema, table):
            return False
        refusal = table_refusal(conn, schema, table, spec.name, spec.primary_key)
    if refusal is not None:
        raise TableOwnerError(refusal)
    return True


def _page_logger(context: dg.OpExecutionContext, spec: TableSpec) -> Callable[[ClientStats], None]:
    def log(stats: ClientStats) -> None:
        if stats.pages % LOG_EVERY_PAGES == 0:
            context.log.info(f"{spec.name}: {stats.pages} pages, {stats.records:,} ids listed")

    return log


def sweep_metadata(
    result: SweepResult, stats: ClientStats, duration_s: float, *, hard_delete: bool
) -> dict[str, Any]:
    """What one table's sweep reports."""
    return {
        "ids_listed": result.listed,
        "rows_before": result.rows,
        "rows_newly_deleted": result.newly_deleted,
        "rows_restored": result.restored,
        "rows_hard_deleted": result.hard_deleted,
        "rows_too_recent": result.too_recent,
        "rows_marked_deleted": result.marked,
        "mode": "hard delete" if hard_delete else "mark _deleted_at",
        "requests": stats.requests,
        "pages": stats.pages,
        "retries": stats.retries,
        "throttled_429": stats.throttled,
        "pacing_wait_s": round(stats.pacing_wait_s, 2),
        "duration_s": round(duration_s, 2),
    }


def _report(
    context: dg.OpExecutionContext,
    key: dg.AssetKey,
    spec: TableSpec,
    result: SweepResult,
    stats: ClientStats,
    duration_s: float,
    *,
    hard_delete: bool,
) -> None:
    """The sweep's metadata on the table's asset ``key``, and its deleted-rows check brought up to date."""
    meta = sweep_metadata(result, stats, duration_s, hard_delete=hard_delete)
    context.log_event(dg.AssetObservation(asset_key=key, metadata=meta))
    rows = result.rows - result.hard_deleted
    context.log_event(
        dg.AssetCheckEvaluation(
            asset_key=key, check_name=DELETED, passed=True, metadata=deleted_metadata(rows, result.marked)
        )
    )
    gone = "deleted" if hard_delete else "marked deleted"
    context.log.info(
        f"{spec.name}: {result.listed:,} ids listed, {result.newly_deleted:,} rows newly {gone}, "
        f"{result.restored:,} restored, {result.marked:,} marked in all ({stats.requests} requests)"
    )


def build_sweep_job(tables: Sequence[str] | None = None, layout: Layout | None = None) -> dg.JobDefinition:
    """The sweep of ``tables`` (catalogue names; default: the layout's, ``OMNILOAD_SWEEP_TABLES`` by
    default), one op each."""
    layout = layout or Layout()
    specs = [get_table(name) for name in (layout.sweep_tables() if tables is None else tables)]
    ops = [build_sweep_op(spec, layout) for spec in specs]

    @dg.job(
        name=layout.name(SWEEP_JOB),
        description=f"Marks the rows of {', '.join(s.name for s in specs)} whose id Klaviyo no longer "
        "lists (_deleted_at; OMNILOAD_HARD_DELETE=1 deletes them), one table per op.",
        tags={"omniload/kind": "deletion_sweep"},
    )
    def _job() -> None:
        for op in ops:
            op()

    return _job
