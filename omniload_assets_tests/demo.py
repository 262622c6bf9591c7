"""`make demo`: all 15 tables from the bundled Klaviyo simulator into a DuckDB file, no account needed."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, date, datetime

import dagster as dg
import duckdb

from omniload_assets.klaviyo.catalog import TABLES
from omniload_assets.warehouse.reads import qualified_name
from omniload_assets_tests.simulator import KlaviyoSimulator

FIRST_DAY = date(2024, 1, 1)
LAST_DAY = date(2024, 1, 31)


def main() -> None:
    database = os.environ.get("OMNILOAD_DUCKDB_PATH", "demo.duckdb")
    start = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=UTC)
    end = datetime(2024, 2, 1, tzinfo=UTC)
    with KlaviyoSimulator(seed=7, start=start, end=end) as sim:
        os.environ.update(
            KLAVIYO_API_KEY=sim.api_key,
            KLAVIYO_BASE_URL=sim.base_url,
            OMNILOAD_START_DATE=FIRST_DAY.isoformat(),
            OMNILOAD_DUCKDB_PATH=database,
        )
        # Imported after the environment is set: definitions read it when they are built.
        from omniload_assets.definitions import build_definitions
        from omniload_assets.runner import materialize_tables

        began = time.monotonic()
        print(f"Klaviyo simulator at {sim.base_url}; loading {FIRST_DAY}..{LAST_DAY} into {database}")
        with dg.DagsterInstance.ephemeral() as instance:
            materialize_tables(
                build_definitions(),
                TABLES,
                first_day=FIRST_DAY,
                last_day=LAST_DAY,
                instance=instance,
                # Dagster's step-by-step console log is for `dagster dev`; the demo prints a summary.
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
        elapsed = time.monotonic() - began
    with duckdb.connect(database, read_only=True) as conn:
        print(f"\n{'table':<30}{'rows':>10}")
        for spec in TABLES:
            (count,) = conn.execute(
                f"SELECT count(*) FROM {qualified_name(conn, 'klaviyo', spec.asset_name)}"
            ).fetchone()
            print(f"{'klaviyo.' + spec.asset_name:<30}{count:>10,}")
    print(f"\nall 15 tables loaded in {elapsed:.1f} s -> {database}")


if __name__ == "__main__":
    sys.exit(main())
