"""Asset checks of every catalogue table: primary key unique, primary key not null, freshness.

One ``multi_asset_check`` per table evaluates its three checks on one short read-only DuckDB
connection, opened with the IO manager's own settings (database, schema, lock wait). Dagster runs
the checks of a table in every run that materializes it, right after the write; they can also be
run alone from the UI. The checks look at the whole table, not one partition: uniqueness is a
property of the table, and freshness asks whether the newest row is recent.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from omniload_assets import settings
from omniload_assets.assets import IO_MANAGER_KEY, asset_key
from omniload_assets.klaviyo.catalog import TABLES, TableSpec
from omniload_assets.warehouse.connection import is_local_file, open_database, resolve_database
from omniload_assets.warehouse.io_manager import KlaviyoTablesIOManager
from omniload_assets.warehouse.writer import LOADED_AT, qualified_name, quote_ident

UNIQUE = "primary_key_unique"
NOT_NULL = "primary_key_not_null"
FRESHNESS = "freshness"
#: Pool of the check steps: they only read, so it is unlimited unless an operator sets a limit.
CHECKS_POOL = "omniload_checks"
SAMPLE_IDS = 5


@dataclass(frozen=True)
class TableProfile:
    """What the checks need to know about one table, read in one query."""

    exists: bool
    rows: int = 0
    null_keys: int = 0
    duplicate_keys: int = 0  # distinct key values that occur more than once
    extra_rows: int = 0  # rows beyond the first of each duplicated key
    duplicate_sample: tuple[str, ...] = ()
    newest: datetime | None = None


def freshness_column(spec: TableSpec) -> str:
    """The incremental key, or the load time for tables replaced whole."""
    return spec.incremental_key or LOADED_AT


def profile_table(conn: Any, schema: str, spec: TableSpec, table_name: str | None = None) -> TableProfile:
    """Row, null-key and duplicate-key counts and the newest freshness value of ``schema.table_name``."""
    table_name = table_name or spec.asset_name
    found = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema = ? AND table_name = ?",
        [schema, table_name],
    ).fetchone()
    if not found or not found[0]:
        return TableProfile(exists=False)
    table = qualified_name(conn, schema, table_name)
    pk = quote_ident(spec.primary_key)
    fresh = quote_ident(freshness_column(spec))
    rows, nulls, distinct, newest_us = conn.execute(
        f"SELECT count(*), count(*) - count({pk}), count(DISTINCT {pk}), "
        f"epoch_us(max({fresh})::TIMESTAMPTZ) FROM {table}"
    ).fetchone()
    extra_rows = int(rows) - int(nulls) - int(distinct)
    dupes: list[tuple[str, int, int]] = []
    if extra_rows:  # a healthy table skips the grouping pass; one pass gives the sample and the count
        dupes = conn.execute(
            f"SELECT CAST({pk} AS VARCHAR), n, count(*) OVER () FROM (SELECT {pk}, count(*) AS n "
            f"FROM {table} WHERE {pk} IS NOT NULL GROUP BY {pk} HAVING count(*) > 1) "
            f"ORDER BY n DESC, 1 LIMIT {SAMPLE_IDS}"
        ).fetchall()
    duplicate_keys = dupes[0][2] if dupes else 0
    newest = (
        None if newest_us is None else datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=newest_us)
    )
    return TableProfile(
        exists=True,
        rows=int(rows),
        null_keys=int(nulls),
        duplicate_keys=int(duplicate_keys),
        extra_rows=extra_rows,
        duplicate_sample=tuple(str(r[0]) for r in dupes),
        newest=newest,
    )


def read_profile(
    database: str, schema: str, lock_timeout_s: float, spec: TableSpec, table_name: str | None = None
) -> TableProfile:
    """:func:`profile_table` on a short read-only connection; a missing file is a missing table."""
    target = resolve_database(database)
    if is_local_file(target) and not Path(target).exists():
        return TableProfile(exists=False)
    with open_database(target, read_only=True, lock_timeout_s=lock_timeout_s) as conn:
        return profile_table(conn, schema, spec, table_name)


def check_results(
    spec: TableSpec, profile: TableProfile, *, now: datetime, max_age: timedelta
) -> list[dg.AssetCheckResult]:
    """The three results for one table's profile."""
    key = asset_key(spec)
    if not profile.exists:
        missing = {"problem": dg.MetadataValue.text("the table does not exist: materialize it first")}
        return [
            dg.AssetCheckResult(asset_key=key, check_name=name, passed=False, metadata=missing)
            for name in (UNIQUE, NOT_NULL, FRESHNESS)
        ]
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
    ]


def check_specs(spec: TableSpec) -> list[dg.AssetCheckSpec]:
    key = asset_key(spec)
    hours = settings.freshness_max_age_hours(spec.name)
    fresh_what = f"newest {spec.incremental_key}" if spec.incremental_key else "last load"
    return [
        dg.AssetCheckSpec(UNIQUE, asset=key, description=f"No two rows share a {spec.primary_key}."),
        dg.AssetCheckSpec(NOT_NULL, asset=key, description=f"No row has a NULL {spec.primary_key}."),
        dg.AssetCheckSpec(
            FRESHNESS,
            asset=key,
            description=f"The {fresh_what} is at most {hours:g} h old (OMNILOAD_FRESHNESS_HOURS).",
        ),
    ]


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
        warehouse: KlaviyoTablesIOManager = getattr(context.resources, IO_MANAGER_KEY)
        profile = read_profile(
            warehouse.database, warehouse.schema, warehouse.lock_timeout_s, spec, warehouse.table_name(spec)
        )
        yield from check_results(spec, profile, now=datetime.now(UTC), max_age=max_age)

    return _checks


def build_checks() -> list[dg.AssetChecksDefinition]:
    """Three checks for each of the catalogue's tables."""
    return [build_table_checks(spec) for spec in TABLES]
