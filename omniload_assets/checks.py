"""Asset checks of every catalogue table: primary key unique, primary key not null, and on merge
tables the rows marked deleted. Freshness is Dagster's own: each asset carries a
``FreshnessPolicy`` (:func:`omniload_assets.assets.freshness_policy`), which the UI's freshness
views and the freshness daemon evaluate.

One ``multi_asset_check`` per table evaluates its checks on the table's profile
(:meth:`WarehouseReader.profile`: one short read-only DuckDB connection, opened with the IO
manager's own settings: database, schema, table name, lock wait). Dagster runs the checks of a
table in every run that materializes it, right after the write; they can also be run alone from
the UI. The checks look at the whole table, not one partition: uniqueness is a property of the
table.

The primary-key checks are *blocking*: when one fails, the assets downstream of the table in the
same run (a child table after its parent, a user's asset after a Klaviyo table) do not run on bad
keys.

``deleted_rows`` reports how many rows the deletion sweep (:mod:`omniload_assets.deletions`) has
marked gone from Klaviyo. It is information and always passes: how many records an account deletes
is its own business (a cleanup can rightly remove half the profiles), so no share of deleted rows
is wrong in itself; what would be, a listing that came back empty, the sweep refuses before marking
anything. The sweep reports the same check right after it marks rows.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from omniload_assets.assets import IO_MANAGER_KEY
from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.layout import Layout
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager
from omniload_assets.warehouse.reads import TableProfile
from omniload_assets.warehouse.writer import LOADED_AT

UNIQUE = "primary_key_unique"
NOT_NULL = "primary_key_not_null"
DELETED = "deleted_rows"
#: Pool of the check steps: they only read.
CHECKS_POOL = "omniload_checks"


def freshness_column(spec: TableSpec) -> str:
    """The incremental key, or the load time for tables replaced whole (the profile's ``newest``)."""
    return spec.incremental_key or LOADED_AT


def has_deleted_rows_check(spec: TableSpec) -> bool:
    """Merge tables can hold rows gone from Klaviyo; replace tables are rewritten whole."""
    return spec.strategy == "merge"


def deleted_metadata(rows: int, deleted: int) -> dict[str, Any]:
    """What the deleted-rows check reports on a table of ``rows`` rows, ``deleted`` of them marked."""
    return {
        "rows": rows,
        "deleted_rows": deleted,
        "active_rows": rows - deleted,
        "deleted_share": round(deleted / rows, 4) if rows else 0.0,
    }


def deleted_result(
    spec: TableSpec, profile: TableProfile, key: dg.AssetKey | None = None
) -> dg.AssetCheckResult:
    """The deleted-rows result: passes (information), the count as metadata."""
    return dg.AssetCheckResult(
        asset_key=key or Layout().key(spec),
        check_name=DELETED,
        passed=True,
        metadata=deleted_metadata(profile.rows, profile.deleted),
    )


def check_results(
    spec: TableSpec, profile: TableProfile, key: dg.AssetKey | None = None
) -> list[dg.AssetCheckResult]:
    """The results for one table's profile (its asset ``key``, default ``klaviyo/<table>``): two,
    three on a merge table."""
    key = key or Layout().key(spec)
    if not profile.exists:
        missing = {"problem": dg.MetadataValue.text("the table does not exist: materialize it first")}
        return [
            dg.AssetCheckResult(asset_key=key, check_name=name, passed=False, metadata=missing)
            for name in check_names(spec)
        ]
    deleted = [deleted_result(spec, profile, key)] if has_deleted_rows_check(spec) else []
    return [
        dg.AssetCheckResult(
            asset_key=key,
            check_name=UNIQUE,
            passed=profile.duplicate_keys == 0,
            metadata={
                "rows": profile.rows,
                "duplicated_keys": profile.duplicate_keys,
                "extra_rows": profile.extra_rows,
                "sample": ", ".join(profile.duplicate_sample) or "none",
            },
        ),
        dg.AssetCheckResult(
            asset_key=key,
            check_name=NOT_NULL,
            passed=profile.null_keys == 0,
            metadata={"rows": profile.rows, "null_keys": profile.null_keys},
        ),
        *deleted,
    ]


def check_names(spec: TableSpec) -> tuple[str, ...]:
    """The names of ``spec``'s checks."""
    return (UNIQUE, NOT_NULL, DELETED) if has_deleted_rows_check(spec) else (UNIQUE, NOT_NULL)


def check_specs(spec: TableSpec, key: dg.AssetKey | None = None) -> list[dg.AssetCheckSpec]:
    """The checks of one table's asset ``key``; the primary-key ones block its downstream assets."""
    key = key or Layout().key(spec)
    specs = [
        dg.AssetCheckSpec(
            UNIQUE, asset=key, blocking=True, description=f"No two rows share a {spec.primary_key}."
        ),
        dg.AssetCheckSpec(
            NOT_NULL, asset=key, blocking=True, description=f"No row has a NULL {spec.primary_key}."
        ),
    ]
    if has_deleted_rows_check(spec):
        specs.append(
            dg.AssetCheckSpec(
                DELETED,
                asset=key,
                description="Rows whose id Klaviyo no longer lists (_deleted_at set by the deletion "
                "sweep): reported, never failing.",
            )
        )
    return specs


def build_table_checks(spec: TableSpec, layout: Layout | None = None) -> dg.AssetChecksDefinition:
    """The checks of one table, evaluated together on one read-only connection."""
    layout = layout or Layout()
    key, io_key = layout.key(spec), layout.name(IO_MANAGER_KEY)

    @dg.multi_asset_check(
        name=layout.name(f"{spec.asset_name}_checks"),
        specs=check_specs(spec, key),
        required_resource_keys={io_key},
        pool=CHECKS_POOL,
    )
    def _checks(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        warehouse: KlaviyoDuckDBIOManager = getattr(context.resources, io_key)
        profile = warehouse.reader().profile(spec, freshness_column(spec))
        yield from check_results(spec, profile, key)

    return _checks


def build_checks(layout: Layout | None = None) -> list[dg.AssetChecksDefinition]:
    """The checks of each of the layout's tables (default: the catalogue's)."""
    layout = layout or Layout()
    return [build_table_checks(spec, layout) for spec in layout.tables]
