"""Asset checks of every catalogue table: primary key unique, primary key not null, freshness, and
on merge tables the rows marked deleted.

One ``multi_asset_check`` per table evaluates its checks on the table's profile
(:meth:`WarehouseReader.profile`: one short read-only DuckDB connection, opened with the IO
manager's own settings: database, schema, table name, lock wait). Dagster runs the checks of a
table in every run that materializes it, right after the write; they can also be run alone from
the UI. The checks look at the whole table, not one partition: uniqueness is a
property of the table, and freshness asks whether the newest row is recent.

``deleted_rows`` reports how many rows the deletion sweep (:mod:`omniload_assets.deletions`) has
marked gone from Klaviyo. It is information and always passes: how many records an account deletes
is its own business (a cleanup can rightly remove half the profiles), so no share of deleted rows
is wrong in itself; what would be, a listing that came back empty, the sweep refuses before marking
anything. The sweep reports the same check right after it marks rows.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from omniload_assets import settings
from omniload_assets.assets import IO_MANAGER_KEY, asset_key
from omniload_assets.klaviyo.catalog import TABLES, TableSpec
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager
from omniload_assets.warehouse.reads import TableProfile
from omniload_assets.warehouse.writer import LOADED_AT

UNIQUE = "primary_key_unique"
NOT_NULL = "primary_key_not_null"
FRESHNESS = "freshness"
DELETED = "deleted_rows"
#: Pool of the check steps: they only read, so it is unlimited unless an operator sets a limit.
CHECKS_POOL = "omniload_checks"


def freshness_column(spec: TableSpec) -> str:
    """The incremental key, or the load time for tables replaced whole."""
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


def deleted_result(spec: TableSpec, profile: TableProfile) -> dg.AssetCheckResult:
    """The deleted-rows result: passes (information), the count as metadata."""
    return dg.AssetCheckResult(
        asset_key=asset_key(spec),
        check_name=DELETED,
        passed=True,
        metadata=deleted_metadata(profile.rows, profile.deleted),
    )


def check_results(
    spec: TableSpec, profile: TableProfile, *, now: datetime, max_age: timedelta
) -> list[dg.AssetCheckResult]:
    """The results for one table's profile: three, four on a merge table."""
    key = asset_key(spec)
    if not profile.exists:
        missing = {"problem": dg.MetadataValue.text("the table does not exist: materialize it first")}
        return [
            dg.AssetCheckResult(asset_key=key, check_name=name, passed=False, metadata=missing)
            for name in check_names(spec)
        ]
    deleted = [deleted_result(spec, profile)] if has_deleted_rows_check(spec) else []
    age = None if profile.newest is None else now - profile.newest
    fresh_meta: dict[str, Any] = {
        "column": freshness_column(spec),
        "max_age_hours": max_age.total_seconds() / 3600,
        "newest": profile.newest.isoformat() if profile.newest else "none",
    }
    if age is not None:
        fresh_meta["age_hours"] = round(age.total_seconds() / 3600, 2)
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
        dg.AssetCheckResult(
            asset_key=key,
            check_name=FRESHNESS,
            # An empty table has nothing recent: that is stale, not fresh.
            passed=age is not None and age <= max_age,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=fresh_meta,
        ),
        *deleted,
    ]


def check_names(spec: TableSpec) -> tuple[str, ...]:
    """The names of ``spec``'s checks."""
    return (
        (UNIQUE, NOT_NULL, FRESHNESS, DELETED)
        if has_deleted_rows_check(spec)
        else (UNIQUE, NOT_NULL, FRESHNESS)
    )


def check_specs(spec: TableSpec) -> list[dg.AssetCheckSpec]:
    key = asset_key(spec)
    hours = settings.freshness_max_age_hours(spec.name)
    fresh_what = f"newest {spec.incremental_key}" if spec.incremental_key else "last load"
    specs = [
        dg.AssetCheckSpec(UNIQUE, asset=key, description=f"No two rows share a {spec.primary_key}."),
        dg.AssetCheckSpec(NOT_NULL, asset=key, description=f"No row has a NULL {spec.primary_key}."),
        dg.AssetCheckSpec(
            FRESHNESS,
            asset=key,
            description=f"The {fresh_what} is at most {hours:g} h old (OMNILOAD_FRESHNESS_HOURS).",
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


def build_table_checks(spec: TableSpec) -> dg.AssetChecksDefinition:
    """The checks of one table, evaluated together on one read-only connection."""
    max_age = timedelta(hours=settings.freshness_max_age_hours(spec.name))

    @dg.multi_asset_check(
        name=f"{spec.asset_name}_checks",
        specs=check_specs(spec),
        required_resource_keys={IO_MANAGER_KEY},
        pool=CHECKS_POOL,
    )
    def _checks(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        warehouse: KlaviyoDuckDBIOManager = getattr(context.resources, IO_MANAGER_KEY)
        profile = warehouse.reader().profile(spec, freshness_column(spec))
        yield from check_results(spec, profile, now=datetime.now(UTC), max_age=max_age)

    return _checks


def build_checks() -> list[dg.AssetChecksDefinition]:
    """The checks of each of the catalogue's tables."""
    return [build_table_checks(spec) for spec in TABLES]
